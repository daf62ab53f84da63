"""A warm ServerApp executor beside the coordinator's SuperLink (``flower-superlink --isolation process``).

Why: in its default ``subprocess`` isolation, Flower 1.42's SuperLink starts ``flower-superexec``,
which polls for ServerApp tasks once a second and starts a fresh ``flwr-serverapp`` process for
each run (``_start_superexec_if_needed`` in ``flwr/superlink/cli/flower_superlink.py``). That process
imports flwr, installs the job's app bundle, then imports the ServerApp (fedcustomer, torch) before
it sends the first message: several seconds of every job's start, more on a busy machine.

``--isolation process`` is Flower's supported way to run that executor outside the SuperLink. This
process takes its place: it imports everything once, asks the SuperLink's Runtime API for ServerApp
tasks (``AcquireTask``, signed with the coordinator's SuperExec secret, so no other process can take
a job), and forks one child per task. The child does what ``run_serverapp``
(``flwr/superlink/runtime/run_serverapp.py``) does with Flower's own calls (pull the task input,
heartbeats, the run's log sent to the SuperLink for ``flwr log``, the task's output), then exits; a
crash ends one job's child, never the executor. Only ServerApps installed with fedcustomer run: the
component the job names must be a ``fedcustomer.apps`` module, and no code carried in the job's app
bundle is imported (nor is the bundle installed).

    python -m fedcustomer.deploy.warm_serverapp --runtime-api-address 127.0.0.1:9093 \
        --root-certificates certs/ca.crt --secret-file WORKDIR/state/runtime-api.secret --parent-pid SUPERLINK_PID
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fedcustomer.apps.flower_waits import prompt_retries
from fedcustomer.deploy.forked_workers import (
    catch_stop_signals,
    exit_worker,
    fork_worker,
    parent_alive,
    stop_workers,
    warn_if_fork_unsafe,
)
from fedcustomer.deploy.installed_app import load_installed_app
from fedcustomer.deploy.task_heartbeat import TaskHeartbeat
from fedcustomer.deploy.warm_clientapp import TaskPoll, preload, superexec_interceptors

log = logging.getLogger("fedcustomer.warm_serverapp")

# Imported once; a job that needs another module imports it in its own child.
PRELOAD = (
    "flwr.superlink.runtime.run_serverapp",
    "flwr.superlink.grid",
    "fedcustomer.apps.server",
    "fedcustomer.apps.vertical",
    "fedcustomer.apps.secagg",
    "fedcustomer.apps.secagg_distributed",
    "fedcustomer.vertical.deployed",
    "fedcustomer.server.deployment",
    "pandas",
)
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"  # the call the SuperExec auth protects (tests sign it)
DEPLOYED_GRID_MODULE = "flwr.superlink.grid.http_grid"
IDLE_POLL_S = 0.5  # the longest pause between task polls (Flower's SuperExec: 1 s, always)
FIRST_POLL_S = 0.05
BUSY_POLL_S = 0.2
BUSY_WINDOW_S = 10.0
MAX_JOBS = 8  # concurrent ServerApp runs; a further task waits in the SuperLink until one ends


def load_server_app(fab_content: bytes) -> Any:
    """The ServerApp the job's bundle names, imported from the installed package only."""
    from flwr.serverapp.server_app import LoadServerAppError, ServerApp

    return load_installed_app(
        fab_content, kind="ServerApp", app_type=ServerApp, error=LoadServerAppError, host="this coordinator"
    )


def run_task(address: str, token: str, *, insecure: bool, root_certificates: bytes | None) -> bool:
    """Run one ServerApp task through the Runtime API, as ``flwr-serverapp`` would; True if it completed."""
    from queue import Queue

    from flwr.app import RecordDict
    from flwr.common.config import get_fused_config_from_fab
    from flwr.common.constant import SubStatus
    from flwr.common.serde import context_from_proto, context_to_proto, fab_from_proto, run_from_proto
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest
    from flwr.server.run_serverapp import run as run_server_app
    from flwr.supercore.logger import (
        flush_logs,
        mirror_output_to_queue,
        start_log_uploader,
        stop_log_uploader,
    )
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import HttpGrid

    queue: Queue[str | None] = Queue()
    mirror_output_to_queue(queue)  # the run's output also goes to the SuperLink (`flwr log RUN_ID`)
    grid = HttpGrid(address, insecure=insecure, root_certificates=root_certificates, token=token)
    client = grid._runtime_client  # Flower's own run_serverapp drives the same client
    heartbeat = TaskHeartbeat.for_runtime_client(client)  # beats often: a stalled machine keeps its task
    heartbeat.start()
    uploader = context = None
    status, details = SubStatus.FAILED, "ServerApp task failed"
    started = time.perf_counter()
    try:
        res = client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
        grid.set_run(run)
        uploader = start_log_uploader(log_queue=queue, node_id=0, run_id=run.run_id, client=client)
        app = load_server_app(fab.content)
        context.run_config = get_fused_config_from_fab(fab.content, run)
        log.info("warm ServerApp: run %s started", run.run_id)
        context = run_server_app(grid=grid, context=context, server_app_dir=".", loaded_server_app=app)
        context.state = RecordDict()  # as Flower: the resulting state is not pushed back
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # reported as Flower reports a failing ServerApp
        log.error("warm ServerApp: the ServerApp raised %s", type(exc).__name__, exc_info=exc)
        details = f"ServerApp failed with exception: {exc}"
    finally:
        grid._retry_invoker.max_tries = 1  # as Flower on exit: never block on a SuperLink that is gone
        if uploader is not None:
            flush_logs(queue)
        try:
            client.PushTaskOutput(
                PushTaskOutputRequest(
                    context=context_to_proto(context) if context else None, sub_status=status, details=details
                )
            )
        except Exception as exc:
            log.error("warm ServerApp: could not push the task's output (%s)", type(exc).__name__)
        if uploader is not None:
            stop_log_uploader(queue, uploader)
        heartbeat.stop()
        grid.close()
    log.info("warm ServerApp: task %s in %.2f s", status, time.perf_counter() - started)
    return status == SubStatus.COMPLETED


