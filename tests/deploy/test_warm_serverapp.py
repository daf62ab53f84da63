"""The warm ServerApp executor: loading only ServerApps installed with fedcustomer, one forked child
per job (a signal fails the job cleanly), its command lines, and a real SuperLink in process isolation
that gives its jobs only to requests signed with the coordinator's secret."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomli
import tomli_w
from flwr.serverapp import ServerApp
from flwr.serverapp.server_app import LoadServerAppError

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import node_supervisor as ns
from fedcustomer.deploy import warm_serverapp as ws
from fedcustomer.deploy.pki import make_dev_certificates
from fedcustomer.errors import ConfigError
from fedcustomer.server.job import JobConfig


def _fab(tmp_path: Path, serverapp: str | None = None) -> bytes:
    """The job's app bundle as `flwr run` builds it: the coordinator's pyproject.toml (+ extra code)."""
    cdir = co.CoordinatorDir(tmp_path / "coord")
    co.write_app(
        cdir, co.run_config_for(JobConfig(out=str(tmp_path / "run")), feature_spec="synthetic:repayment")
    )
    doc = tomli.loads((cdir.app_dir / "pyproject.toml").read_text())
    if serverapp is not None:
        doc["tool"]["flwr"]["app"]["components"]["serverapp"] = serverapp
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", tomli_w.dumps(doc))
        z.writestr("evil.py", "raise SystemExit('job code ran on the coordinator')")
    return buf.getvalue()


def test_the_installed_server_apps_are_loaded_from_the_package(tmp_path):
    from fedcustomer.apps import server, vertical

    assert ws.load_server_app(_fab(tmp_path)) is server.app
    assert ws.load_server_app(_fab(tmp_path, "fedcustomer.apps.vertical:app")) is vertical.app
    assert isinstance(ws.load_server_app(_fab(tmp_path, "fedcustomer.apps.secagg:server_app")), ServerApp)


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("evil:app", "refused"),  # code shipped in the job's bundle never runs
        ("os:system", "refused"),
        ("fedcustomer.apps.server", "no valid ServerApp"),  # no attribute named: Flower's own check
        ("fedcustomer.apps.server:nothing_here", "not found"),
        ("fedcustomer.apps.server:JobConfig", "not a Flower ServerApp"),
    ],
)
def test_other_server_apps_are_refused_with_the_reason(tmp_path, ref, why):
    with pytest.raises(LoadServerAppError, match=why):
        ws.load_server_app(_fab(tmp_path, ref))


def test_a_bundle_without_a_server_app_is_a_load_error():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(LoadServerAppError, match="names no valid ServerApp"):
        ws.load_server_app(buf.getvalue())


def _wait_for(path: Path) -> str:
    while not path.exists() or not path.read_text():  # progress: the child writes it
        time.sleep(0.02)
    return path.read_text()


def test_each_job_runs_in_its_own_child_whose_exit_status_is_reaped(tmp_path):
    jobs = ws.Jobs(most=2)

    def job(name: str, ok: bool):
        def run() -> bool:
            (tmp_path / name).write_text(str(os.getpid()))
            return ok

        return run

    first, second = jobs.start(job("a", True), None), jobs.start(job("b", False), None)
    assert jobs.full() and first != second != os.getpid()
    assert {_wait_for(tmp_path / "a"), _wait_for(tmp_path / "b")} == {str(first), str(second)}
    while jobs.pids:
        jobs.reap()
        time.sleep(0.02)
    assert not jobs.full()


def test_stopping_the_executor_fails_each_running_job_cleanly(tmp_path):
    """A signalled child unwinds its job (Flower's output is still pushed, as failed), then exits."""
    jobs = ws.Jobs()

    def run() -> bool:
        try:
            (tmp_path / "started").write_text("yes")
            while True:
                time.sleep(0.05)
        finally:
            (tmp_path / "unwound").write_text("yes")

    pid = jobs.start(run, None)
    _wait_for(tmp_path / "started")
    jobs.stop(signal.SIGTERM)
    assert not jobs.pids and _wait_for(tmp_path / "unwound") == "yes"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_executor_preloads_without_threads_and_ends_with_its_superlink():
    """Forking is safe only from a single-threaded process; a gone SuperLink ends the executor."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    res = subprocess.run(
        [sys.executable, "-m", "fedcustomer.deploy.warm_serverapp", "--runtime-api-address", "127.0.0.1:9"]
        + ["--insecure", "--parent-pid", str(gone.pid)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warm ServerApp: ready" in res.stderr and "forking may be unsafe" not in res.stderr
    assert "could not preload" not in res.stderr


@pytest.mark.parametrize("flags", [[], ["--insecure", "--root-certificates", "ca.crt"]])
def test_the_executor_needs_exactly_one_of_tls_roots_and_insecure(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        ws.main(["--runtime-api-address", "127.0.0.1:9", *flags])
    assert exc.value.code == 2 and "exactly one of --root-certificates" in capsys.readouterr().err


def test_the_coordinators_commands_run_the_superlink_in_process_isolation_beside_the_executor(tmp_path):
    certs = make_dev_certificates(tmp_path / "c")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    link = co.superlink_command(cdir, host="0.0.0.0", port=9093, certs=certs, serverapp="warm")
    assert link[link.index("--isolation") + 1] == "process"
    assert link[link.index("--superexec-auth-secret-file") + 1] == str(cdir.secret_path.resolve())
    cmd = co.warm_coordinator_command(cdir, link, "127.0.0.1:9093", certs)
    assert cmd[cmd.index("--") + 1 :] == link and cmd[cmd.index("--executor") + 1] == "serverapp"
    assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert.resolve())
    assert stat.S_IMODE(cdir.secret_path.stat().st_mode) == 0o600 and len(cdir.secret_path.read_bytes()) == 32
    before = cdir.secret_path.read_bytes()
    co.warm_coordinator_command(cdir, link, "127.0.0.1:9093", None)
    assert cdir.secret_path.read_bytes() != before  # a fresh secret at each start
    plain = co.superlink_command(cdir, host="0.0.0.0", port=9093, certs=certs, serverapp="subprocess")
    assert "--isolation" not in plain and "--superexec-auth-secret-file" not in plain
    with pytest.raises(ConfigError, match="--serverapp must be warm or subprocess"):
        co.superlink_command(cdir, host="0.0.0.0", port=9093, certs=certs, serverapp="cold")


def test_the_supervisor_gives_the_serverapp_executor_the_superlinks_tls_roots(tmp_path):
    cmd = ns.executor_command(
        "127.0.0.1:9093", tmp_path / "s", 42, executor=ns.SERVERAPP, root_certificates=tmp_path / "ca.crt"
    )
    assert cmd[2] == "fedcustomer.deploy.warm_serverapp" and cmd[-2:] == ["--parent-pid", "42"]
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    insecure = ns.executor_command("127.0.0.1:9093", None, 42, executor=ns.SERVERAPP, insecure=True)
    assert "--insecure" in insecure and "--secret-file" not in insecure
    assert ns.main(["--executor", "serverapp", "--runtime-api-address", "127.0.0.1:9", "--", "true"]) == 2


def test_only_the_coordinators_own_executor_may_take_its_jobs(tmp_path):
    """A real SuperLink in process isolation (TLS): an unsigned AcquireTask is refused, a signed one answered."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    from fedcustomer.deploy import flower as fl

    certs = make_dev_certificates(tmp_path / "c")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    port = fl.free_port()
    secret = co.write_runtime_secret(cdir)
    link = fl.start(  # the SuperLink alone: no executor takes the test's place
        co.superlink_command(cdir, host="127.0.0.1", port=port, certs=certs, serverapp="warm"),
        cdir.log_path,
        fl.flower_env(cdir.flwr_home),
        cwd=cdir.root,
    )

    def client(interceptors):
        return RuntimeHttpClient.from_server_address(
            server_address=f"127.0.0.1:{port}",
            insecure=False,
            root_certificates=certs.ca_cert.read_bytes(),
            interceptors=interceptors,
        )

    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    signed = client(
        [
            SuperExecAuthHttpInterceptor(
                master_secret=secret.read_bytes(), protected_methods={ws.ACQUIRE_METHOD}
            )
        ]
    )
    unsigned = client([])
    try:
        co.wait_until_up(cdir, link, timeout=600)
        assert not signed.AcquireTask(request).HasField("task")
        with pytest.raises(httpx.HTTPStatusError, match="401 Unauthorized"):
            unsigned.AcquireTask(request)
    finally:
        signed.close()
        unsigned.close()
        fl.stop(link)


def _wait_for_log(path: Path, needle: str, times: int, timeout: float = 600.0) -> None:
    """Wait until ``needle`` is in the log ``times`` times (the executor logs after the run is finished)."""
    deadline = time.monotonic() + timeout
    while path.read_text(errors="replace").count(needle) < times:
        assert time.monotonic() < deadline, f"{needle!r} not logged {times} time(s) in {path}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_job_whose_server_app_raises_fails_with_its_reason_and_the_next_job_still_runs(tmp_path):
    """A real coordinator in warm mode (TLS): no partner ever connects, so the ServerApp raises;
    the run ends failed with the reason in the coordinator's log, and the executor serves the next job."""
    from fedcustomer.deploy import flower as fl
    from fedcustomer.deploy.two_party import two_party_run_config
    from fedcustomer.vertical.job import VerticalJob

    certs = make_dev_certificates(tmp_path / "c")
    cdir = co.CoordinatorDir(tmp_path / "coord")
    link = co.start_superlink(cdir, port=fl.free_port(), certs=certs, serverapp="warm", timeout=600)
    try:
        for attempt in (1, 2):
            job = VerticalJob(out=str(tmp_path / f"run{attempt}"), seed=0)
            co.write_app(cdir, two_party_run_config(job, mode="psi", wait_for_partners=0.5))
            status = co.wait_run(cdir, co.submit_run(cdir), timeout=600, poll=0.5)
            assert status["status"] == "finished:failed", status
            # the run is finished once the worker pushed its output; its last log line follows that
            _wait_for_log(cdir.log_path, "warm ServerApp: task failed", attempt)
        log = cdir.log_path.read_text(errors="replace")
        assert log.count("warm ServerApp: task failed") == 2 and "FederationError" in log
        assert "only 0 partner node(s) connected after 0.5 s" in log
        assert log.count("served by worker") == 2 and "Traceback" in log
    finally:
        fl.stop(link)


@pytest.mark.parametrize("code", [0, 130, 143])
def test_a_coordinator_stopped_by_a_signal_ends_quietly_through_its_supervisor(code):
    """The supervisor ends with the shell's 128 + signal when Ctrl-C / SIGTERM stopped the SuperLink."""
    from fedcustomer.cli.foreground import foreground

    foreground([sys.executable, "-c", f"raise SystemExit({code})"], dict(os.environ), name="the coordinator")


def test_a_coordinator_that_fails_is_an_error_naming_it():
    from fedcustomer.cli.foreground import foreground
    from fedcustomer.errors import FederationError

    with pytest.raises(FederationError, match="the coordinator exited with code 3"):
        foreground([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), name="the coordinator")
