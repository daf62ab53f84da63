"""A partner's audit log kept open for the rounds of a job: its signer, anchor sinks and reach connection.

Every round appends one ``fl_round`` entry, signed at once (its anchor leaves with the reply).
Opening the log for it each round loaded the signing key (or opened a token session), checked the
public key files, built the anchor sinks from partner.toml and connected to ``store.db`` for the
reach record, then closed it all again. A node therefore holds one log per (home, run) from the
job's first round to its last planned round, a refusal or a failed round, after ``IDLE_SECONDS``
without use (a job that stopped early), and with the process, as :mod:`.ledger_holds` holds the
ledger. Nothing about the entries changes: each is appended under the writers' file lock (other
processes may append between rounds), signed, fsynced and recorded in the reach in its own durable
transaction before the reply leaves.

A hold is lent only to the process and configuration it was made for: a forked child, a round
that finds the hold in use by another thread, or a home whose partner.toml (keyring, anchor
sinks), signing key, public key files or audit files changed since the hold was made opens the log
afresh (a changed hold is closed and replaced). Nothing here touches customer data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fedcustomer.clients.job_matrices import IDLE_SECONDS
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.reach import HeldHomeReach
from fedcustomer.privacy.audit.records import LOCK_NAME, LOG_NAME, PUBLIC_KEY_NAME, SIGNING_KEY_NAME
from fedcustomer.privacy.audit.writer import AuditLog

log = logging.getLogger(__name__)


@dataclass
class _Held:
    audit: AuditLog
    reach: HeldHomeReach
    identity: tuple[Any, ...]
    pid: int = field(default_factory=os.getpid)
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        """Close the log (it signs anything left unsigned), its anchor sinks and the reach connection."""
        if self.pid != os.getpid():
            return  # inherited across fork: the parent's to close
        with self.lock:
            try:
                self.audit.close()
            finally:
                for sink in getattr(self.audit.anchor_sink, "sinks", ()):
                    close = getattr(sink, "close", None)
                    if close is not None:
                        close()
                self.reach.close()


def _stat_id(path: os.PathLike[str] | str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def identity(home: PartnerHome) -> tuple[Any, ...]:
    """What a held log was opened from: a change in any of it means opening the log afresh."""
    config = home.config() if home.config_path.exists() else None
    settings = (config.name, config.keyring, config.anchor_file, config.anchor_syslog) if config else None
    audit = home.audit_dir
    files = [
        home.keys_dir / SIGNING_KEY_NAME,
        home.keys_dir / PUBLIC_KEY_NAME,
        audit / PUBLIC_KEY_NAME,
        audit / LOCK_NAME,
    ]
    dirs = [_stat_id(audit), _stat_id(home.store_path)]
    log_file = _stat_id(audit / LOG_NAME)  # grows every round: its inode alone says whether it was replaced
    return (
        settings,
        tuple(_stat_id(f) for f in files),
        tuple(d[:2] if d else None for d in dirs),
        log_file[:2] if log_file else None,
    )


class AuditHolds:
    """Per-process held audit logs, keyed by (home, run id)."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._holds: dict[tuple[str, str], _Held] = {}
        self._inherited: list[_Held] = []
        self._lock = threading.Lock()

    @contextmanager
    def log(self, home: PartnerHome, run_id: str) -> Iterator[AuditLog]:
        """The job's held log for one append (made on first use), or a log opened for this call alone
        (closed after it) when the hold cannot be lent. An error while appending closes the hold."""
        key = (str(home.root.resolve()), run_id)
        held = self._lend(key, home)
        if held is None:
            with home.open_audit_log() as audit:
                yield audit
            return
        try:
            yield held.audit
        except BaseException:
            held.lock.release()
            self._drop(key, held)
            raise
        held.used = time.monotonic()
        held.lock.release()

    def _lend(self, key: tuple[str, str], home: PartnerHome) -> _Held | None:
        """The hold of ``key`` with its lock taken, made or remade as needed; None when none can be lent."""
        now = time.monotonic()
        with self._lock:
            stale = [
                k for k, h in self._holds.items() if h.pid == os.getpid() and now - h.used > self.idle_seconds
            ]
            dropped = [self._holds.pop(k) for k in stale]
            held = self._holds.get(key)
        for old in dropped:
            old.close()
        want = identity(home)
        if held is not None and (held.pid != os.getpid() or held.identity != want):
            if held.pid == os.getpid():
                self._drop(key, held)  # partner.toml, a key or the audit files changed: open afresh
            else:
                with self._lock:
                    if self._holds.get(key) is held:  # inherited across fork: left to the parent, and
                        self._inherited.append(self._holds.pop(key))  # kept referenced, never closed here
            held = None
        if held is not None:
            return held if held.lock.acquire(blocking=False) else None
        reach = HeldHomeReach(home.store_path, home.keys_dir / PUBLIC_KEY_NAME)
        try:
            audit = home.open_audit_log(reach=reach)
        except BaseException:
            reach.close()
            raise
        new = _Held(audit, reach, want)
        new.lock.acquire()
        if identity(home) != want:  # opening wrote a public key file, or something changed meanwhile:
            new.lock.release()  # not held; this call opens its own log and the next one holds
            new.close()
            return None
        with self._lock:
            kept = self._holds.setdefault(key, new)
        if kept is not new:  # another thread made one meanwhile: use it if free, else a log of our own
            new.lock.release()
            new.close()
            return kept if kept.lock.acquire(blocking=False) else None
        return new

    def _drop(self, key: tuple[str, str], held: _Held) -> None:
        with self._lock:
            if self._holds.get(key) is held:
                del self._holds[key]
        try:
            held.close()
        except Exception as exc:  # the entry it held for was written and signed; closing only releases
            log.warning("audit log held for a job not closed cleanly: %s", type(exc).__name__)

    def release(self, home: PartnerHome, run_id: str) -> None:
        """Close the hold of (home, run), if any."""
        key = (str(home.root.resolve()), run_id)
        with self._lock:
            held = self._holds.get(key)
        if held is not None and held.pid == os.getpid():
            self._drop(key, held)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            held = self._holds.get(key)  # type: ignore[call-overload]
        return held is not None and held.pid == os.getpid()


HOLDS = AuditHolds()
