"""A doorbell from the coordinator's SuperLink to its warm ServerApp executor: "a reply may be waiting".

Why: the coordinator's grid (:class:`fedcustomer.apps.prompt_grid.PromptGrid`) learns of a partner's
reply only by pulling the SuperLink's Runtime API: every 0.1 s for the first second after a push,
then every 0.2 s. A reply waited about 0.05 s on average for the pull that found it, and those
pulls were about half of the requests the SuperLink answered in a two-party job. With the bell the
coordinator's supervisor makes a pipe and gives its write end to the SuperLink and its read end to
the warm executor (inherited by each job's child); the SuperLink rings when a Fleet push has stored
a reply message and registered its objects (``SqlLinkState.store_message_and_object_tree``, once
its transaction has committed, so the pull that follows finds the reply whole), and the grid waits on the pipe between pulls:
it pulls at once when the bell rings and otherwise at a slower safety-net pace.

Like the node's bell (:mod:`fedcustomer.deploy.task_bell`, whose pipe code this uses) the byte carries
no data and grants nothing: the grid still pulls every reply through the authenticated Runtime API; a
byte from elsewhere only makes it pull sooner. A grid slows to the safety-net pace only after it has
heard a ring, so a SuperLink that does not ring (Flower's own under ``FEDCUSTOMER_SUPERLINK=flower``, an
untested Flower version) leaves today's pace; a ring taken by another job's grid (jobs running at once
share the pipe) only costs that reply the safety-net wait. The SuperLink's end never blocks it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from fedcustomer.apps.flower_waits import flower_version, tested
from fedcustomer.apps.prompt_grid import REPLY_BELL_ENV as GRID_ENV_FD
from fedcustomer.common.pipe_bell import ring

__all__ = ["ENV_FD", "GRID_ENV_FD", "install"]

ENV_FD = "FEDCUSTOMER_REPLY_BELL_FD"  # the SuperLink's write end, named in its environment
STATE_MODULE = "flwr.server.superlink.linkstate.sql_linkstate"
STATE_CLASS = "SqlLinkState"
STORE = "store_message_and_object_tree"  # the Fleet push of a node's reply (and the Runtime API's pushes)


def _ringing(store: Callable[..., Any], fd: int) -> Callable[..., Any]:
    @functools.wraps(store)
    def store_message_and_object_tree(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        result = store(self, message, *args, **kwargs)
        # a reply the grid can now pull; a refused one, or an instruction pushed by a ServerApp, rings nothing
        if result[0] and message.metadata.reply_to_message_id:
            ring(fd)
        return result

    store_message_and_object_tree.reply_bell = True  # type: ignore[attr-defined]
    return store_message_and_object_tree


def install(fd: int | None, version: str | None = None) -> bool:
    """Ring ``fd`` whenever the SuperLink stores a reply; False (Flower unchanged) if untested or no pipe."""
    if fd is None or not tested(flower_version() if version is None else version):
        return False
    cls = getattr(importlib.import_module(STATE_MODULE), STATE_CLASS, None)
    store = getattr(cls, STORE, None)
    if cls is None or not callable(store):
        return False
    if not getattr(store, "reply_bell", False):
        setattr(cls, STORE, _ringing(store, fd))
    ring(fd)  # "this SuperLink rings": grids that hear it may pull at the safety-net pace
    return True
