"""The SuperLink holds a node's empty pull for up to a second, answering as soon as a message is stored.

Why: a SuperNode learns of its next message only by pulling (``/v1/fleet/pull-messages``). Between
pulls it sleeps (:mod:`fedcustomer.deploy.supernode_poll`: 0.1-0.25 s while a job runs, 1 s when
idle), so every message of a job waited on average half a pause for the pull that found it, and a
two-party vertical job is fifteen sequential exchanges. With the hold, a pull that finds nothing
waits inside the SuperLink until a ServerApp stores a new instruction (then it looks again at once)
or until ``HOLD_S`` has passed (then it answers empty, as Flower would have at once). A node then
pulls again without a pause (it sees its pull was held, :class:`~fedcustomer.deploy.supernode_poll.AdaptiveTime`):
an idle node still asks about once a second, and a message reaches a waiting node within
milliseconds of being stored.

What a held pull changes, and what it does not: the request is authenticated, checked and answered
by Flower's own handler (called again after each wake-up); nothing is read that the node could not
read by pulling again; an empty answer is the same empty answer. A held pull occupies one of the
SuperLink's request threads, so at most ``MAX_HELD`` pulls are held at once; any other pull is
answered at once (the node then keeps its own pace). Waiting pulls are woken after the instruction
and its object tree are committed (``SqlLinkState.store_message_and_object_tree``, the method the
reply bell hooks too: :mod:`fedcustomer.deploy.reply_bell`), so the pull that follows finds it whole. Only the Flower versions this was checked with get the hold; any other runs
Flower's handler unchanged.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

from fedcustomer.apps.flower_waits import flower_version, tested
from fedcustomer.deploy.reply_bell import STATE_CLASS, STATE_MODULE, STORE

HOLD_S = 1.0  # the longest a pull waits inside the SuperLink (the client's own timeout is 30 s)
MAX_HELD = 8  # pulls held at once; the SuperLink's request threads are a shared pool
HANDLERS_MODULE = "flwr.superlink.servicer.fleet.fleet_handlers"
PULL = "pull_messages"


class StoredMessages:
    """A counter of instructions stored, and a condition that wakes the pulls waiting for the next one.

    A waiter reads the count before its pull looks at the database; if an instruction is stored
    between that look and the wait, the count has moved and the wait returns at once (no lost
    wake-up).
    """

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._held = 0
        self.max_held = max_held

    def count(self) -> int:
        with self._cond:
            return self._count

    def stored(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def hold(self) -> bool:
        """Take one of the ``max_held`` places; False when all are taken (answer the pull at once)."""
        with self._cond:
            if self._held >= self.max_held:
                return False
            self._held += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._held -= 1

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def wait_past(self, seen: int, deadline: float) -> bool:
        """Wait until the count passes ``seen`` (True) or ``deadline`` (monotonic) comes (False)."""
        with self._cond:
            while self._count == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


STORED = StoredMessages()


def _announcing(store: Callable[..., Any], stored: StoredMessages) -> Callable[..., Any]:
    @functools.wraps(store)
    def store_message_and_object_tree(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        result = store(self, message, *args, **kwargs)
        if result[0] and not message.metadata.reply_to_message_id:  # an instruction for a node
            stored.stored()
        return result

    store_message_and_object_tree.pull_hold = True  # type: ignore[attr-defined]
    return store_message_and_object_tree


def _holding(pull: Callable[..., Any], stored: StoredMessages, hold_s: float) -> Callable[..., Any]:
    @functools.wraps(pull)
    def pull_messages(*args: Any, **kwargs: Any) -> Any:
        seen = stored.count()
        response = pull(*args, **kwargs)
        if response.messages_list or not stored.hold():
            return response
        try:
            deadline = time.monotonic() + hold_s
            while stored.wait_past(seen, deadline):
                seen = stored.count()
                response = pull(*args, **kwargs)  # Flower's handler again: the same checks, the same answer
                if response.messages_list:
                    break
            return response
        finally:
            stored.release()

    pull_messages.pull_hold = True  # type: ignore[attr-defined]
    return pull_messages


def install(version: str | None = None, stored: StoredMessages = STORED, hold_s: float = HOLD_S) -> bool:
    """Hold empty Fleet pulls in this SuperLink; False (Flower unchanged) on an untested version."""
    if not tested(flower_version() if version is None else version):
        return False
    cls = getattr(importlib.import_module(STATE_MODULE), STATE_CLASS, None)
    handlers = importlib.import_module(HANDLERS_MODULE)
    store, pull = getattr(cls, STORE, None), getattr(handlers, PULL, None)
    if cls is None or not callable(store) or not callable(pull):
        return False  # not the SuperLink this was written for
    if not getattr(store, "pull_hold", False):
        setattr(cls, STORE, _announcing(store, stored))
    if not getattr(pull, "pull_hold", False):
        setattr(handlers, PULL, _holding(pull, stored, hold_s))
    return True
