"""The deployment walkthrough's rough edges, without starting Flower: readiness, partner shortfall, defaults."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fedcustomer.cli import main
from fedcustomer.deploy import coordinator as co
from fedcustomer.errors import FederationError

UNAVAILABLE = (
    "`flwr ls` failed: Connection to the SuperLink is unavailable. Please check your network "
    "connection and 'address' in the SuperLink connection configuration."
)


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_register_right_after_start_waits_for_the_coordinator(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    answers = iter(["no config yet", UNAVAILABLE, UNAVAILABLE, None])
    calls = []

    def fake_probe(cdir, **kw):
        calls.append("ls")
        nxt = next(answers)
        if nxt == "no config yet":  # `coordinator start` writes the CLI config a moment later
            co.write_flwr_config(cdir, "127.0.0.1:1", None)
            raise FederationError(UNAVAILABLE)
        if nxt:
            raise FederationError(nxt)
        return {"success": True, "runs": []}

    monkeypatch.setattr(co, "probe_coordinator", fake_probe)
    co.write_flwr_config(cdir, "127.0.0.1:1", None)
    heard: list[str] = []
    co.wait_for_coordinator(cdir, timeout=600, poll=0.01, progress=heard.append)
    assert calls == ["ls"] * 4
    assert heard[0].startswith("waiting up to 600 s") and heard[-1] == "the coordinator is up"


def test_waiting_for_a_coordinator_that_never_starts_ends_with_a_clear_error(tmp_path):
    cdir = co.CoordinatorDir(tmp_path / "coord")  # no CLI config: nothing was ever started here
    with pytest.raises(FederationError, match="coordinator start --workdir"):
        co.wait_for_coordinator(cdir, timeout=0.05, poll=0.01)


def test_other_flower_errors_are_not_retried(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    co.write_flwr_config(cdir, "127.0.0.1:1", None)
    monkeypatch.setattr(
        co,
        "probe_coordinator",
        lambda *a, **k: (_ for _ in ()).throw(FederationError("certificate verify failed")),
    )
    with pytest.raises(FederationError, match="certificate verify failed"):
        co.wait_for_coordinator(cdir, timeout=600, poll=0.01)


def _summary(status: str, partners: list[dict]) -> dict:
    return {
        "status": status,
        "stop_reason": "every partner failed" if status != "completed" else None,
        "rounds_completed": 2 if status == "completed" else 0,
        "rounds_planned": 2,
        "partners": partners,
    }


def _partner(name: str, trained: int, failed: int = 0, eps: float | None = 1.0) -> dict:
    return {
        "name": name,
        "epsilon_spent": eps,
        "epsilon_target": 3.0 if eps is not None else None,
        "rounds_trained": trained,
        "rounds_refused": 0,
        "rounds_failed": failed,
        "failures": [{"round": 1, "reason": "partner 'bank1' has no privacy budget for dataset 'D'"}]
        if failed
        else [],
        "refusals": [],
    }


@pytest.fixture
def fake_coordinator(monkeypatch, tmp_path):
    """`coordinator run` against a stand-in coordinator whose job ends with ``state['summary']``."""
    state: dict = {}
    monkeypatch.setattr(co, "wait_for_coordinator", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(co, "submit_run", lambda *a, **k: 7)
    monkeypatch.setattr(co, "wait_run", lambda *a, **k: {"status": "finished:completed"})
    monkeypatch.setattr(co, "read_summary", lambda cfg, *where: state["summary"])
    monkeypatch.setattr(co, "list_nodes", lambda cdir: [{"node-id": "42", "status": "offline"}])
    return state


def test_coordinator_run_fails_naming_who_is_missing_when_fewer_partners_joined(
    fake_coordinator, tmp_path, capsys
):
    fake_coordinator["summary"] = _summary("completed", [_partner("bank0", 2), _partner("bank2", 2)])
    code = _exit_code(
        [
            "coordinator",
            "run",
            "--workdir",
            str(tmp_path / "c"),
            "--partners",
            "3",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == FederationError.exit_code
    assert "only 2 of the 3 partners" in err and "bank0, bank2" in err and "node 42 (offline)" in err


def test_coordinator_run_with_every_partner_failed_is_a_clear_error(fake_coordinator, tmp_path, capsys):
    fake_coordinator["summary"] = _summary(
        "stopped", [_partner("bank0", 0, failed=2, eps=None), _partner("bank1", 0, failed=2, eps=None)]
    )
    code = _exit_code(
        [
            "coordinator",
            "run",
            "--workdir",
            str(tmp_path / "c"),
            "--partners",
            "2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr()
    assert code == FederationError.exit_code
    assert "Traceback" not in out.err and "every partner failed" in out.err
    assert "bank0: epsilon n/a of n/a, 0 trained, 0 refused, 2 failed" in out.out


def test_coordinator_run_with_every_partner_succeeds(fake_coordinator, tmp_path):
    fake_coordinator["summary"] = _summary("completed", [_partner(f"bank{i}", 2) for i in range(3)])
    assert (
        _exit_code(
            [
                "coordinator",
                "run",
                "--workdir",
                str(tmp_path / "c"),
                "--partners",
                "3",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )


def test_coordinator_run_sets_the_clip_norm_of_the_job(fake_coordinator, tmp_path, capsys):
    """C travels in the job's run config (the distributed-DP plan's clip); nonsense is refused up front."""
    import json

    fake_coordinator["summary"] = _summary("completed", [_partner(f"bank{i}", 2) for i in range(2)])
    argv = ["coordinator", "run", "--workdir", str(tmp_path / "c"), "--partners", "2"]
    assert _exit_code([*argv, "--out", str(tmp_path / "run"), "--max-grad-norm", "0.25"]) == 0
    job = json.loads(co.CoordinatorDir(tmp_path / "c").job_path.read_text())
    assert job["max-grad-norm"] == 0.25
    assert _exit_code([*argv, "--out", str(tmp_path / "run2")]) == 0
    assert json.loads(co.CoordinatorDir(tmp_path / "c").job_path.read_text())["max-grad-norm"] == 0.5
    capsys.readouterr()
    assert _exit_code([*argv, "--out", str(tmp_path / "run3"), "--max-grad-norm", "0"]) == 3
    assert "--max-grad-norm must be > 0" in capsys.readouterr().err


def test_certificates_and_coordinator_state_default_outside_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["certs"]) == 0
    assert (tmp_path / "data" / "fedcustomer" / "certs" / "ca.key").is_file()
    assert not (tmp_path / "certs").exists()
    from fedcustomer.cli.deploy import _workdir

    assert _workdir(None) == (tmp_path / "data" / "fedcustomer" / "coordinator").resolve()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(
    "path",
    [
        "certs/ca.key",
        "coord/superlink.db",
        "homes/bank0/keys/supernode",
        "node0.log",
        "coordinator/flwr-home/config.toml",
    ],
)
def test_walkthrough_outputs_in_the_repository_are_ignored(path):
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
    assert res.returncode == 0, f"{path} is not ignored by .gitignore"
