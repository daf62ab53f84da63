"""The one SQLite transaction helper: commit on success, roll back on any exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.common.sqlite import connect, transaction


def _db(tmp_path: Path):
    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    return conn


def test_commits_when_the_block_succeeds(tmp_path: Path) -> None:
    conn = _db(tmp_path)
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    other = connect(tmp_path / "t.db")
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_rolls_back_on_any_exception_and_reraises_it(tmp_path: Path, exc: BaseException) -> None:
    conn = _db(tmp_path)
    with pytest.raises(type(exc)), transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        raise exc
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_takes_the_write_lock_up_front(tmp_path: Path) -> None:
    conn, other = _db(tmp_path), connect(tmp_path / "t.db", timeout=0.05)
    with transaction(conn):
        with pytest.raises(Exception, match="locked"), transaction(other):
            pass
