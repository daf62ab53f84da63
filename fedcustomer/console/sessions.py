"""Server-side console sessions: random ids, CSRF tokens, idle expiry, one-time sign-in steps.

A session id is 256 bits from :mod:`secrets`, sent only as an HttpOnly, SameSite=Strict
cookie (Secure under TLS); the server keeps what it stands for. A visitor who is not
signed in gets an anonymous session too, only so that the sign-in forms carry a CSRF
token; signing in always issues a *new* id and drops the old one, so an id planted
before sign-in (session fixation) is worthless after it. Every state-changing request
must carry the session's CSRF token. Sessions end after ``IDLE_SECONDS`` without a
request, and at sign-out. They live in memory: restarting the console signs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IDLE_SECONDS = 15 * 60
PENDING_SECONDS = 5 * 60
COOKIE = "fc_session"
SECURE_COOKIE = "__Host-fc_session"  # the __Host- prefix: Secure, Path=/, no Domain


@dataclass
class Session:
    """One browser's session; ``person`` is set once signed in."""

    sid: str
    csrf: str
    last_seen: float
    person: dict[str, str] | None = None  # key_id, name, role, method
    pending: dict[str, Any] = field(default_factory=dict)  # half-done sign-in, challenges

    @property
    def signed_in(self) -> bool:
        return self.person is not None


class SessionBook:
    """Every live session of one console process (thread-safe)."""

    def __init__(self, *, idle_seconds: float = IDLE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now)
        with self._lock:
            self._expire(now)
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session for ``sid`` (its idle clock restarts), or None."""
        if not sid:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[sid]
                return None
            session.last_seen = now
            return session

    def sign_in(self, old: Session, person: dict[str, str]) -> Session:
        """A fresh session for ``person``; the old id stops working (no fixation)."""
        self.drop(old.sid)
        session = self.new()
        session.person = dict(person)
        return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if now - v.last_seen > self.idle_seconds]:
            del self._sessions[sid]

    def pending_fresh(self, session: Session, key: str) -> Any:
        """A sign-in step stored in the session, if not older than ``PENDING_SECONDS`` (used once)."""
        item = session.pending.pop(key, None)
        if item is None or self._clock() - item["at"] > PENDING_SECONDS:
            return None
        return item["value"]

    def put_pending(self, session: Session, key: str, value: Any) -> None:
        session.pending[key] = {"at": self._clock(), "value": value}

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and secrets.compare_digest(session.csrf, str(token))
