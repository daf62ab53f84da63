"""A budget ledger's SQLite file: its schema, how a new one is made whole, and its write-ahead log's hold.

Why a module of its own: :mod:`fedcustomer.privacy.dp.ledger` is about charges and what they
spend; this is about the file that keeps them durable (creation with few syncs, schema upgrades
of ledgers written by earlier versions, the idle connection that keeps the WAL between charges).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedcustomer.common.files import fsync_dir, write_all

BUSY_TIMEOUT_S = 120.0  # how long SQLite waits for a writer that bypasses the flock before giving up

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_key TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    time TEXT NOT NULL,
    family TEXT NOT NULL CHECK (family IN ('gaussian_rdp', 'approx_dp')),
    mechanism TEXT NOT NULL,
    run_id TEXT,
    round INTEGER,
    query_id TEXT,
    noise_multiplier REAL,
    sample_rate REAL,
    steps INTEGER,
    epsilon REAL,
    delta REAL,
    epsilon_total REAL NOT NULL,
    delta_total REAL NOT NULL,
    epsilon_target REAL NOT NULL,
    delta_target REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    accountant TEXT NOT NULL DEFAULT 'rdp',
    pld_interval REAL
);
CREATE INDEX IF NOT EXISTS charges_dataset ON charges(dataset, seq);
CREATE TABLE IF NOT EXISTS kept_results (
    charge_key TEXT PRIMARY KEY REFERENCES charges(charge_key),
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_key TEXT NOT NULL,
    dataset TEXT NOT NULL,
    time TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon_would_be REAL NOT NULL,
    epsilon_target REAL NOT NULL,
    reason TEXT NOT NULL,
    accountant TEXT NOT NULL DEFAULT 'rdp'
);
"""
#: Tables and indexes a complete ledger has (an earlier version's file gets the missing ones).
NAMES = frozenset({"charges", "refusals", "charges_dataset", "kept_results"})
# Columns later versions added, with what rows written before them mean (every such row was RDP).
ADDED_COLUMNS = {
    "charges": (("accountant", "TEXT NOT NULL DEFAULT 'rdp'"), ("pld_interval", "REAL")),
    "refusals": (("accountant", "TEXT NOT NULL DEFAULT 'rdp'"),),
}


def missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    out = []
    for table, columns in ADDED_COLUMNS.items():
        have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
        out += [(table, name, decl) for name, decl in columns if name not in have]
    return out


def create_whole(path: Path, lock_path: Path) -> bool:
    """A new ledger made whole: WAL mode and tables written to a temporary file, synced once,
    then renamed into place and its folder synced (two syncs, against about nine for the
    same ledger built in place: mode switch, schema commit, checkpoint at close). Under the
    ledger's lock, so two processes never both create it; a crash leaves no ledger, only the
    temporary file, which the next creator replaces. True when this call made the ledger
    (it then holds exactly :data:`SCHEMA`), False when another process had made it.

    SQLite writes the same bytes for every new ledger (no path, time or random value is
    in an empty database file), so the first one a process makes on a file system is kept
    as that process's template and later ones are those bytes written out, without
    building the schema again (:func:`_empty_ledger`).
    """
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if path.exists():
            return False  # another process made it while this one waited
        tmp = path.with_name(path.name + ".new")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        try:
            _write_empty_ledger(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return True
    finally:
        os.close(lock_fd)


# Owner and group only, as the audit log: the ledger keeps each released update and what it cost
# (SQLite gives its -wal and -shm files the same mode).
LEDGER_MODE = 0o640

# An empty ledger's bytes per (file system, SQLite version, schema), made once per process.
_TEMPLATES: dict[tuple[int, str, str], bytes] = {}
_TEMPLATES_LOCK = threading.Lock()


def _write_empty_ledger(tmp: Path) -> None:
    """An empty ledger at ``tmp`` (not yet synced): the process's template for this file system,
    or, the first time, built by SQLite and kept as the template when it is a lone file."""
    key = (os.stat(tmp.parent).st_dev, sqlite3.sqlite_version, SCHEMA)
    template = _TEMPLATES.get(key)
    if template is not None:
        write_all(tmp, template, os.O_WRONLY | os.O_CREAT | os.O_EXCL, LEDGER_MODE)
        return
    os.close(
        os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, LEDGER_MODE)
    )  # SQLite keeps it
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # not yet the ledger: synced whole by the caller
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()  # the last connection folds the log into the file and removes it
    if not any(Path(f"{tmp}{end}").exists() for end in ("-wal", "-shm", "-journal")):
        with _TEMPLATES_LOCK:
            _TEMPLATES.setdefault(key, tmp.read_bytes())


class WalHold:
    """One connection that keeps a ledger's write-ahead log between transactions, lent to its ledger.

    SQLite checkpoints the WAL into ``ledger.db`` and deletes it whenever the last connection
    closes; with a connection per call (as the ledger opens them) every charge paid for a
    checkpoint (three more syncs) on top of its own durable commit. A node holds one of these
    for the rounds of a job, so a charge costs its commit alone. The ledger that made the hold
    also borrows its connection for its reads and charges (:meth:`borrow`): a connection opened
    anew syncs the ledger's folder once more with its first commit (SQLite does so for every
    connection that opens the log), and opening and closing one per call is work of its own.
    Durability is the same (every commit syncs the WAL, ``synchronous=FULL``; the folder was
    synced when the log was first committed to); closing the hold, the last connection,
    checkpoints and leaves the ledger at rest as before. A hold inherited across ``fork`` is
    left alone by the child, which opens connections of its own.
    """

    def __init__(self, path: str | Path) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one borrower at a time; others open a fresh connection
        self._schema_ready = False  # a ledger found this file's tables complete (see schema_ready)
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # maps the WAL index, held from now on; fetchall ends the statement, so no read stays open
            self._conn.execute("SELECT COUNT(*) FROM charges").fetchall()
        except BaseException:
            self.close()
            raise

    @property
    def schema_ready(self) -> bool:
        """Whether a ledger lent this hold found the file's tables and columns complete.

        Tables and columns are only ever added, so a ledger made on the same open hold later in
        the job (a node makes one each round) need not check again. False once the hold is
        closed and in a forked child, which check for themselves."""
        return self._schema_ready and self._conn is not None and self._pid == os.getpid()

    def mark_schema_ready(self) -> None:
        """Record that a ledger lent this hold found its schema complete."""
        self._schema_ready = True

    @contextmanager
    def borrow(self) -> Iterator[sqlite3.Connection | None]:
        """The held connection for one call (reads, or one transaction), or None when it is closed,
        was inherited across a fork, or is lent already (a nested or concurrent call opens its own).

        A borrower that leaves a transaction open (an error during COMMIT or ROLLBACK) has it rolled
        back here; if even that fails the hold is closed, so no later caller inherits a half-done
        transaction or its write lock.
        """
        if self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            yield None
            return
        conn = self._conn
        try:
            if conn is not None:
                conn.row_factory = sqlite3.Row
            yield conn
        finally:
            try:
                if conn is not None and self._conn is conn and conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._close_now()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Close the held connection (waits for a borrower to finish); closing twice is harmless."""
        with self._lock:
            self._close_now()

    def _close_now(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            conn.close()


def put_to_rest(path: str | Path) -> None:
    """Fold a write-ahead log left by holders that ended without closing (e.g. simulation workers
    the engine killed) into ``ledger.db``: the last connection to close checkpoints it. The log is
    durable as it is; this only returns the file to rest. A no-op while another process holds it.
    """
    if Path(path).exists():
        WalHold(path).close()
