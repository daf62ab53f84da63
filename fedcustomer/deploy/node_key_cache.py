"""The SuperLink's answer to "which node holds this public key", kept between registrations.

Why: Flower 1.42's SuperLink authenticates every Fleet request (``authenticate_node`` in
``flwr/superlink/routers/fleet/node_auth.py``): it checks the timestamp window and the request's
signature, then asks its database which registered node holds the request's public key
(``SqlLinkState.get_node_id_by_public_key``), a SQLAlchemy session and query per request. In a
profiled two-party vertical job that lookup was about a tenth of the SuperLink's CPU, for an answer
that changes only when a node is registered or unregistered.

:func:`install` keeps the answers of that lookup per link state, and forgets all of them whenever
a node is created or deleted through the same state (``create_node``, ``delete_node``: the only
writers of a node's key or its ``unregistered`` status in Flower 1.42; the Control API's
``flwr supernode register/unregister`` and the Fleet API's registration all go through them, in the
SuperLink's own process). A lookup that overlapped such a change is answered from the database and
not kept (a generation count). Only found nodes are kept: an unknown key is asked again each time.
The signature and timestamp checks are Flower's own, on every request; nothing is skipped. Only the
Flower versions this was checked against get the cache (the patched methods are pinned by a test).
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable
from typing import Any

from fedcustomer.apps.flower_waits import flower_version, tested

STATE_MODULE = "flwr.server.superlink.linkstate.sql_linkstate"
STATE_CLASS = "SqlLinkState"
LOOKUP = "get_node_id_by_public_key"
WRITERS = ("create_node", "delete_node")  # every method that writes a node's key or its registration
SESSION_MODULE = "flwr.supercore.sql_mixin"  # its ``_current_sessions``: the open sessions of this context
_CACHE_ATTR = "_fedcustomer_node_keys"
_CREATE_LOCK = threading.Lock()


class NodeKeys:
    """Found node ids by public key, for one link state; cleared (a new generation) at each change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[bytes, int] = {}
        self.generation = 0
        self.off = False  # set for good if a change was ever made inside a longer transaction

    def get(self, public_key: bytes) -> tuple[int | None, int]:
        """The kept node id (or None) and the generation the caller's own lookup belongs to."""
        with self._lock:
            return self._ids.get(public_key), self.generation

    def keep(self, public_key: bytes, node_id: int, generation: int) -> None:
        """Keep ``node_id`` unless a node changed since ``generation`` was read."""
        with self._lock:
            if generation == self.generation and not self.off:
                self._ids[public_key] = node_id

    def changed(self, *, for_good: bool = False) -> None:
        with self._lock:
            self.generation += 1
            self._ids.clear()
            self.off = self.off or for_good


def keys_of(state: Any) -> NodeKeys:
    """The cache of one link state (made on first use)."""
    keys = state.__dict__.get(_CACHE_ATTR)
    if keys is None:
        with _CREATE_LOCK:
            keys = state.__dict__.setdefault(_CACHE_ATTR, NodeKeys())
    return keys  # type: ignore[no-any-return]


def in_transaction() -> bool:
    """Whether this thread is inside one of Flower's SQL sessions (its writes commit at that session's end)."""
    sessions = importlib.import_module(SESSION_MODULE)._current_sessions.get()
    return bool(sessions)


def _cached_lookup(lookup: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(lookup)
    def get_node_id_by_public_key(self: Any, public_key: bytes) -> int | None:
        keys = keys_of(self)
        node_id, generation = keys.get(public_key)
        if node_id is not None:
            return node_id
        found = lookup(self, public_key)
        if found is not None:
            keys.keep(public_key, found, generation)
        return found  # type: ignore[no-any-return]

    get_node_id_by_public_key.node_key_cache = True  # type: ignore[attr-defined]
    return get_node_id_by_public_key


def _forgets_keys(write: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(write)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        keys = keys_of(self)
        # inside a caller's open transaction the write commits later than this method returns: keep
        # nothing from then on rather than guess when
        keys.changed(for_good=in_transaction())  # lookups from here on are not kept until the write ...
        try:
            return write(self, *args, **kwargs)
        finally:
            keys.changed()  # ... is done, and one that read the database before it is not kept either

    return wrapped


def install(version: str | None = None) -> bool:
    """Keep the SuperLink's node-key lookups between node changes; False (Flower unchanged) if untested."""
    if not tested(flower_version() if version is None else version):
        return False
    cls = getattr(importlib.import_module(STATE_MODULE), STATE_CLASS, None)
    sessions = getattr(importlib.import_module(SESSION_MODULE), "_current_sessions", None)
    if (
        sessions is None
        or cls is None
        or not all(callable(getattr(cls, n, None)) for n in (LOOKUP, *WRITERS))
    ):
        return False  # not the link state this was written for
    if getattr(getattr(cls, LOOKUP), "node_key_cache", False):
        return True
    setattr(cls, LOOKUP, _cached_lookup(getattr(cls, LOOKUP)))
    for name in WRITERS:
        setattr(cls, name, _forgets_keys(getattr(cls, name)))
    return True
