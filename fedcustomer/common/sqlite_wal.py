"""A SQLite database in write-ahead-log mode: switching to it, reading it, emptying and copying it.

Why WAL: under a rollback journal every commit syncs the journal twice, its folder and the
database (four syncs); in WAL mode with ``synchronous=FULL`` a commit syncs the ``-wal`` file
once and stays as durable (a committed transaction survives SIGKILL and power loss). SQLite
itself syncs the folder the first time a connection syncs a ``-wal`` it may have created.

What WAL changes for everyone else, and what this module gives them:

- commits sit in ``NAME-wal`` until a checkpoint copies them into ``NAME``: the file alone is not
  the database. Copy it with :func:`backup_database` (SQLite's backup API), never the file alone;
  never put an older ``NAME`` back beside a newer ``NAME-wal``;
- a read-only connection needs ``NAME-shm`` (and ``NAME-wal``): where neither exists and the
  reader may not create them (a folder it cannot write, e.g. a mounted copy), :func:`connect_readonly`
  opens the file as immutable, which is exact because nothing is left to checkpoint;
- old versions of changed pages stay in ``NAME-wal`` until it is rewritten: after deleting
  something that must not survive, :func:`truncate_wal` copies every frame into the database and
  cuts the ``-wal`` file to zero bytes.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

#: The files SQLite keeps beside a database in WAL mode.
WAL_SUFFIXES = ("-wal", "-shm")
#: Bytes a ``-wal`` file is cut back to after a checkpoint (a large ingest's log is not kept at its size).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def use_wal(con: sqlite3.Connection) -> bool:
    """Put the database of ``con`` in WAL mode (once per file, it persists), every commit fully synced.

    Returns whether the file is in WAL mode now. Switching needs the file to itself for an
    instant; while another process holds a transaction the switch is left to the next opener
    (the rollback journal keeps every guarantee meanwhile).
    """
    con.execute("PRAGMA synchronous = FULL")
    con.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}").fetchall()
    mode = str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if mode == "wal":
        return True
    try:
        mode = str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    except sqlite3.OperationalError:  # locked by another process: stay as is for now
        return False
    return mode == "wal"


def connect_readonly(path: Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """A read-only connection to ``path`` whichever its journal mode, its first read already checked.

    A WAL database at rest (no ``-wal`` file: every commit checkpointed) in a folder this process
    cannot write cannot be opened ``mode=ro`` (SQLite must create ``-shm``); it is then opened
    immutable, which reads exactly what the file holds. Any other failure is raised.
    """
    uri = f"file:{path}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        at_rest = not Path(f"{path}-wal").exists()
        if (
            "readonly" not in str(exc).replace(" ", "")
            or not at_rest
            or os.access(Path(path).parent, os.W_OK)
        ):
            raise
    return sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=timeout, check_same_thread=False)


def truncate_wal(con: sqlite3.Connection) -> bool:
    """Copy every committed frame into the database and cut ``-wal`` to zero bytes.

    True when done (also when the file is not in WAL mode: nothing to cut); False when another
    connection still reads an older snapshot past SQLite's busy timeout (the frames stay for now).
    """
    row = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return row is None or int(row[0]) == 0


def backup_database(source: Path, target: Path) -> None:
    """A consistent copy of ``source`` (with what its ``-wal`` holds) as ``target``, synced.

    Uses SQLite's backup API from a read-only connection, so the copy is one committed state
    even while writers commit. ``target`` must not exist; the copy keeps the source's journal mode.
    """
    target = Path(target)
    if target.exists() or any(Path(f"{target}{s}").exists() for s in WAL_SUFFIXES):
        raise FileExistsError(f"{target} (or its -wal/-shm) already exists; back up to a new name")
    src = connect_readonly(Path(source))
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
