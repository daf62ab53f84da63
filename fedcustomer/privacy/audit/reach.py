"""How far an audit log is known to reach, recorded outside the audit directory.

The hash chain and the signed checkpoints show that what is in ``audit.jsonl`` was not
changed, but not that nothing is missing at the end: someone who can write ``audit/``
can delete both files, cut them back together to an earlier checkpoint, or replace
them with a freshly computed chain. A *reach record* kept elsewhere closes that gap:
after every append the writer records the newest entry (sequence number, hash, end
offset) and after every checkpoint its number and digest. ``verify`` and the
before-acting check then refuse a log that ends before the recorded entry, holds a
different entry there, or holds fewer checkpoints.

A partner's reach lives in its store database (``store.db``, table ``audit_reach``),
updated through the store's own connection right after each entry (inside the store's
transaction when the entry is written in one), so a rollback of ``audit/`` alone is caught;
rolling back ``store.db`` and ``audit/`` together needs write access to both and is
caught only by a copy of the head kept off the node (``AuditLog.head``). A home with an
audit signing key but no store still records that it has history: its log may not be
empty.

Updates are monotonic (a record never moves back), so concurrent writers may record in
any order, outside the log's file lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedcustomer.common.sqlite import transaction
from fedcustomer.common.sqlite_wal import connect_readonly, use_wal

REACH_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS audit_reach (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL, end_offset INTEGER NOT NULL, checkpoints INTEGER NOT NULL, checkpoint_digest TEXT NOT NULL)"
)

_ENTRY_UPDATE = "UPDATE audit_reach SET seq = ?, hash = ?, end_offset = ? WHERE id = 1 AND seq < ?"
_CHECKPOINT_UPDATE = (
    "UPDATE audit_reach SET checkpoints = ?, checkpoint_digest = ? WHERE id = 1 AND checkpoints < ?"
)


@dataclass(frozen=True)
class Reach:
    """The newest entry and checkpoint a log is known to have held.

    ``hash`` is None when only the fact of history is known (at least ``seq`` entries).
    """

    seq: int
    hash: str | None
    end: int | None
    checkpoints: int = 0
    checkpoint_digest: str | None = None
    source: str = "reach record"


class ReachRecord(Protocol):
    """Where a log's reach is kept (see the module docstring)."""

    def recorded(self) -> Reach | None: ...

    def record_entry(self, seq: int, entry_hash: str, end: int) -> None: ...

    def record_checkpoint(self, number: int, digest: str) -> None: ...

    def record_entry_and_checkpoint(
        self, seq: int, entry_hash: str, end: int, number: int, digest: str
    ) -> None: ...


class SqlReach:
    """Reach kept in one row of ``audit_reach`` in a SQLite database.

    ``execute`` runs one statement; ``transaction`` (optional) returns a context that
    joins the caller's open transaction, so a store records the reach with its data.
    """

    def __init__(self, execute: Any, transaction: Any = None, *, source: str = "store.db") -> None:
        self._execute = execute
        self._transaction = transaction
        self.source = source

    def _tx(self) -> ContextManager[Any]:
        return self._transaction() if self._transaction is not None else nullcontext()

    def ensure(self, head: tuple[int, str, int], checkpoint: tuple[int, str] | None) -> None:
        """Create the table; a store that has none yet starts from the log as it is now.

        Writes only when the record is missing, so opening a store does not wait for
        another process's write transaction.
        """
        if self.recorded() is not None:
            return
        with self._tx():
            self._execute(REACH_TABLE_DDL)
            self._execute(
                "INSERT OR IGNORE INTO audit_reach VALUES (1, ?, ?, ?, ?, ?)",
                (
                    head[0],
                    head[1],
                    head[2],
                    checkpoint[0] if checkpoint else 0,
                    checkpoint[1] if checkpoint else "",
                ),
            )

    def recorded(self) -> Reach | None:
        try:
            row = self._execute(
                "SELECT seq, hash, end_offset, checkpoints, checkpoint_digest FROM audit_reach WHERE id = 1"
            ).fetchone()
        except sqlite3.OperationalError:  # no such table: a store from before reach records
            return None
        if row is None:
            return None
        return Reach(int(row[0]), str(row[1]), int(row[2]), int(row[3]), str(row[4]) or None, self.source)

    def record_entry(self, seq: int, entry_hash: str, end: int) -> None:
        with self._tx():
            self._execute(_ENTRY_UPDATE, (seq, entry_hash, end, seq))

    def record_checkpoint(self, number: int, digest: str) -> None:
        with self._tx():
            self._execute(_CHECKPOINT_UPDATE, (number, digest, number))

    def record_entry_and_checkpoint(
        self, seq: int, entry_hash: str, end: int, number: int, digest: str
    ) -> None:
        """Both records in one transaction: an entry and the checkpoint signed over it at once."""
        with self._tx():
            self._execute(_ENTRY_UPDATE, (seq, entry_hash, end, seq))
            self._execute(_CHECKPOINT_UPDATE, (number, digest, number))


