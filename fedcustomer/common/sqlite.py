"""One way to run a SQLite write transaction, for every database the project keeps.

Writers take the write lock up front (``BEGIN IMMEDIATE``), so two processes updating
the same database queue behind SQLite's busy timeout instead of failing half-way with
"database is locked" on their first write; any exception, ``KeyboardInterrupt``
included, rolls back, so a failed command leaves the database as it was.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0


def connect(path: str | os.PathLike[str], *, timeout: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in autocommit mode: transactions are only the ones :func:`transaction` opens."""
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception and re-raise it.

    ``conn`` must be in autocommit mode (``isolation_level=None``, as :func:`connect`
    makes it), so Python's sqlite3 opens no transaction of its own.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
