"""A one-byte doorbell over a pipe: a writer that must never block tells a waiter "look now".

Why: several of the project's processes learn of work only by polling another process's API; a
pipe whose write end never blocks lets the process that makes the work say so at once, and the
waiter poll slowly otherwise. The byte carries no data and grants nothing; the waiter still asks
through its own authenticated API. Used by :mod:`fedcustomer.deploy.task_bell` (SuperNode to
ClientApp executor) and :mod:`fedcustomer.deploy.reply_bell` (SuperLink to the ServerApp's grid).
Linux pipes.
"""

from __future__ import annotations

import os
import select
import stat
import time


def open_bell() -> tuple[int, int]:
    """A new bell: (read end, write end); the write end never blocks its writer."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


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
