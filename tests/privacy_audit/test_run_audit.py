"""`fedcustomer audit privacy --run DIR` on run directories: reports, links, exit codes, clear refusals."""

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from fedcustomer.analytics.spec import spec_from_dict
from fedcustomer.cli import audit_privacy
from fedcustomer.privacy_audit import analytics_audit, run_audit
from tests.cli.cli_runner import run
from tests.privacy_audit.test_analytics_audit import tenfold_too_little_noise


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def _query_run(tmp_path: Path) -> Path:
    spec = spec_from_dict(
        {"dataset": "customers", "kind": "count", "mechanism": "laplace", "epsilon": 1.0, "delta": 0}
    )
    out = tmp_path / "query"
    out.mkdir()
    (out / "result.json").write_text(
        json.dumps({"format": "fedcustomer.analytics.result/1", "spec": spec.to_dict()})
    )
    return out


def test_query_run_is_audited_and_linked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _query_run(tmp_path)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(out), "--releases", "200"], capsys)
    assert code == 0, stdout + stderr
    report = json.loads((out / "privacy_audit.json").read_text())
    assert report["format"] == "fedcustomer.privacy_audit/1" and not report["flagged"]
    assert report["mechanisms"][0]["mechanism"] == "analytics:count:laplace"
    assert (out / "privacy_audit.png").read_bytes().startswith(b"\x89PNG")
    link = json.loads((out / "result.json").read_text())["privacy_audit"]
    assert link["file"] == "privacy_audit.json" and link["plot"] == "privacy_audit.png"
    assert "consistent" in stdout


def test_a_broken_release_exits_10(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = functools.partial(analytics_audit.audit_query, release_fn=tenfold_too_little_noise)
    monkeypatch.setattr(run_audit.analytics_audit, "audit_query", broken)
    out = _query_run(tmp_path)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(out), "--releases", "200"], capsys)
    assert code == audit_privacy.FLAGGED_EXIT, stdout + stderr
    assert "FLAGGED" in stdout
    assert json.loads((out / "result.json").read_text())["privacy_audit"]["flagged"] is True


def _rfm_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "rfm"
    code, stdout, stderr = run(["rfm", "--epsilon", "1", "--partners", "2", "--out", str(out)], capsys)
    assert code == 0, stdout + stderr
    return out


def test_an_rfm_run_is_audited_and_linked_from_rfm_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _rfm_run(tmp_path, capsys)
    released = json.loads((out / "rfm.json").read_text())
    ledgers = {p: p.read_bytes() for p in (out / "partners").glob("*/ledger.db")}
    code, stdout, stderr = run(["audit", "privacy", "--run", str(out), "--releases", "200"], capsys)
    assert code == 0, stdout + stderr
    report = json.loads((out / "privacy_audit.json").read_text())
    assert report["run_kind"] == "rfm" and report["release_file"] == "rfm.json" and not report["flagged"]
    (mech,) = report["mechanisms"]
    # the mechanism rfm released: segment sizes and spend sums (a grouped mean), at its claimed epsilon
    assert mech["mechanism"] == "analytics:mean:laplace" and mech["statistics"] == 2
    assert mech["claimed_epsilon"] == released["spec"]["epsilon"] == 1.0
    assert mech["query_id"] == released["query_id"] and 0 <= mech["epsilon_lower_bound"] < 1.0
    assert sorted(mech["released_by"]) == sorted(released["partners"])
    link = json.loads((out / "rfm.json").read_text())["privacy_audit"]
    assert link["file"] == "privacy_audit.json" and link["flagged"] is False
    assert (out / "privacy_audit.png").read_bytes().startswith(b"\x89PNG")
    assert {p: p.read_bytes() for p in (out / "partners").glob("*/ledger.db")} == ledgers


