"""A warm ClientApp executor next to a partner's SuperNode (``flower-supernode --isolation process``).

Why: in its default ``subprocess`` isolation, Flower 1.42's SuperNode starts ``flower-superexec``,
which starts a fresh ``flwr-clientapp`` process for every message (``SubprocessExecutor.launch``
in ``flwr/supercore/superexec/executor/subprocess_executor.py``); that process handles one task and
exits (``run_clientapp`` ends in ``flwr_exit``). Each message then pays the imports of flwr, torch,
opacus and fedcustomer again, and a vertical party reloads its table and session from disk. Flower's
own warm executor pools exist only for its Kubernetes executor, and not for ClientApp tasks
(``WARM_EXECUTOR_TASK_TYPES`` in ``warm_executor_pool.py``).

``--isolation process`` is Flower's supported way to run the executor outside the SuperNode. This
process takes the SuperExec's place for one node: it imports everything once (the *zygote*), polls
the SuperNode's Runtime API for ClientApp tasks (``AcquireTask``, signed with the node's runtime
secret, so no other local process can take the partner's tasks; under the node's supervisor it asks
when the SuperNode rings its task bell, :mod:`fedcustomer.deploy.task_bell`, and otherwise once a
second) and hands each task to a child
forked for its Flower run. A run's child keeps the ClientApp and the party's in-memory state
between that run's messages, as the in-process grid does, and exits once the run has been idle for
a while; a crash ends one run's child, never the zygote. Each task goes through Flower's own Runtime
API calls (pull the input, heartbeats, push the reply and the task's output), the ones a
``flwr-clientapp`` makes. Only ClientApps installed with fedcustomer run: the component the job names
must be a ``fedcustomer.apps`` module, and no code shipped in the job's app bundle is imported.

    python -m fedcustomer.deploy.warm_clientapp --runtime-api-address 127.0.0.1:9094 \
        --secret-file HOME/state/runtime-api.secret --parent-pid SUPERNODE_PID
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from fedcustomer.apps.flower_waits import prompt_retries
from fedcustomer.common.backoff import Backoff
from fedcustomer.deploy.forked_workers import (
    catch_stop_signals,
    exit_worker,
    fork_worker,
    parent_alive,
    stop_workers,
    warn_if_fork_unsafe,
)
from fedcustomer.deploy.installed_app import load_installed_app
from fedcustomer.deploy.task_bell import BELL_ARG, Bell, open_pipe_fd
from fedcustomer.deploy.task_heartbeat import TaskHeartbeat

log = logging.getLogger("fedcustomer.warm_clientapp")

# Imported once by the zygote; a task that needs another module imports it in its run's child.
# ``torch._dynamo`` (the compiler, ~0.4 s of CPU) is imported by the first ``torch.optim`` optimizer a
# process builds: a vertical party's setup builds one, so each run's child paid it on the critical path.
PRELOAD = (
    "flwr.supernode.runtime.run_clientapp",
    "fedcustomer.apps.client",
    "fedcustomer.apps.secagg",
    "fedcustomer.vertical.party",
    "fedcustomer.privacy.dp.dpsgd",
    "fedcustomer.psi.chunked",
    "opacus",
    "torch._dynamo",
    "pandas",
    "pyarrow",
)
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"
DEFAULT_POLL_S = 0.2  # the longest pause between task polls
FIRST_POLL_S = 0.01  # the pause right after a task was handed out
BUSY_POLL_S = 0.05  # the longest pause within BUSY_WINDOW_S of the last task
BUSY_WINDOW_S = 10.0
BELL_POLL_S = 1.0  # with a ringing task bell: the safety-net pace between polls
DEFAULT_IDLE_S = 900.0
DEFAULT_MAX_RUNS = 4


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import what every task needs, once; returns the seconds it took. A missing optional module is skipped."""
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("warm ClientApp: could not preload %s (%s)", name, type(exc).__name__)
    gc.freeze()  # keep the imported objects out of the children's garbage collections (copy-on-write)
    return time.perf_counter() - started


