"""`coordinator run` reports a job in which every partner failed: a clear error naming who, no traceback."""

from pathlib import Path

import pytest

from fedcustomer.cli import deploy
from fedcustomer.deploy import coordinator as co
from fedcustomer.errors import FederationError
from tests.cli.cli_runner import only_group, run


def _all_failed_summary(out: Path) -> dict:
    failure = {
        "round": 1,
        "reason": "DataError: partner 'bank_a' holds no dataset 'customers' (it has: none)",
    }
    partners = [
        {
            "name": name,
            "epsilon_target": None,
            "epsilon_spent": 0.0,
            "delta": None,
            "rounds_trained": 0,
            "rounds_refused": 0,
            "rounds_failed": 1,
            "refusals": [],
            "failures": [dict(failure)],
        }
        for name in ("bank_a", "bank_b")
    ]
    return {
        "status": "stopped",
        "stop_reason": "round 1: 0 partner(s) trained, fewer than --min-partners (2); failed: bank_a, bank_b",
        "rounds_completed": 0,
        "rounds_planned": 2,
        "partners": partners,
    }


def test_all_partners_failed_is_a_clear_error_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(co, "submit_run", lambda cdir, resume=False: 7)
    monkeypatch.setattr(co, "wait_for_coordinator", lambda cdir, **kw: None)
    monkeypatch.setattr(co, "wait_run", lambda cdir, run_id, **kw: {"status": "finished:completed"})
    monkeypatch.setattr(co, "read_summary", lambda cfg, *where: _all_failed_summary(Path(cfg["out"])))
    only_group(monkeypatch, deploy.register)
    code, out, err = run(
        [
            "coordinator",
            "run",
            "--workdir",
            str(tmp_path / "c"),
            "--data",
            "customers",
            "--feature-spec",
            "synthetic:repayment",
            "--partners",
            "2",
            "--rounds",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    text = out + err
    assert code == FederationError.exit_code, text
    assert "Traceback" not in text and "NoneType" not in text
    assert "failed at every round: bank_a, bank_b" in text
    assert "holds no dataset 'customers'" in text  # the partner's own reason, so the user knows what to fix
    assert "bank_a: epsilon 0.000 of n/a" in text


def test_missing_node_key_files_exit_8_like_every_missing_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    only_group(monkeypatch, deploy.register)
    code, _, err = run(["coordinator", "register", str(tmp_path / "supernode.pub")], capsys)
    assert code == 8 and "not found" in err and "node keys" in err and "Traceback" not in err


SERVERAPP_LOG = """  File "fedcustomer/server/deployment.py", line 94, in wait_for_partners
    raise FederationError(
fedcustomer.errors.FederationError: only 1 partner node(s) connected after 20 s; the job needs at least 2. Check the nodes' logs
ERROR :     Exit Code: 201
An unhandled exception occurred in the ServerApp.
"""


def test_a_run_without_summary_reports_the_serverapps_own_error(tmp_path, monkeypatch):
    """Found by a new-user trial: a job whose partner never connected said only 'see the coordinator log',
    and that log does not hold the ServerApp's output."""
    cdir = co.CoordinatorDir(tmp_path / "coord")
    monkeypatch.setattr(co, "serverapp_log", lambda c, run_id, timeout=60.0: SERVERAPP_LOG)
    with pytest.raises(FederationError) as caught:
        co.read_summary({"out": str(tmp_path / "run")}, cdir, 42)
    text = str(caught.value)
    assert "FederationError: only 1 partner node(s) connected after 20 s" in text
    assert "flwr log 42 --show" in text and str(cdir.flwr_home) in text


def test_a_run_without_summary_or_error_points_at_the_serverapps_log(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    monkeypatch.setattr(co, "serverapp_log", lambda c, run_id, timeout=60.0: "")
    with pytest.raises(FederationError, match="flwr log 7 --show"):
        co.read_summary({"out": str(tmp_path / "run")}, cdir, 7)
    assert co.serverapp_error("no error here") is None
