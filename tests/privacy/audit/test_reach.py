"""A held reach connection: one connection for a job's updates, each still its own committed transaction."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from fedcustomer.common.sqlite_wal import WAL_SUFFIXES, backup_database
from fedcustomer.privacy.audit import reach as reach_module
from fedcustomer.privacy.audit.reach import REACH_TABLE_DDL, HeldHomeReach


def _store(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute(REACH_TABLE_DDL)
    con.execute("INSERT INTO audit_reach VALUES (1, 0, '', 0, 0, '')")
    con.commit()
    con.close()
    return path


def _seq(path: Path) -> int:
    with sqlite3.connect(path) as con:
        return int(con.execute("SELECT seq FROM audit_reach").fetchone()[0])


@pytest.fixture
def connects(monkeypatch) -> list[str]:
    made: list[str] = []
    real = sqlite3.connect

    def counting(*args, **kwargs):
        if str(args[0]).startswith("file:"):  # the reach's own connections, not this test's checks
            made.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(reach_module.sqlite3, "connect", counting)
    return made


def test_updates_share_one_connection_and_each_is_committed(tmp_path: Path, connects) -> None:
    store = _store(tmp_path / "store.db")
    held = HeldHomeReach(store, tmp_path / "audit_signing.pub")
    for seq in (1, 2, 3):
        held.record_entry(seq, f"h{seq}", 10 * seq)
        assert _seq(store) == seq  # visible to another connection at once: committed
    assert len(connects) == 1
    held.close()
    held.record_entry(4, "h4", 40)  # closed: the next update opens it again
    assert _seq(store) == 4 and len(connects) == 2
    held.close()


def test_a_replaced_store_gets_the_next_update(tmp_path: Path) -> None:
    store = _store(tmp_path / "store.db")
    held = HeldHomeReach(store, tmp_path / "audit_signing.pub")
    held.record_entry(1, "h1", 10)
    backup = tmp_path / "backup.db"
    backup_database(store, backup)
    for suffix in WAL_SUFFIXES:  # a file swap: the live file's log must not meet the older copy
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    os.replace(backup, store)  # restored from a copy: a new inode at the same path
    held.record_entry(2, "h2", 20)
    assert _seq(store) == 2
    held.close()


def test_another_thread_and_a_failed_update_are_handled(tmp_path: Path, connects) -> None:
    store = _store(tmp_path / "store.db")
    held = HeldHomeReach(store, tmp_path / "audit_signing.pub")
    held.record_entry(1, "h1", 10)
    worker = threading.Thread(target=held.record_entry, args=(2, "h2", 20))
    worker.start()
    worker.join()
    assert _seq(store) == 2 and len(connects) == 1  # the held connection, from another thread
    with sqlite3.connect(store) as con:
        con.execute("ALTER TABLE audit_reach RENAME TO moved")
    held.record_entry(3, "h3", 30)  # best effort, as every home reach: no table, nothing recorded
    with sqlite3.connect(store) as con:
        con.execute("ALTER TABLE moved RENAME TO audit_reach")
    held.record_entry(4, "h4", 40)  # the failed update closed the connection; this one reopens it
    assert _seq(store) == 4 and len(connects) == 2
    held.close()


def test_a_forked_child_uses_a_connection_of_its_own(tmp_path: Path) -> None:
    store = _store(tmp_path / "store.db")
    held = HeldHomeReach(store, tmp_path / "audit_signing.pub")
    held.record_entry(1, "h1", 10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            held.record_entry(2, "h2", 20)
            held.close()  # never the parent's connection
            code = 0 if held._con is not None else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert _seq(store) == 2
    held.record_entry(3, "h3", 30)  # the parent's connection still works
    assert _seq(store) == 3
    held.close()
