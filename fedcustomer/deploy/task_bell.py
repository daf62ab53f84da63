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
from collections.abc import Mapping

from fedcustomer.common.pipe_bell import Bell, open_bell, open_pipe_fd, ring

__all__ = ["BELL_ARG", "ENV_FD", "Bell", "fd_from_env", "open_bell", "open_pipe_fd", "ring"]

ENV_FD = "FEDCUSTOMER_TASK_BELL_FD"  # the SuperNode's write end, named in its environment
BELL_ARG = "--task-bell-fd"  # the executor's read end, on its command line


def fd_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The write end named in ``environ`` (the process's own by default), if it is an open pipe."""
    value = (os.environ if environ is None else environ).get(ENV_FD, "")
    return open_pipe_fd(value)