class TaskPoll(Backoff):
    """Pauses between task polls: short after a task, at most ``busy`` while a job is active, then ``idle``."""

    def __init__(
        self,
        idle: float = DEFAULT_POLL_S,
        *,
        first: float = FIRST_POLL_S,
        busy: float = BUSY_POLL_S,
        window: float = BUSY_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(first, busy=busy, window=window, most=idle, clock=clock)

    def task(self) -> None:
        self.reset()


def superexec_interceptors(secret: bytes | None) -> list[Any]:
    """What an executor sends with each Runtime API call: its version, and its auth when the link has a secret."""
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_METHOD})
        )
    return interceptors


def runtime_client(address: str, interceptors: list[Any]) -> Any:
    """An HTTP client for the SuperNode's Runtime API (plain HTTP on the node's own loopback port)."""
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None, interceptors=interceptors
    )


def load_client_app(fab_content: bytes) -> Any:
    """The ClientApp the job's bundle names, imported from the installed package only."""
    from flwr.clientapp.client_app import ClientApp, LoadClientAppError

    return load_installed_app(
        fab_content, kind="ClientApp", app_type=ClientApp, error=LoadClientAppError, host="this node"
    )


def run_task(address: str, token: str, apps: dict[str, Any], retire: Callable[[], None]) -> bool:
    """Run one ClientApp task through the Runtime API, as ``flwr-clientapp`` would; True if it completed.

    ``apps`` caches the loaded ClientApp per app-bundle hash for the run's later messages. A task
    that raises calls ``retire`` before its reply leaves: the run's next message then gets a fresh
    child, which reloads the party's state from disk, as a fresh ``flwr-clientapp`` would.
    """
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = runtime_client(
        address,
        [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token)],
    )
    heartbeat = TaskHeartbeat.for_runtime_client(client)  # beats often: a stalled machine keeps its task
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    started = time.perf_counter()
    try:
        message, context, run, fab = pull_task_input(client)
        app = apps.get(fab.hash_str)
        if app is None:
            app = apps[fab.hash_str] = load_client_app(fab.content)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # reported to the coordinator as Flower reports a failing ClientApp
        code = (
            ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            if isinstance(exc, LoadClientAppError)
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        )
        retire()
        # the type and place only: what a product error may say is the ClientApp's to put in its reply
        details = f"{type(exc).__name__} in the ClientApp"
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        shown = str(exc) if isinstance(exc, LoadClientAppError) else type(exc).__name__ + where
        log.error("warm ClientApp: task failed: %s", shown)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as exc:
            retire()
            status, details = SubStatus.FAILED, "pushing the reply failed"
            log.error("warm ClientApp: could not push the reply (%s)", type(exc).__name__)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
    log.info("warm ClientApp: task %s in %.2f s", status, time.perf_counter() - started)
    return status == SubStatus.COMPLETED


Handler = Callable[[str, Callable[[], None]], object]


def child_main(read_fd: int, status_fd: int, handle: Handler) -> NoReturn:
    """A run's child: one task per token line from the zygote, until the pipe closes or it retires.

    Retiring (a task failed, or a signal) is written to ``status_fd`` before anything else, so the
    zygote never hands this child another task (see :meth:`Zygote.dispatch`).
    """
    retired: list[bool] = []

    def retire() -> None:
        if not retired:
            retired.append(True)
            try:
                os.write(status_fd, b"r")
            except OSError:
                pass

    def stop_now(signum: int, _frame: object) -> None:
        retire()  # the task in hand unwinds (its output is still pushed as failed), then the child exits
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGINT, stop_now)  # Flower's heartbeat raises SIGINT when the task was taken back
    code = 0
    try:
        with os.fdopen(read_fd, "r", encoding="ascii") as tokens:
            for line in tokens:
                if line.strip():
                    handle(line.strip(), retire)
                if retired:
                    break
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        retire()
        log.error("warm ClientApp: run worker stopped (%s)", type(exc).__name__)
        code = 1
    finally:
        exit_worker(code)


