"""Forked worker processes of the warm executors (ClientApp beside a SuperNode, ServerApp beside a SuperLink).

Why one module: both executors import everything once and fork a worker per run or job. A forked
worker is a copy of the executor, so an exception that escapes its body would carry on running the
executor's own loop in the copy; both must end every worker with ``os._exit``, flush its output even
when a stop signal lands during the flush, and stop their workers the same bounded way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})  # Arrow's allocator: jemalloc re-arms itself after fork


def extra_threads() -> list[str]:
    """Threads besides the main one (native ones included, where /proc tells) that forking could strand."""
    try:
        tids = [
            t for t in os.listdir("/proc/self/task") if int(t) != os.getpid()
        ]  # the main thread's id is the pid
        return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in tids)
    except OSError:
        return [t.name for t in threading.enumerate() if t is not threading.main_thread()]


def warn_if_fork_unsafe(log: logging.Logger, who: str) -> None:
    """Warn when threads run after the imports: one holding a lock at fork time leaves it locked in the workers."""
    risky = [t for t in extra_threads() if t not in FORK_SAFE_THREADS]
    if risky:
        log.warning("%s: threads after the imports (%s); forking may be unsafe", who, ", ".join(risky))


def catch_stop_signals() -> list[int]:
    """SIGTERM and SIGINT noted in the returned list, for the executor's loop to end at its next turn."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def fork_worker(body: Callable[[], NoReturn]) -> int:
    """Fork; the child runs ``body`` and never returns to the caller's code. Returns the child's pid."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:  # e.g. a stop signal before the worker's own handlers: never unwind into the executor
            os._exit(1)
    return pid


def exit_worker(code: int) -> NoReturn:
    """Flush the worker's output with stop signals ignored, then ``os._exit``.

    A stop signal whose handler raises SystemExit could land during the flush itself; it is caught
    here, the flush retried with the signals ignored, and its exit code kept.
    """
    while True:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                if stream is None:
                    continue
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass  # a closed or broken stream: nothing more can be written anyway
            break
        except SystemExit as exc:  # the stop handler ran before the signals were ignored
            code = exc.code if isinstance(exc.code, int) else 1
    os._exit(code)


def stop_workers(pids: set[int], reap: Callable[[], None], signum: int, timeout: float) -> None:
    """Signal every worker, wait (bounded) while ``reap`` removes the ended ones from ``pids``, kill the rest."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        pids.discard(pid)


def parent_alive(pid: int | None) -> bool:
    """Whether the process the executor serves (SuperNode or SuperLink) still runs; None: not watched."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