class HomeReach:
    """The reach of a partner home's log, read or written through its own connection.

    Used by writers other than the store (federated rounds, analytics queries) and by
    ``audit verify --home``. Recording is best effort for these writers: a store busy
    with a long ingest is not waited for beyond a few seconds, and the log merely runs
    ahead of the record, which verification accepts.
    """

    def __init__(self, store_path: Path, signing_pub: Path) -> None:
        self.store_path = Path(store_path)
        self.signing_pub = Path(signing_pub)

    @classmethod
    def for_home(cls, home: Any) -> HomeReach:
        """The reach of a :class:`~fedcustomer.partner.home.PartnerHome`'s log."""
        return cls(home.store_path, home.keys_dir / "audit_signing.pub")

    def _connect(self, mode: str) -> sqlite3.Connection | None:
        if not self.store_path.exists():
            return None
        try:
            if mode == "ro":
                return connect_readonly(self.store_path, timeout=5)
            con = sqlite3.connect(
                f"file:{self.store_path}?mode={mode}", uri=True, timeout=5, isolation_level=None
            )
            use_wal(con)  # every reach commit fully synced, in the store's journal mode
            return con
        except sqlite3.Error:
            return None

    def recorded(self) -> Reach | None:
        con = self._connect("ro")
        if con is not None:
            try:
                reach = SqlReach(con.execute, source=self.store_path.name).recorded()
            except sqlite3.Error:
                reach = None
            finally:
                con.close()
            if reach is not None:
                return reach
        if self.signing_pub.exists():  # a key is made only when a log is opened to be written
            return Reach(
                1,
                None,
                None,
                0,
                None,
                f"this home's audit signing key ({self.signing_pub.name}, made only "
                "for a log that is written)",
            )
        return None

    def _update(self, fn: str, *args: Any) -> None:
        con = self._connect("rw")
        if con is None:
            return
        try:
            getattr(SqlReach(con.execute, lambda: transaction(con)), fn)(*args)
        except sqlite3.Error:
            pass  # best effort (see the class docstring)
        finally:
            con.close()

    def record_entry(self, seq: int, entry_hash: str, end: int) -> None:
        self._update("record_entry", seq, entry_hash, end)

    def record_checkpoint(self, number: int, digest: str) -> None:
        self._update("record_checkpoint", number, digest)

    def record_entry_and_checkpoint(
        self, seq: int, entry_hash: str, end: int, number: int, digest: str
    ) -> None:
        self._update("record_entry_and_checkpoint", seq, entry_hash, end, number, digest)


class HeldHomeReach(HomeReach):
    """A :class:`HomeReach` that keeps its write connection to ``store.db`` between updates.

    A node holds one for the rounds of a job (``clients/audit_holds.py``), so a round's reach
    commit does not open, read the schema of and close a connection each time. Every update is
    still its own durable transaction (one sync of ``store.db-wal``). The connection is reopened when
    ``store.db`` was replaced (another inode: a restore from backup, done as ``docs/GOVERNANCE.md`` says
    for a file in WAL mode) and is never used by a forked child (which opens its
    own per update, as :class:`HomeReach` does); a caller that finds it in use by another thread
    also opens its own. :meth:`close` ends it; an idle connection holds no lock on the store.
    """

    def __init__(self, store_path: Path, signing_pub: Path) -> None:
        super().__init__(store_path, signing_pub)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._con: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    def _update(self, fn: str, *args: Any) -> None:
        if self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            super()._update(fn, *args)
            return
        try:
            con = self._held()
            if con is None:
                return
            try:
                getattr(SqlReach(con.execute, lambda: transaction(con)), fn)(*args)
            except sqlite3.Error:
                self._close_now()  # best effort as for HomeReach; the next update starts afresh
        finally:
            self._lock.release()

    def _held(self) -> sqlite3.Connection | None:
        """The held connection to the store file there now; None when there is none."""
        try:
            st = os.stat(self.store_path)
        except OSError:
            self._close_now()
            return None
        identity = (st.st_dev, st.st_ino)
        if self._con is not None and identity != self._identity:
            self._close_now()  # store.db was replaced: the held connection writes to the old file
        if self._con is None:
            try:  # used by whichever thread holds the lock, one at a time
                self._con = sqlite3.connect(
                    f"file:{self.store_path}?mode=rw",
                    uri=True,
                    timeout=5,
                    isolation_level=None,
                    check_same_thread=False,
                )
                use_wal(self._con)
            except sqlite3.Error:
                return None
            self._identity = identity
        return self._con

    def close(self) -> None:
        """Close the held connection (waits for an update in flight); closing twice is harmless."""
        with self._lock:
            self._close_now()

    def _close_now(self) -> None:
        if self._pid != os.getpid():
            return  # inherited across fork: the parent's connection, neither closed nor dropped here
        con, self._con, self._identity = self._con, None, None
        if con is not None:
            con.close()
