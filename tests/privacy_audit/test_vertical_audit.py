"""`audit privacy --run DIR` on a vertical (split-learning) run: every claimed mechanism, the joint model."""

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from fedcustomer.cli import audit_privacy
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.query import read_entries
from fedcustomer.privacy_audit import vertical_audit
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.party import forget_sessions
from fedcustomer.vertical.runner import run_vertical_local
from tests.cli.cli_runner import run
from tests.privacy_audit.test_vertical_replay import TenfoldTooLittleNoise, tenfold_fewer_flips

ARGS = ["--canaries", "300", "--shadows", "2"]


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture(scope="module")
def vertical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DP vertical job (epsilon 2 per party, labels at 0.5), run once for this module."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vertical") / "run"
    job = VerticalJob(
        customers=1200, out=str(out), rounds=2, batch_size=64, epsilon=2.0, label_epsilon=0.5, baseline=False
    )
    forget_sessions()
    assert run_vertical_local(job)["status"] == "completed"
    forget_sessions()
    return out


@pytest.fixture
def fresh(vertical_run: Path, tmp_path: Path) -> Path:
    """A copy of the module's run, so each test's audit writes into its own directory."""
    return Path(shutil.copytree(vertical_run, tmp_path / "run"))


def _ledgers(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (run_dir / "partners").glob("*/ledger.db")}


def test_a_vertical_run_is_audited_at_each_mechanisms_claim(
    fresh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledgers = _ledgers(fresh)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(fresh), *ARGS], capsys)
    assert code == 0, stdout + stderr
    report = json.loads((fresh / "privacy_audit.json").read_text())
    summary = json.loads((fresh / "summary.json").read_text())
    assert report["run_kind"] == "vertical" and not report["flagged"]
    names = [m["mechanism"] for m in report["mechanisms"]]
    assert names == [
        "vertical dpsgd (bank, joint model): gradient canaries",
        "vertical dpsgd (bank, joint model): record canaries",
        "vertical dpsgd (retailer, bottom model): gradient canaries",
        "vertical dpsgd (retailer, bottom model): record canaries",
        "vertical label release (bank, randomized_response)",
    ]
    spent = {p["name"]: p["epsilon_spent"] for p in summary["partners"]}
    claims = {m["mechanism"]: m["claimed_epsilon"] for m in report["mechanisms"]}
    # each mechanism at its own claim: the bank's DP-SGD is what is left of 2 after its 0.5 label release
    assert claims[names[0]] < spent["bank"] - 0.3 and claims[names[2]] == pytest.approx(
        spent["retailer"], abs=0.01
    )
    assert claims[names[4]] == 0.5
    for m in report["mechanisms"]:
        assert m["canaries"] == 300 and 0 <= m["epsilon_lower_bound"] < m["claimed_epsilon"], m
    mia = report["membership_inference"]
    for target in ("joint_model", "nonprivate_replay"):
        assert mia[target]["members"] == mia[target]["nonmembers"] > 0
        for attack in ("loss_threshold", "lira_offline"):
            assert 0 <= mia[target][attack]["auc"] <= 1 and "tpr_at_0.1pct_fpr" in mia[target][attack]
    assert report["not_audited"][0]["release"] == "embeddings sent by retailer"
    assert (
        summary["privacy_audit"]["file"] == "privacy_audit.json" and not summary["privacy_audit"]["flagged"]
    )
    assert (fresh / "privacy_audit.png").read_bytes().startswith(b"\x89PNG")
    assert _ledgers(fresh) == ledgers  # nothing charged
    assert "consistent" in stdout and "joint_model" in stdout
    for party in ("bank", "retailer"):  # each party recorded who asked before its rows were read
        log = list(read_entries(PartnerHome(fresh / "partners" / party).audit_dir))
        asked = [e for e in log if e.action == "privacy_audit"]
        assert [(e.actor, e.role, e.decision) for e in asked] == [
            ("privacy-audit", "compliance_officer", "allowed")
        ]
        assert asked[0].details["run"] == fresh.name
        assert any(e.seq > asked[0].seq and e.purpose == "training" for e in log)


def test_a_broken_vertical_dpsgd_is_flagged(
    fresh: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = functools.partial(vertical_audit.replay_dpsgd, optimizer_cls=TenfoldTooLittleNoise)
    monkeypatch.setattr(vertical_audit, "replay_dpsgd", broken)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(fresh), *ARGS, "--no-nonprivate"], capsys)
    assert code == audit_privacy.FLAGGED_EXIT, stdout + stderr
    report = json.loads((fresh / "privacy_audit.json").read_text())
    flagged = {m["mechanism"] for m in report["mechanisms"] if m["flagged"]}
    assert "vertical dpsgd (bank, joint model): gradient canaries" in flagged, report["mechanisms"]
    assert "vertical dpsgd (retailer, bottom model): gradient canaries" in flagged
    assert json.loads((fresh / "summary.json").read_text())["privacy_audit"]["flagged"] is True


def test_a_broken_label_release_is_flagged(
    fresh: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = functools.partial(vertical_audit.label_canaries, protect=tenfold_fewer_flips)
    monkeypatch.setattr(vertical_audit, "label_canaries", broken)
    code, stdout, stderr = run(
        ["audit", "privacy", "--run", str(fresh), "--canaries", "1000", "--shadows", "0", "--no-nonprivate"],
        capsys,
    )
    assert code == audit_privacy.FLAGGED_EXIT, stdout + stderr
    report = json.loads((fresh / "privacy_audit.json").read_text())
    assert [m["mechanism"] for m in report["mechanisms"] if m["flagged"]] == [
        "vertical label release (bank, randomized_response)"
    ]


def test_what_a_vertical_audit_cannot_read_is_refused_clearly(
    fresh: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, stdout, stderr = run(
        ["audit", "privacy", "--run", str(fresh), "--homes", str(tmp_path / "none")], capsys
    )
    assert code == 3 and "partner homes not found" in stderr and "Traceback" not in stdout + stderr
    for part in (fresh / "partners" / "bank" / "state" / "vertical").glob("*-final.pt"):
        part.unlink()
    code, stdout, stderr = run(["audit", "privacy", "--run", str(fresh)], capsys)
    assert code == 3 and "keeps no final model part" in stderr and "Traceback" not in stdout + stderr
    summary = json.loads((fresh / "summary.json").read_text())
    (fresh / "summary.json").write_text(json.dumps(summary | {"dp": False}))
    code, stdout, stderr = run(["audit", "privacy", "--run", str(fresh)], capsys)
    assert code == 3 and "--no-dp" in stderr
    assert not (fresh / "privacy_audit.json").exists()