def test_an_rfm_run_with_a_broken_release_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _rfm_run(tmp_path, capsys)
    broken = functools.partial(analytics_audit.audit_query, release_fn=tenfold_too_little_noise)
    monkeypatch.setattr(run_audit.analytics_audit, "audit_query", broken)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(out), "--releases", "200"], capsys)
    assert code == audit_privacy.FLAGGED_EXIT, stdout + stderr
    report = json.loads((out / "privacy_audit.json").read_text())
    assert report["mechanisms"][0]["epsilon_lower_bound"] > 1.0
    assert json.loads((out / "rfm.json").read_text())["privacy_audit"]["flagged"] is True


def test_an_rfm_run_every_partner_refused_is_not_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _query_run(tmp_path)
    (out / "result.json").rename(out / "rfm.json")
    data = json.loads((out / "rfm.json").read_text())
    (out / "rfm.json").write_text(json.dumps(data | {"partners": [], "refused": {"p0": "budget"}}))
    code, stdout, stderr = run(["audit", "privacy", "--run", str(out)], capsys)
    assert code == 3 and "released nothing" in stderr and "Traceback" not in stdout + stderr


def _training_run(path: Path, config: dict[str, Any], summary: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _with_model(run: Path) -> Path:
    (run / "model.pt").write_bytes(b"")
    return run


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: p, "is not a training run"),
        (
            lambda p: _training_run(p / "demo" / "repayment", {"task": "repayment"}, {}).parent,
            "pass one of them",
        ),
        (lambda p: _training_run(p / "v", {"label_dp": True}, {"status": "failed"}), "trained no round"),
        (lambda p: _training_run(p / "n", {"task": "repayment"}, {"dp": False}), "--no-dp"),
        (lambda p: _training_run(p / "m", {"task": "repayment"}, {"dp": True}), "model.pt not found"),
        (lambda p: _with_model(_training_run(p / "h", {"task": "repayment"}, {"dp": True})), "--homes"),
        (
            lambda p: (p / "bad").mkdir() or (p / "bad" / "result.json").write_text("{") and p / "bad",
            "not readable",
        ),
    ],
)
def test_what_cannot_be_audited_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, needle: str
) -> None:
    target = make(tmp_path)
    code, stdout, stderr = run(["audit", "privacy", "--run", str(target)], capsys)
    assert code in (3, 4), stdout + stderr
    assert needle in stderr and "Traceback" not in stdout + stderr
    assert not (Path(target) / "privacy_audit.json").exists()


@pytest.mark.slow
def test_a_real_training_run_is_audited_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli.test_training import _csv, fedcustomer

    data = _csv(tmp_path / "customers.csv", n=600)
    out = tmp_path / "run"
    job = fedcustomer(
        "run", "--data", str(data), "--partners", "2", "--rounds", "2", "--epsilon", "2", "--out", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    audit_before = {p: p.read_bytes() for p in (out / "partners").glob("*/ledger.db")}
    code, stdout, stderr = run(
        ["audit", "privacy", "--run", str(out), "--canaries", "200", "--shadows", "2"], capsys
    )
    assert code == 0, stdout + stderr
    report = json.loads((out / "privacy_audit.json").read_text())
    kinds = [m["mechanism"] for m in report["mechanisms"]]
    assert kinds == ["dpsgd: gradient canaries", "dpsgd: record canaries"]
    for dpsgd in report["mechanisms"]:
        assert dpsgd["canaries"] == 200 and not dpsgd["flagged"]
        assert (
            0 < dpsgd["claimed_epsilon"] <= 2.01 and dpsgd["epsilon_lower_bound"] < dpsgd["claimed_epsilon"]
        )
    for target in ("released_model", "nonprivate_replay"):
        for attack in ("loss_threshold", "lira_offline"):
            assert 0 <= report["membership_inference"][target][attack]["auc"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy_audit"]["file"] == "privacy_audit.json"
    # no ledger was charged by the audit
    assert {p: p.read_bytes() for p in (out / "partners").glob("*/ledger.db")} == audit_before
