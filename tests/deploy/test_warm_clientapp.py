"""The warm ClientApp executor without a SuperNode: routing tasks to one forked child per run,
cold runs, dead children, and loading only ClientApps installed with fedcustomer."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomli
import tomli_w
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import LoadClientAppError

from fedcustomer.deploy import warm_clientapp as wc
from fedcustomer.deploy.coordinator import CoordinatorDir, run_config_for, write_app
from fedcustomer.server.job import JobConfig


def _lines(path: Path, n: int) -> list[list[str]]:
    """Wait (on progress: the children append) until ``path`` has ``n`` lines."""
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [line.split() for line in lines]
        time.sleep(0.02)


def _recorder(path: Path):
    def handle(token: str, retire) -> None:  # runs in the run's child
        if token.startswith("fail"):  # a task that raised: the child retires before its reply leaves
            retire()
        with open(path, "a") as out:
            out.write(f"{os.getpid()} {token}\n")

    return handle


def _gone(zygote: wc.Zygote, pid: int) -> None:
    while pid in zygote.pids:
        zygote.maintain()
        time.sleep(0.02)


@pytest.fixture
def zygote(tmp_path):
    z = wc.Zygote(_recorder(tmp_path / "tasks.txt"), idle_s=3600, max_runs=2)
    yield z
    z.stop()
    assert not z.pids


def test_each_run_has_one_warm_child_that_takes_all_its_tasks_in_order(zygote, tmp_path):
    a1 = zygote.dispatch(11, "t1")
    b1 = zygote.dispatch(22, "t2")
    a2 = zygote.dispatch(11, "t3")
    assert a1 == a2 != b1 and a1 != os.getpid()
    got = _lines(tmp_path / "tasks.txt", 3)
    assert [t for pid, t in got if int(pid) == a1] == ["t1", "t3"]
    assert [t for pid, t in got if int(pid) == b1] == ["t2"]


def test_an_idle_run_goes_cold_and_its_next_task_gets_a_fresh_child(zygote, tmp_path):
    first = zygote.dispatch(11, "t1")
    _lines(tmp_path / "tasks.txt", 1)
    zygote.maintain(now=time.monotonic() + 7200)  # past idle_s: the pipe closes, the child exits
    assert 11 not in zygote.children
    _gone(zygote, first)
    second = zygote.dispatch(11, "t2")
    assert second != first
    assert _lines(tmp_path / "tasks.txt", 2)[1] == [str(second), "t2"]


def test_a_finished_runs_worker_ends_after_the_idle_time_and_the_log_shows_it(tmp_path, caplog):
    """Flower does not tell the executor a run finished: its worker is kept warm, then ends and is reaped."""
    caplog.set_level("INFO", logger="fedcustomer.warm_clientapp")
    z = wc.Zygote(_recorder(tmp_path / "tasks.txt"), idle_s=0.2, max_runs=4)
    try:
        pids = [z.dispatch(run, f"t{run}") for run in (1, 2, 3)]  # three runs, each finished after a task
        _lines(tmp_path / "tasks.txt", 3)
        while z.pids:  # the executor's poll loop calls maintain(); no worker outlives the idle time for good
            z.maintain()
            time.sleep(0.02)
        assert not z.children
        for pid in pids:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped, not a zombie
        text = caplog.text
        for run, pid in zip((1, 2, 3), pids):
            assert f"run {run} idle for 0 s: worker {pid} ends" in text and f"worker {pid} exited" in text
    finally:
        z.stop()


def test_a_dead_child_is_replaced_without_losing_the_task(zygote, tmp_path):
    first = zygote.dispatch(11, "t1")
    _lines(tmp_path / "tasks.txt", 1)
    os.kill(first, 9)
    _gone(zygote, first)
    assert 11 not in zygote.children  # maintain noticed the death
    second = zygote.dispatch(11, "t2")
    assert second != first and _lines(tmp_path / "tasks.txt", 2)[1] == [str(second), "t2"]


def test_a_child_killed_between_polls_gets_its_task_resent_to_a_fresh_one(zygote, tmp_path):
    first = zygote.dispatch(11, "t1")
    _lines(tmp_path / "tasks.txt", 1)
    os.kill(first, 9)
    while os.waitpid(first, os.WNOHANG) == (0, 0):  # dead, but maintain() has not run
        time.sleep(0.02)
    zygote.pids.discard(first)
    second = zygote.dispatch(11, "t2")  # the write hits a broken pipe: a fresh child takes it
    assert second != first and _lines(tmp_path / "tasks.txt", 2)[1] == [str(second), "t2"]


def test_after_a_failed_task_the_runs_next_task_gets_a_fresh_child(zygote, tmp_path):
    first = zygote.dispatch(11, "fail1")
    _lines(tmp_path / "tasks.txt", 1)  # the reply is out: the retirement notice came before it
    second = zygote.dispatch(11, "t2")  # at once, whether or not the first child has exited yet
    assert second != first and _lines(tmp_path / "tasks.txt", 2)[1] == [str(second), "t2"]
    _gone(zygote, first)


def test_more_runs_than_allowed_send_the_least_recent_one_cold(zygote, tmp_path):
    a = zygote.dispatch(1, "a")
    zygote.dispatch(2, "b")
    zygote.dispatch(1, "a2")
    zygote.dispatch(3, "c")  # max_runs 2: run 2 was used least recently
    assert set(zygote.children) == {1, 3} and zygote.children[1].pid == a
    _lines(tmp_path / "tasks.txt", 4)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "\x00"])
def test_a_malformed_token_is_refused_before_any_child_starts(zygote, token):
    with pytest.raises(ValueError, match="malformed task token"):
        zygote.dispatch(1, token)
    assert not zygote.pids


def _fab(tmp_path: Path, clientapp: str | None = None) -> bytes:
    path = write_app(CoordinatorDir(tmp_path), run_config_for(JobConfig(out=str(tmp_path)), feature_spec="x"))
    doc = tomli.loads(path.read_text())
    if clientapp is not None:
        doc["tool"]["flwr"]["app"]["components"]["clientapp"] = clientapp
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", tomli_w.dumps(doc))
        z.writestr("evil.py", "raise SystemExit('job code ran on the node')")
    return buf.getvalue()


def test_the_installed_client_app_is_loaded_from_the_package(tmp_path):
    from fedcustomer.apps import client

    assert wc.load_client_app(_fab(tmp_path)) is client.app
    assert isinstance(wc.load_client_app(_fab(tmp_path, "fedcustomer.apps.secagg:client_app")), ClientApp)


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("evil:app", "refused"),  # code shipped in the job's bundle never runs
        ("os:system", "refused"),
        ("fedcustomer.apps.client", "no valid ClientApp"),  # no attribute named: Flower's own check
        ("fedcustomer.apps.client:nothing_here", "not found"),
        ("fedcustomer.apps.client:log", "not a Flower ClientApp"),
    ],
)
def test_other_client_apps_are_refused_with_the_reason(tmp_path, ref, why):
    with pytest.raises(LoadClientAppError, match=why):
        wc.load_client_app(_fab(tmp_path, ref))


def test_a_bundle_without_a_client_app_is_a_load_error(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(LoadClientAppError, match="names no valid ClientApp"):
        wc.load_client_app(buf.getvalue())


def test_the_executor_preloads_without_threads_and_ends_with_its_supernode(tmp_path):
    """Forking is safe only from a single-threaded zygote; a gone SuperNode ends the executor."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    res = subprocess.run(
        [sys.executable, "-m", "fedcustomer.deploy.warm_clientapp", "--runtime-api-address", "127.0.0.1:9"]
        + ["--parent-pid", str(gone.pid)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warm ClientApp: ready" in res.stderr and "forking may be unsafe" not in res.stderr
    assert "could not preload" not in res.stderr


PRELOADED_OPTIMIZER_CHECK = """
import sys
from fedcustomer.deploy import warm_clientapp as wc
wc.preload()
import torch
before = set(sys.modules)
torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
print(sorted(set(sys.modules) - before))
"""


def test_a_runs_first_optimizer_imports_nothing_the_zygote_did_not_preload():
    """A vertical party's setup builds a torch optimizer; its compiler import belongs in the zygote, not each run."""
    res = subprocess.run(
        [sys.executable, "-c", PRELOADED_OPTIMIZER_CHECK], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_only_the_nodes_own_executor_may_take_its_tasks(tmp_path):
    """A real SuperNode in warm mode: an unsigned AcquireTask is refused, a signed one answered."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor

    from fedcustomer.deploy import flower as fl
    from fedcustomer.deploy import node as nd
    from fedcustomer.partner.home import PartnerHome

    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    secret = nd.write_runtime_secret(home.root)
    port = fl.free_port()
    cmd = nd.supernode_command(
        home.root, superlink=f"127.0.0.1:{fl.free_port()}", root_cert=None, auth_key=None,
        runtime_port=port, insecure=True, clientapp="warm", secret_file=secret,
    )  # fmt: skip
    proc = fl.start(
        cmd, tmp_path / "node.log", fl.flower_env(tmp_path / "fh")
    )  # no SuperLink: it keeps retrying
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    signed = wc.runtime_client(
        f"127.0.0.1:{port}",
        [
            SuperExecAuthHttpInterceptor(
                master_secret=secret.read_bytes(), protected_methods={wc.ACQUIRE_METHOD}
            )
        ],
    )
    unsigned = wc.runtime_client(f"127.0.0.1:{port}", [])
    try:
        while True:  # wait for the Runtime API (progress: it answers)
            try:
                assert not signed.AcquireTask(request).HasField("task")
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "node.log").read_text()[-2000:]
                time.sleep(0.1)
        with pytest.raises(httpx.HTTPStatusError, match="401 Unauthorized"):
            unsigned.AcquireTask(request)
    finally:
        signed.close()
        unsigned.close()
        fl.stop(proc)


def test_task_polls_are_short_after_a_task_capped_while_busy_and_back_off_when_idle():
    now = [0.0]
    poll = wc.TaskPoll(0.2, first=0.01, busy=0.05, window=10.0, clock=lambda: now[0])
    pauses = []
    while now[0] < 12.0:
        pauses.append(poll.next_pause())
        now[0] += pauses[-1]
    assert pauses[:4] == [0.01, 0.02, 0.04, 0.05] and set(pauses[3:150]) == {0.05}
    assert pauses[-1] == 0.2  # idle for a while: Flower's SuperExec-like pace, not faster
    poll.task()
    assert poll.next_pause() == 0.01


class FakeBell:
    def __init__(self, heard):
        self.heard, self.waits = heard, []

    def wait(self, timeout):
        self.waits.append(timeout)
        return False


def test_with_a_ringing_bell_the_executor_waits_on_it_and_polls_only_once_a_second(monkeypatch):
    slept = []
    monkeypatch.setattr(wc.time, "sleep", slept.append)
    now = [0.0]
    pauses = wc.TaskPoll(0.2, first=0.01, busy=0.05, window=10.0, clock=lambda: now[0])
    silent, ringing = FakeBell(heard=False), FakeBell(heard=True)
    wc.pause_between_polls(pauses, silent)  # not heard yet (a SuperNode that does not ring): usual pace
    wc.pause_between_polls(pauses, ringing)
    wc.pause_between_polls(pauses, None)  # no bell at all: a plain sleep at the usual pace
    assert silent.waits == [0.01] and ringing.waits == [wc.BELL_POLL_S] and slept == [0.04]


EXIT_DURING_FLUSH = """
import signal, sys
from fedcustomer.deploy.forked_workers import exit_worker

class FlushInterrupted:  # the worker's stop handler fires during its first flush
    def __init__(self, stream):
        self.stream, self.flushes = stream, 0
    def write(self, text):
        return self.stream.write(text)
    def flush(self):
        self.flushes += 1
        if self.flushes == 1:
            raise SystemExit(143)
        print("flushed again; signals ignored:", signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
              file=self.stream, flush=True)

sys.stdout = FlushInterrupted(sys.stdout)
exit_worker(0)
print("unwound past exit_worker", file=sys.__stderr__)
"""


def test_a_stop_signal_while_a_worker_flushes_still_ends_the_worker_with_its_code():
    """Seen once under load: SIGTERM landed in a worker's final flush and its SystemExit unwound out of
    child_main, into the forked copy of the executor, instead of exiting."""
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_DURING_FLUSH], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 143, proc.stderr  # the signal's exit code, from os._exit
    assert "flushed again; signals ignored: True" in proc.stdout
    assert "unwound" not in proc.stderr
