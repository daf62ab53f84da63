"""Forked worker processes of the warm executors (ClientApp beside a SuperNode, ServerApp beside a SuperLink).

Why one module: both executors import everything once and fork a worker per run or job. A forked
worker is a copy of the executor, so an exception that escapes its body would carry on running the
executor's own loop in the copy; both must end every worker with ``os._exit``, flush its output even
when a stop signal lands during the flush, and stop their workers the same bounded way.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn


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
