"""store.db in WAL mode: new and older stores, read-only readers, and erasure leaving nothing in -wal."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from fedcustomer.data import erasure
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_customers import CustomerSets
from fedcustomer.data.store_db import UNSETTLED_ERASURE
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.audit.reach import HomeReach, SqlReach
from tests.data.store_fixtures import (
    ADMIN,
    TRAINING,
    audit_entries,
    bank,
    home,
    home_bytes,
    logical_dump,
    store,
    write_csv,
)
from tests.data.test_ingest import bank_frame

__all__ = ["bank", "home", "store"]  # fixtures


def _mode(path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


def test_a_new_store_is_in_wal_mode_with_full_syncs(store):
    assert _mode(store.home.store_path) == "wal" and store.backend.wal
    assert store.backend.scalar("PRAGMA synchronous") == 2


def test_a_store_in_rollback_mode_switches_at_its_next_open(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(8)))
    home = store.home
    store.close()
    con = sqlite3.connect(home.store_path)
    con.execute("PRAGMA journal_mode = DELETE")  # as a store made before WAL was
    con.close()
    before = logical_dump(home)
    assert _mode(home.store_path) == "delete"
    with PartnerStore.open(home) as again:
        assert again.backend.wal and again.count("bank") == 8
    assert _mode(home.store_path) == "wal"
    assert logical_dump(home) == before


def test_read_only_readers_see_commits_still_in_the_log(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(8)))
    store.read(TRAINING, "training", ["age"])
    log = store.home.store_path.with_name("store.db-wal")
    assert log.stat().st_size > 0  # the store is open: its commits are not all checkpointed
    own = SqlReach(store.backend.execute).recorded()
    assert HomeReach.for_home(store.home).recorded() == own
    read = audit_entries(store)[-1]
    sets = CustomerSets.for_store_file(store.home.store_path)
    pseudonym = store.backend.scalar("SELECT pseudonym FROM c_bank LIMIT 1")
    assert sets is not None and sets.reached(read.details["customers"], pseudonym) is True


def _victim(tmp_path, store, bank):
    frame = bank_frame(12)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    victim = frame.at[4, "customer_id"]
    p = store.pseudonymizer.pseudonym(victim)
    wrapped = bytes(store.backend.scalar("SELECT blob FROM data_keys WHERE pseudonym = ?", (p,)))
    sealed = bytes(store.backend.scalar("SELECT sealed FROM c_bank WHERE pseudonym = ?", (p,)))
    assert wrapped in home_bytes(store) and sealed in home_bytes(store)
    return victim, wrapped, sealed


def test_erasure_leaves_the_key_and_row_in_none_of_the_three_files(tmp_path, store, bank):
    victim, wrapped, sealed = _victim(tmp_path, store, bank)
    assert wrapped in store.home.store_path.with_name("store.db-wal").read_bytes()  # not yet checkpointed
    result = erase_customer(store, ADMIN, victim)
    assert result["wal_cleared"] is True
    raw = home_bytes(store)  # store.db, store.db-wal and store.db-shm, raw
    assert wrapped not in raw and sealed not in raw
    assert store.backend.scalar("SELECT 1 FROM meta WHERE key = ?", (UNSETTLED_ERASURE,)) is None


def test_an_erasure_whose_log_was_not_cut_is_settled_at_the_next_open(tmp_path, store, bank, monkeypatch):
    victim, wrapped, sealed = _victim(tmp_path, store, bank)
    monkeypatch.setattr(erasure, "settle_erasures", lambda backend: False)  # a crash right after COMMIT
    assert erase_customer(store, ADMIN, victim)["wal_cleared"] is False
    assert store.backend.scalar("SELECT 1 FROM meta WHERE key = ?", (UNSETTLED_ERASURE,)) == 1
    assert wrapped in home_bytes(store)  # the page as it was before the erasure, in -wal
    home = store.home
    store.close()
    with PartnerStore.open(home) as again:
        raw = home_bytes(again)
        assert wrapped not in raw and sealed not in raw
        assert again.backend.scalar("SELECT 1 FROM meta WHERE key = ?", (UNSETTLED_ERASURE,)) is None
        assert again.count("bank") == 11


def test_a_new_store_refuses_another_stores_log_left_behind(tmp_path, store):
    home = store.home
    store.close()
    log = home.store_path.with_name("store.db-wal")
    log.write_bytes(b"left by a store.db deleted while open")
    home.store_path.unlink()
    shutil.rmtree(home.keys_dir)
    with pytest.raises(ConfigError, match="store.db-wal|-wal"):
        PartnerStore.init(home, "bank_a")
    assert not home.store_path.exists() and not home.keys_dir.exists()  # nothing made
    assert log.read_bytes().startswith(b"left by")
