"""The change stamp a node compares every round: cheap (an index, a held connection) and never stale."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.common.sqlite_wal import WAL_SUFFIXES, backup_database
from fedcustomer.data import change_stamps
from fedcustomer.data.change_stamps import change_stamp
from fedcustomer.data.erasure import erase_customer
from tests.data.store_fixtures import ADMIN, bank, home, store, write_csv
from tests.data.test_ingest import bank_frame

__all__ = ["bank", "home", "store"]  # fixtures


@pytest.fixture(autouse=True)
def _fresh_connections():
    change_stamps.close_all()
    yield
    change_stamps.close_all()


def _plan(store) -> str:
    con = sqlite3.connect(store.home.store_path)
    try:
        rows = con.execute('EXPLAIN QUERY PLAN SELECT COUNT(*) FROM "c_bank"').fetchall()
    finally:
        con.close()
    return " ".join(str(r[-1]) for r in rows)


def test_rows_are_counted_from_the_ingest_index_and_a_store_made_before_it_gets_it_at_its_next_ingest(
    tmp_path, store, bank
):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(20)))
    assert "COVERING INDEX" in _plan(store)
    store.backend.execute('DROP INDEX "c_bank:ingest"')  # as a store made by an earlier version
    assert "COVERING INDEX" not in _plan(store)
    before = change_stamp(store.home.store_path, "bank")
    assert before is not None and before[-1] == 20  # the same count, without the index
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(25), "more.csv"))
    assert "COVERING INDEX" in _plan(store)
    assert change_stamp(store.home.store_path, "bank")[-1] == store.count("bank") == 25


def test_the_stamp_moves_with_an_ingest_and_an_erasure_and_holds_one_connection(tmp_path, store, bank):
    frame = bank_frame(20)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    path = store.home.store_path
    first = change_stamp(path, "bank")
    assert change_stamp(path, "bank") == first and change_stamps.held_count() == 1
    erase_customer(store, ADMIN, frame.at[3, "customer_id"])
    erased = change_stamp(path, "bank")
    assert erased != first and erased[-1] == 19
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(30), "more.csv"))
    assert change_stamp(path, "bank") not in (first, erased)
    assert change_stamps.held_count() == 1


def test_a_store_replaced_by_an_older_copy_is_seen(tmp_path, store, bank):
    frame = bank_frame(20)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    path = store.home.store_path
    backup = tmp_path / "backup.db"
    backup_database(path, backup)  # store.db is in WAL mode: the file alone may lack recent commits
    first = change_stamp(path, "bank")
    erase_customer(store, ADMIN, frame.at[3, "customer_id"])
    assert change_stamp(path, "bank")[-1] == 19  # read on the connection held on the live file
    store.close()
    for suffix in WAL_SUFFIXES:  # the live file's log must not be applied to the older copy
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(backup, path)  # another file under the same name
    assert change_stamp(path, "bank") == first


def test_a_held_connection_keeps_no_lock_between_stamps(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(10)))
    assert change_stamp(store.home.store_path, "bank") is not None
    writer = sqlite3.connect(store.home.store_path, timeout=0)  # fails at once if any lock is held
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("ROLLBACK")
    finally:
        writer.close()


def test_a_forked_child_opens_its_own_connection(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(10)))
    path = store.home.store_path
    expected = change_stamp(path, "bank")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its stamp comes from a connection of its own
        ok = change_stamp(path, "bank") == expected and change_stamps._HELD[str(path)].pid == os.getpid()
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert change_stamp(path, "bank") == expected and change_stamps._HELD[str(path)].pid == os.getpid()


def test_no_stamp_without_the_file_or_the_dataset(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(10)))
    assert change_stamp(store.home.store_path, "no_such_dataset") is None
    assert change_stamps.held_count() == 0  # dropped after the error
    assert change_stamp(tmp_path / "missing.db", "bank") is None


def test_at_most_max_held_connections(tmp_path, store, bank, monkeypatch):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(10)))
    monkeypatch.setattr(change_stamps, "MAX_HELD", 2)
    copies = []
    for i in range(4):
        copies.append(tmp_path / f"copy-{i}.db")
        backup_database(store.home.store_path, copies[-1])
        assert change_stamp(copies[-1], "bank")[-1] == 10
    assert change_stamps.held_count() == 2
    assert list(change_stamps._HELD) == [str(c) for c in copies[2:]]
