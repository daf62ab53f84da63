"""What a reader compares to learn that a dataset's rows may have changed, read cheaply every round.

A node keeps its decrypted training matrix for a job and compares the store's change stamp
before every round. The stamp is a handful of counters (never customer data), read on a
read-only connection that stays open between rounds: opening one costs more than the query
(SQLite parses the store's schema on a connection's first statement), so each process keeps one
per store file, and opens it afresh

- when the path names another file (a store replaced by rename or restored from a copy: the
  file's device and inode are compared on every call, taken *before* the open, so a file
  replaced during the open is caught by the next call);
- in a forked child (SQLite connections must not cross ``fork``; the parent's is left alone);
- after any SQLite error.

Between rounds another connection commits to the file (the round's audit reach), which empties
this one's page cache; it reads the pages again through a memory map (``MMAP_BYTES``).

The connection holds no lock between calls: every query is stepped to its end, which ends its
read transaction, so writers (ingest, erasure) never wait for it, and SQLite reloads what another
connection committed at the next query. At most ``MAX_HELD`` files are held (least recently
used closed first); :func:`close_all` closes them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.common.sqlite_wal import connect_readonly
from fedcustomer.data.store_db import SqliteBackend, table_name

MAX_HELD = 32
# Pages read through a read-only memory map: a commit by another connection (each round's audit
# reach) empties a connection's page cache, and reading the counted pages again by mapped memory
# costs a third of reading them by system calls. SQLite remaps when the file's size changes.
MMAP_BYTES = 64 * 2**20


@dataclass
class _Held:
    con: sqlite3.Connection
    file_id: tuple[int, int]
    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)


_HELD: OrderedDict[str, _Held] = OrderedDict()
_INHERITED: list[_Held] = []  # a forked parent's connections: kept, never used or closed here
_LOCK = threading.Lock()


def _stamp_sql(dataset: str) -> str:
    return (
        "SELECT (SELECT COALESCE(MAX(id), 0) FROM ingests), (SELECT COUNT(*) FROM ingests),"
        " (SELECT COUNT(*) FROM erasures), (SELECT COUNT(*) FROM data_keys WHERE dataset = ?),"
        " (SELECT updated_at FROM datasets WHERE name = ?),"
        f" (SELECT COUNT(*) FROM {SqliteBackend.quote(table_name(dataset))})"
    )


def change_stamp(path: Path, dataset: str) -> tuple[Any, ...] | None:
    """The counters that move whenever what a read of ``dataset`` returns may have changed.

    Every ingest that writes adds an ``ingests`` row; an erasure adds to ``erasures`` and deletes
    the customer's data keys and rows; a schema change moves ``datasets.updated_at``; the data keys
    and rows are counted as well. None when the database cannot say (the caller then reads again).
    """
    key = os.path.abspath(path)
    try:
        st = os.stat(key)
    except OSError:
        _drop(key)
        return None
    file_id, pid = (st.st_dev, st.st_ino), os.getpid()
    with _LOCK:
        held = _HELD.get(key)
        if held is not None and held.pid != pid:
            _INHERITED.append(_HELD.pop(key))
            held = None
        if held is not None and held.file_id != file_id:
            _close(_HELD.pop(key))
            held = None
        if held is None:
            try:
                con = connect_readonly(Path(key), timeout=30)
                con.execute(f"PRAGMA mmap_size = {MMAP_BYTES}").fetchall()
            except sqlite3.Error:
                return None
            held = _HELD[key] = _Held(con, file_id, pid)
            while len(_HELD) > MAX_HELD:
                _close(_HELD.popitem(last=False)[1])
        _HELD.move_to_end(key)
    try:
        with held.lock:
            rows = held.con.execute(
                _stamp_sql(dataset), (dataset, dataset)
            ).fetchall()  # to its end: no lock kept
    except sqlite3.Error:
        _drop(key, held)
        return None
    return tuple(rows[0]) if rows else None


def close_all() -> None:
    """Close every connection this process holds (the next stamp opens afresh)."""
    with _LOCK:
        while _HELD:
            _close(_HELD.popitem()[1])


def held_count() -> int:
    with _LOCK:
        return len(_HELD)


def _drop(key: str, held: _Held | None = None) -> None:
    with _LOCK:
        current = _HELD.get(key)
        if current is not None and (held is None or current is held) and current.pid == os.getpid():
            _close(_HELD.pop(key))


def _close(held: _Held) -> None:
    with held.lock:
        try:
            held.con.close()
        except sqlite3.Error:
            pass