def child_main(run: Callable[[], bool], superlink_pid: int | None) -> NoReturn:
    """A job's child: one task, then exit; a signal (or the SuperLink ending) fails the task cleanly."""
    from flwr.supercore.app_utils import start_parent_process_monitor

    def stop_now(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):  # once: a second signal must not cut the unwinding short
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)  # the task unwinds: its output is still pushed, as failed

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGINT, stop_now)  # Flower's heartbeat and parent monitor raise SIGINT
    if superlink_pid is not None:
        start_parent_process_monitor(superlink_pid)
    code = 1
    try:
        code = 0 if run() else 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        log.error("warm ServerApp: job worker stopped (%s)", type(exc).__name__)
    finally:
        exit_worker(code)


class Jobs:
    """The executor's children, one per ServerApp task in progress."""

    def __init__(self, most: int = MAX_JOBS) -> None:
        self.most = most
        self.pids: set[int] = set()

    def full(self) -> bool:
        return len(self.pids) >= self.most

    def start(self, task: Callable[[], bool], superlink_pid: int | None) -> int:
        pid = fork_worker(lambda: child_main(task, superlink_pid))
        self.pids.add(pid)
        return pid

    def reap(self) -> None:
        for pid in list(self.pids):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.pids.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if code not in (0, 1):  # 1: the job failed, said above; anything else: the worker died
                    log.warning("warm ServerApp: job worker %d ended with exit code %d", pid, code)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal every job's child and wait (bounded): each pushes its task's output as failed."""
        stop_workers(self.pids, self.reap, signum, timeout)


def serve(
    address: str,
    *,
    secret: bytes | None,
    insecure: bool,
    root_certificates: bytes | None,
    parent_pid: int | None = None,
    poll_s: float = IDLE_POLL_S,
    max_jobs: int = MAX_JOBS,
) -> int:
    """Poll the SuperLink for ServerApp tasks until it goes away (or SIGTERM); returns the exit code."""
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.runtime import RuntimeHttpClient

    took = preload(PRELOAD)
    # replies pulled before their objects reached the SuperLink: asked for again within milliseconds
    prompt_retries(DEPLOYED_GRID_MODULE, "pull_objects")
    warn_if_fork_unsafe(log, "warm ServerApp")
    stopping = catch_stop_signals()
    interceptors = superexec_interceptors(secret)
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=root_certificates,
        interceptors=interceptors,
    )
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    jobs = Jobs(max_jobs)
    pauses = TaskPoll(poll_s, first=FIRST_POLL_S, busy=BUSY_POLL_S, window=BUSY_WINDOW_S)
    log.info("warm ServerApp: ready in %.1f s, serving the SuperLink's Runtime API at %s", took, address)
    last_error = ""
    try:
        while not stopping and parent_alive(parent_pid):
            jobs.reap()
            if jobs.full():
                time.sleep(pauses.next_pause())
                continue
            try:
                res = client.AcquireTask(request)
            except (httpx.HTTPError, OSError) as exc:  # the SuperLink starting or stopping
                if type(exc).__name__ != last_error:
                    last_error = type(exc).__name__
                    log.warning("warm ServerApp: the Runtime API did not answer (%s); retrying", last_error)
                time.sleep(poll_s)
                continue
            last_error = ""
            if res.HasField("task") and res.token:
                task = functools.partial(
                    run_task, address, res.token, insecure=insecure, root_certificates=root_certificates
                )
                pid = jobs.start(task, parent_pid)
                log.info("warm ServerApp: run %s served by worker %d", res.task.run_id, pid)
                pauses.task()
                continue
            # while a job of ours runs, its own requests need the SuperLink: poll at the idle pace
            time.sleep(poll_s if jobs.pids else pauses.next_pause())
    finally:
        jobs.stop(stopping[0] if stopping else signal.SIGTERM)
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Warm ServerApp executor for a SuperLink in process isolation.")
    ap.add_argument("--runtime-api-address", required=True, help="the SuperLink's Runtime API, HOST:PORT")
    ap.add_argument(
        "--root-certificates", type=Path, default=None, help="CA certificate of the SuperLink's TLS"
    )
    ap.add_argument("--insecure", action="store_true", help="the SuperLink runs without TLS (--insecure)")
    ap.add_argument("--secret-file", type=Path, default=None, help="the SuperLink's SuperExec auth secret")
    ap.add_argument(
        "--parent-pid", type=int, default=None, help="exit when this process (the SuperLink) ends"
    )
    ap.add_argument(
        "--poll", type=float, default=IDLE_POLL_S, help="the longest pause between task polls (s)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    logging.getLogger("alembic").setLevel(logging.WARNING)  # not its plugin list at each start
    logging.getLogger("flwr").propagate = False  # Flower's log has its own handler: each line once
    if args.insecure == (args.root_certificates is not None):
        ap.error("give exactly one of --root-certificates FILE and --insecure")
    roots = None if args.root_certificates is None else args.root_certificates.read_bytes()
    secret = args.secret_file.read_bytes() if args.secret_file is not None else None
    return serve(
        args.runtime_api_address,
        secret=secret,
        insecure=args.insecure,
        root_certificates=roots,
        parent_pid=args.parent_pid,
        poll_s=args.poll,
    )


if __name__ == "__main__":
    sys.exit(main())
