"""`coordinator run` reports a job in which every partner failed: a clear error naming who, no traceback."""

from pathlib import Path

import pytest

from fedcustomer.cli import deploy
from fedcustomer.deploy import coordinator as co
from fedcustomer.errors import ConfigError, FederationError
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


class _Clock:
    """A fake monotonic clock that ``sleep`` advances, so polling pauses are checked without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _fake_run(
    monkeypatch: pytest.MonkeyPatch, statuses: list[tuple[float, str]]
) -> tuple[_Clock, list[float]]:
    """``run_status`` answers the last status whose start time has passed; returns the clock and check times."""
    clock, checks = _Clock(), []
    monkeypatch.setattr(co, "time", clock)

    def status(cdir: object, run_id: int) -> dict:
        checks.append(clock.now)
        return {"status": [s for t, s in statuses if t <= clock.now][-1]}

    monkeypatch.setattr(co, "run_status", status)
    return clock, checks


def test_status_checks_back_off_while_nothing_changes_and_are_prompt_after_a_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clock, checks = _fake_run(monkeypatch, [(0, "pending"), (0.5, "running"), (200, "finished:completed")])
    heard: list[str] = []
    status = co.wait_run(
        co.CoordinatorDir(tmp_path), 7, timeout=1000, poll=1.0, most=8.0, progress=heard.append
    )
    assert status["status"] == "finished:completed"
    assert heard == ["Flower run 7: pending", "Flower run 7: running", "Flower run 7: finished:completed"]
    gaps = [round(b - a, 2) for a, b in zip(checks, checks[1:], strict=False)]
    assert gaps[:5] == [1.0, 1.0, 2.0, 4.0, 8.0]  # pending->running at 1 s resets; then doubling
    assert max(gaps) <= 8.0
    assert len(checks) < 35  # one check a second would have been 200


def test_a_finished_hint_checks_at_once_and_then_every_poll(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clock, checks = _fake_run(monkeypatch, [(0, "running"), (101, "finished:completed")])
    summary = tmp_path / "summary.json"
    ended = co.file_rewritten(summary)
    assert not ended()

    def hint() -> bool:
        if clock.now >= 100 and not summary.exists():
            summary.write_text("{}")
        return ended()

    co.wait_run(co.CoordinatorDir(tmp_path), 7, timeout=1000, poll=1.0, most=30.0, finished_hint=hint)
    assert 100 <= checks[-2] <= 100.25 + 1e-9  # the summary appeared: checked within one tick
    assert checks[-1] - checks[-2] == pytest.approx(1.0)  # then every poll until Flower says finished


def test_a_file_rewritten_in_place_counts_as_written(tmp_path: Path) -> None:
    old = tmp_path / "summary.json"
    old.write_text('{"from": "an earlier run"}')
    ended = co.file_rewritten(old)
    assert not ended()
    old.write_text('{"from": "this run, longer than before"}')
    assert ended()


def test_a_run_that_never_ends_times_out_naming_its_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_run(monkeypatch, [(0, "running")])
    with pytest.raises(FederationError, match="run 7 still running after 60 s"):
        co.wait_run(co.CoordinatorDir(tmp_path), 7, timeout=60, poll=1.0)


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


def test_a_job_the_serverapp_refused_for_its_configuration_exits_as_a_configuration_error(
    tmp_path, monkeypatch
):
    """Found by a new-user trial: SecAgg+ with 2 partners said ConfigError but exited 9, not 3."""
    log = SERVERAPP_LOG.replace(
        "FederationError: only 1 partner", "ConfigError: SecAgg+ needs at least 3 partners; 1"
    )
    monkeypatch.setattr(co, "serverapp_log", lambda c, run_id, timeout=60.0: log)
    with pytest.raises(ConfigError, match="ConfigError: SecAgg\\+ needs at least 3 partners") as caught:
        co.read_summary({"out": str(tmp_path / "run")}, co.CoordinatorDir(tmp_path / "coord"), 42)
    assert caught.value.exit_code == 3
    weird = SERVERAPP_LOG.replace(
        "FederationError:", "Exception:"
    )  # not a product error: stays a federation error
    monkeypatch.setattr(co, "serverapp_log", lambda c, run_id, timeout=60.0: weird)
    with pytest.raises(FederationError):
        co.read_summary({"out": str(tmp_path / "run")}, co.CoordinatorDir(tmp_path / "coord"), 42)


def test_a_run_without_summary_or_error_points_at_the_serverapps_log(tmp_path, monkeypatch):
    cdir = co.CoordinatorDir(tmp_path / "coord")
    monkeypatch.setattr(co, "serverapp_log", lambda c, run_id, timeout=60.0: "")
    with pytest.raises(FederationError, match="flwr log 7 --show"):
        co.read_summary({"out": str(tmp_path / "run")}, cdir, 7)
    assert co.serverapp_error("no error here") is None


def test_once_the_summary_is_written_checks_come_every_ending_poll(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clock, checks = _fake_run(
        monkeypatch, [(0, "running"), (101, "running:serverapp-done"), (102, "finished:completed")]
    )
    summary = tmp_path / "summary.json"
    ended = co.file_rewritten(summary)

    def hint() -> bool:
        if clock.now >= 100 and not summary.exists():
            summary.write_text("{}")
        return ended()

    co.wait_run(
        co.CoordinatorDir(tmp_path),
        7,
        timeout=1000,
        poll=1.0,
        most=30.0,
        finished_hint=hint,
        ending_poll=0.25,
    )
    after = [t for t in checks if t >= 100]
    gaps = [round(b - a, 2) for a, b in zip(after, after[1:], strict=False)]
    assert gaps and set(gaps) == {0.25}  # a status change after the hint keeps the short pace
    assert 102 <= after[-1] <= 102.25 + 1e-9


def test_the_ending_poll_is_short_only_when_checks_are_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcustomer.deploy import control_api

    monkeypatch.delenv(control_api.SUBMIT_ENV, raising=False)
    assert co.ending_poll() == co.ENDING_POLL_S
    monkeypatch.setenv(control_api.SUBMIT_ENV, control_api.FLWR_CLI)
    assert co.ending_poll() is None  # each check a `flwr` process: back to the ordinary pace
