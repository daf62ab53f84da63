"""A doorbell from a partner's SuperNode to its warm ClientApp executor: "a task may be waiting".

Why: the warm executor learns of a task only by asking the SuperNode's Runtime API (``AcquireTask``),
a loopback HTTP request that the SuperNode's own process answers. Asked every 0.05 s while a job
runs (every 0.2 s idle), those polls were about 20 requests a second per node during a job, competing
in the SuperNode's process with its pulls from the SuperLink, and most of an idle node's CPU. With
the bell the node's supervisor makes a pipe and gives its write end to the SuperNode and its read
end to the executor; the SuperNode (:mod:`fedcustomer.deploy.supernode_poll`) writes one byte when it
has created a task for a message it pulled, and the executor waits on the pipe: it asks at once
when the bell rings and otherwise only once a second (a safety net).

The bell carries no data and grants nothing: the executor still takes each task with its signed
``AcquireTask``; a byte from elsewhere only makes it ask sooner. An executor uses the slow safety-net
pace only once it has heard the bell: the SuperNode rings once when it starts ringing, so an idle
node's executor polls once a second from the start; a SuperNode that does not ring (Flower's own
``flower-supernode`` under ``--poll flower``, or an untested Flower version) leaves the executor's
usual pace unchanged, as does a restarted executor until the next task's ring. Linux pipes;
the SuperNode's end never blocks it (a full pipe means rings are pending already).
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Mapping

ENV_FD = "FEDCUSTOMER_TASK_BELL_FD"  # the SuperNode's write end, named in its environment
BELL_ARG = "--task-bell-fd"  # the executor's read end, on its command line


def open_bell() -> tuple[int, int]:
    """A new bell: (read end, write end); the write end never blocks its writer."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def fd_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The write end named in ``environ`` (the process's own by default), if it is an open pipe."""
    value = (os.environ if environ is None else environ).get(ENV_FD, "")
    return open_pipe_fd(value)


def open_pipe_fd(value: str | int | None) -> int | None:
    """``value`` as a file descriptor if it names an open pipe of this process, else None."""
    try:
        fd = int(value) if value is not None else -1
        if fd < 0:
            return None
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (ValueError, OSError):
        return None


def ring(fd: int) -> None:
    """Tell the executor a task may be waiting; never blocks, never raises."""
    try:
        os.write(fd, b"!")
    except OSError:  # full (rings pending already) or the executor's end gone: nothing to do
        pass


class Bell:
    """The executor's end: :meth:`wait` returns as soon as the bell rings (or after ``timeout``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.heard = False  # the SuperNode rings: the executor may poll slowly between rings
        os.set_blocking(fd, False)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a ring; True if it rang (every pending ring is taken)."""
        if self.fd < 0:  # the SuperNode's end closed: a plain pause
            time.sleep(max(timeout, 0.0))
            return False
        try:
            ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
            data = os.read(self.fd, 4096) if ready else None
        except (BlockingIOError, InterruptedError):
            return False
        if data is None:
            return False
        if not data:  # every write end closed (the SuperNode is gone): back to plain pauses
            self.close()
            return False
        self.heard = True
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.heard = -1, False