@dataclass
class RunChild:
    pid: int
    write_fd: int  # task tokens to the child
    status_fd: int  # the child's retirement notice (non-blocking)
    last_sent: float = field(default_factory=time.monotonic)

    def retired(self) -> bool:
        try:
            os.read(self.status_fd, 16)
        except BlockingIOError:
            return False
        return True  # a notice, or the end of the pipe: the child is gone


class Zygote:
    """The long-lived executor: acquires tasks and routes each to its run's forked child."""

    def __init__(
        self,
        handle_in_child: Handler,
        *,
        idle_s: float = DEFAULT_IDLE_S,
        max_runs: int = DEFAULT_MAX_RUNS,
    ) -> None:
        self.handle_in_child = handle_in_child
        self.idle_s, self.max_runs = idle_s, max_runs
        self.children: dict[int, RunChild] = {}
        self.pids: set[int] = set()  # every child not reaped yet, cold ones included

    def dispatch(self, run_id: int, token: str) -> int:
        """Give the task's token to its run's child (forked on first use); returns the child's pid."""
        if not token or not token.isprintable() or any(c.isspace() for c in token):
            raise ValueError("the Runtime API returned a malformed task token")
        for attempt in (1, 2):
            child = self.children.get(run_id)
            if child is not None and child.retired():
                self._close(run_id)
                child = None
            child = child or self._spawn(run_id)
            try:
                os.write(child.write_fd, f"{token}\n".encode("ascii"))
            except BrokenPipeError:  # that child died: the task goes to a fresh one
                self._close(run_id)
                if attempt == 2:
                    raise
                continue
            child.last_sent = time.monotonic()
            return child.pid
        raise AssertionError("unreachable")

    def _spawn(self, run_id: int) -> RunChild:
        while len(self.children) >= self.max_runs:  # the least recently used run goes cold
            self._close(min(self.children, key=lambda r: self.children[r].last_sent))
        read_fd, write_fd = os.pipe()
        status_r, status_w = os.pipe()

        def child() -> NoReturn:
            os.close(write_fd)
            os.close(status_r)
            for other in self.children.values():
                os.close(other.write_fd)
                os.close(other.status_fd)
            child_main(read_fd, status_w, self.handle_in_child)

        pid = fork_worker(child)
        os.close(read_fd)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self.children[run_id] = RunChild(pid, write_fd, status_r)
        self.pids.add(pid)
        log.info("warm ClientApp: run %s served by worker %d", run_id, pid)
        return self.children[run_id]

    def _close(self, run_id: int) -> None:
        """Close a run's pipe: its child finishes the task in hand, if any, and exits."""
        child = self.children.pop(run_id)
        for fd in (child.write_fd, child.status_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def maintain(self, now: float | None = None) -> None:
        """Reap children that exited; let runs idle past ``idle_s`` go cold.

        Flower never tells the executor that a run finished, so a finished run's worker is
        kept like any warm one and ends once the run has been idle ``idle_s`` (or sooner, if
        more than ``max_runs`` runs need workers): a bounded wait, never one per run for
        the node's lifetime. Both ends are logged, so the node's log shows every worker's life.
        """
        now = time.monotonic() if now is None else now
        for pid in list(self.pids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.pids.discard(pid)
                log.info("warm ClientApp: worker %d exited", pid)
        for run_id, child in list(self.children.items()):
            if child.pid not in self.pids or child.retired():
                self._close(run_id)
            elif now - child.last_sent > self.idle_s:
                log.info(
                    "warm ClientApp: run %s idle for %.0f s: worker %d ends", run_id, self.idle_s, child.pid
                )
                self._close(run_id)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal every child and wait (bounded) for them, so none is left behind."""
        for run_id in list(self.children):
            self._close(run_id)
        stop_workers(self.pids, self.maintain, signum, timeout)


def pause_between_polls(pauses: TaskPoll, bell: Bell | None) -> None:
    """The pause after a poll that found no task: on the bell (up to ``BELL_POLL_S`` once it has rung)."""
    pause = pauses.next_pause()
    if bell is None:
        time.sleep(pause)
    else:
        bell.wait(max(pause, BELL_POLL_S) if bell.heard else pause)


def serve(
    address: str,
    *,
    secret: bytes | None,
    parent_pid: int | None = None,
    poll_s: float = DEFAULT_POLL_S,
    idle_s: float = DEFAULT_IDLE_S,
    max_runs: int = DEFAULT_MAX_RUNS,
    bell_fd: int | None = None,
) -> int:
    """Poll the SuperNode for ClientApp tasks until it goes away (or SIGTERM); returns the exit code.

    With ``bell_fd`` (the read end of the node's task bell, :mod:`fedcustomer.deploy.task_bell`) the
    pauses are waits on the bell: once it has rung, polls come when it rings and otherwise every
    ``BELL_POLL_S``; until then, and without a bell, at the :class:`TaskPoll` pace.
    """
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    took = preload()
    # the executor asks for its task as soon as the SuperNode creates it, often before the node holds
    # the message: its objects are then asked for again within milliseconds, not after Flower's 1 s
    if not prompt_retries("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"):
        log.info(
            "warm ClientApp: untested Flower version: a task's message objects are retried as Flower does"
        )
    warn_if_fork_unsafe(log, "warm ClientApp")
    apps: dict[str, Any] = {}
    zygote = Zygote(
        lambda token, retire: run_task(address, token, apps, retire), idle_s=idle_s, max_runs=max_runs
    )
    stopping = catch_stop_signals()
    interceptors = superexec_interceptors(secret)
    client = runtime_client(address, interceptors)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    log.info("warm ClientApp: ready in %.1f s, serving the node's Runtime API at %s", took, address)
    last_error = ""
    pauses = TaskPoll(poll_s)
    bell = Bell(bell_fd) if bell_fd is not None else None
    try:
        while not stopping and parent_alive(parent_pid):
            zygote.maintain()
            try:
                res = client.AcquireTask(request)
            except (httpx.HTTPError, OSError) as exc:  # the SuperNode starting or stopping
                if type(exc).__name__ != last_error:
                    last_error = type(exc).__name__
                    log.warning("warm ClientApp: the Runtime API did not answer (%s); retrying", last_error)
                time.sleep(poll_s)
                continue
            last_error = ""
            if res.HasField("task") and res.token:
                zygote.dispatch(res.task.run_id, res.token)
                pauses.task()
                continue  # a reply often brings the next message soon: ask again at once
            pause_between_polls(pauses, bell)
    finally:
        zygote.stop(stopping[0] if stopping else signal.SIGTERM)
        client.close()
        if bell is not None:
            bell.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Warm ClientApp executor for a SuperNode in process isolation.")
    ap.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    ap.add_argument("--secret-file", type=Path, default=None, help="the SuperNode's SuperExec auth secret")
    ap.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) ends"
    )
    ap.add_argument(
        "--poll", type=float, default=DEFAULT_POLL_S, help="the longest pause between task polls (seconds)"
    )
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_S, help="seconds a run's worker is kept idle")
    ap.add_argument(
        BELL_ARG,
        type=int,
        default=None,
        help="the read end of the node's task bell (given by its supervisor)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    secret = args.secret_file.read_bytes() if args.secret_file is not None else None
    return serve(
        args.runtime_api_address,
        secret=secret,
        parent_pid=args.parent_pid,
        poll_s=args.poll,
        idle_s=args.idle,
        bell_fd=open_pipe_fd(args.task_bell_fd),
    )


if __name__ == "__main__":
    sys.exit(main())
