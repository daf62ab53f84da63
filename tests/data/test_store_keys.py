"""The governed store's keys: admin actions, rotation and retirement (racing open handles too), keys on open."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.keyring import FileKeyRing, data_key_context
from tests.data.store_fixtures import (
    ADMIN,
    COMPLIANCE,
    CORE,
    MARKETING,
    RISK,
    _approve_core,
    audit_entries,
    bank,
    home,
    loaded,
    store,
    write_csv,
)
from tests.data.test_ingest import bank_frame, plant_bad_rows

__all__ = ["bank", "home", "store", "loaded"]  # fixtures


def test_keys_list_counts_customers_keys_apart_from_the_stores_own_key_check(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(12))
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    (version,) = KeyAdmin(store).versions()
    assert (version["customer_keys"], version["quarantined_rows"], version["key_check"]) == (7, 5, 1)
    assert store.count("bank") == version["customer_keys"]
    assert version["wrapped_keys"] == 13 == KeyAdmin(store).usage()[1]  # what `keys retire` checks


def test_admin_actions_need_permission_and_denials_are_logged(tmp_path, loaded, bank):
    store, frame = loaded
    with pytest.raises(AccessDenied):
        store.ingest(MARKETING, bank, write_csv(tmp_path, bank_frame(3, seed=5), "x.csv"))
    with pytest.raises(AccessDenied):
        erase_customer(store, MARKETING, frame["customer_id"].iloc[0])
    with pytest.raises(AccessDenied):
        KeyAdmin(store).rotate(RISK)
    with pytest.raises(AccessDenied):
        KeyAdmin(store).retire(RISK, 1)
    denied = audit_entries(store, decision="denied")
    assert {e.action for e in denied} >= {"ingest", "erase", "key_rotate", "key_retire"}
    assert store.count("bank") == 30 and [k["version"] for k in KeyAdmin(store).versions()] == [1]
    # The raw id of the customer someone tried to erase is not in the log.
    log_text = "".join(p.read_text() for p in store.home.audit_dir.glob("*.jsonl"))
    assert frame["customer_id"].iloc[0] not in log_text


def test_key_rotation_keeps_every_record_and_old_version_can_then_retire(loaded):
    store, _ = loaded
    rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
    StoreApprovals(store).approve(ADMIN, rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
    before = store.read(RISK, "risk_review", CORE + ["income"])
    with pytest.raises(KeyMaterialError, match="still wraps"):
        KeyAdmin(store).retire(ADMIN, 1)
    result = KeyAdmin(store).rotate(ADMIN)
    assert result["active_version"] == 2 and result["by_table"]["data_keys"] == 30
    assert KeyAdmin(store).usage() == {2: 31}  # 30 customers + the key check
    KeyAdmin(store).retire(ADMIN, 1)
    assert {k["version"]: k["status"] for k in KeyAdmin(store).versions()} == {1: "retired", 2: "active"}
    after = store.read(RISK, "risk_review", CORE + ["income"])
    pd.testing.assert_frame_equal(before, after)
    # Reopening with the rotated keyring works (the key check was re-wrapped too).
    home = store.home
    store.close()
    with PartnerStore.open(home) as reopened:
        assert reopened.count("bank") == 30
        assert {e.action for e in reopened.audit.query()} >= {"key_rotate", "key_retire"}
        assert reopened.audit.verify().ok  # every entry the store wrote chains and verifies


def test_wrong_keyring_gives_key_material_error_and_writes_nothing(tmp_path, loaded):
    store, _ = loaded
    home = store.home
    store.close()
    other = PartnerHome(tmp_path / "other")
    PartnerStore.init(other, "bank_b").close()
    before = home.store_path.read_bytes()
    saved = (home.keys_dir / "keyring.json").read_bytes()
    shutil.copy2(other.keys_dir / "keyring.json", home.keys_dir / "keyring.json")
    with pytest.raises(KeyMaterialError, match="does not belong"):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before
    (home.keys_dir / "keyring.json").write_bytes(saved)
    shutil.copy2(other.keys_dir / "pseudonym.key", home.keys_dir / "pseudonym.key")
    with pytest.raises(KeyMaterialError, match="pseudonym key"):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before
    (home.keys_dir / "pseudonym.key").unlink()
    with pytest.raises(KeyMaterialError):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before


def test_missing_keyring_gives_key_material_error(loaded):
    store, _ = loaded
    home = store.home
    store.close()
    before = home.store_path.read_bytes()
    (home.keys_dir / "keyring.json").unlink()
    with pytest.raises(KeyMaterialError):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before


def test_open_without_store_and_double_init(tmp_path, store):
    with pytest.raises(ConfigError, match="fedcustomer init"):
        PartnerStore.open(PartnerHome(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="already"):
        PartnerStore.init(store.home, "again")
    with pytest.raises(AccessDenied):
        PartnerStore.init(PartnerHome(tmp_path / "h2"), "x", actor=MARKETING)
    assert FileKeyRing.open(store.home.keys_dir).active_version() == 1


def test_handle_opened_before_rotate_and_retire_wraps_new_keys_under_the_active_version(
    tmp_path, loaded, bank
):
    store, _ = loaded
    other = PartnerStore.open(store.home)  # like a second process: its own keyring and connection
    try:
        KeyAdmin(other).rotate(ADMIN)
        KeyAdmin(other).retire(ADMIN, 1)
    finally:
        other.close()
    newcomers = bank_frame(50).iloc[30:].reset_index(drop=True)  # 20 customers the store has never seen
    assert store.ingest(ADMIN, bank, write_csv(tmp_path, newcomers, "new.csv")).inserted == 20
    assert KeyAdmin(store).usage() == {2: 51}
    _approve_core(store)
    got = store.read(RISK, "risk_review", CORE)
    newcomers.index = store.pseudonymizer.pseudonyms(newcomers["customer_id"])
    for col in CORE:
        assert (got.loc[newcomers.index, col] == newcomers[col].astype(str)).all(), col


def test_cli_rotate_and_retire_in_another_process_do_not_strand_an_open_handle(tmp_path, loaded, bank):
    import os
    import subprocess
    import sys

    store, _ = loaded
    home = str(store.home.root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for step in ("KeyAdmin(s).rotate(a)", "KeyAdmin(s).retire(a, 1)"):
        code = (
            "from fedcustomer.data.store import PartnerStore; from fedcustomer.data.key_admin import KeyAdmin; "
            "from fedcustomer.partner.home import PartnerHome; from fedcustomer.privacy.access.policy import Actor; "
            f"a = Actor('alice', 'partner_admin'); s = PartnerStore.open(PartnerHome({home!r})); {step}; s.close()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=None
        )
        assert done.returncode == 0, done.stderr
    newcomers = bank_frame(50).iloc[30:].reset_index(drop=True)
    store.ingest(ADMIN, bank, write_csv(tmp_path, newcomers, "new.csv"))
    _approve_core(store)
    got = store.read(RISK, "risk_review", ["national_id"])
    newcomers.index = store.pseudonymizer.pseudonyms(newcomers["customer_id"])
    assert (got.loc[newcomers.index, "national_id"] == newcomers["national_id"]).all()


def test_retire_cannot_slip_between_a_writers_wrap_and_its_commit(loaded):
    store, _ = loaded
    other = PartnerStore.open(store.home)
    try:
        KeyAdmin(other).rotate(ADMIN)
        # A writer in another handle is mid-transaction, having wrapped a key under version 1
        # (what a stale writer did before the fix), not yet committed.
        context = data_key_context("bank", "p" * 64)
        old = FileKeyRing.open(store.home.keys_dir)
        old._active = 1  # the stale in-memory state of a handle opened before the rotation
        old._keks[1].status = "active"
        wrapped = old.wrap(b"k" * 32, context)
        assert wrapped.kek_version == 1
        with store.backend.transaction():
            store.backend.execute(
                "INSERT INTO data_keys VALUES (?, ?, ?, ?)", ("bank", "p" * 64, 1, wrapped.blob)
            )
            other.backend.execute("PRAGMA busy_timeout = 0")  # fail at once instead of waiting for the lock
            with pytest.raises(ConfigError, match="busy"):
                KeyAdmin(other).retire(ADMIN, 1)
        # Once the writer committed, the retirement sees its key and is refused.
        with pytest.raises(KeyMaterialError, match="still wraps 1"):
            KeyAdmin(other).retire(ADMIN, 1)
        assert {k.version: k.status for k in FileKeyRing.open(store.home.keys_dir).versions()}[
            1
        ] == "available"
    finally:
        other.close()


def test_keyring_refuses_to_wrap_under_a_version_it_no_longer_holds_active(tmp_path):
    ring = FileKeyRing.create(tmp_path / "keys")
    stale = FileKeyRing.open(tmp_path / "keys")
    ring.rotate()
    ring.retire(1)
    stale.refresh()
    assert stale.wrap(b"k" * 32, b"ctx").kek_version == 2


def test_store_of_the_old_clear_layout_is_refused_with_what_to_do(store):
    home = store.home
    store.backend.execute("UPDATE meta SET value = 'fedcustomer.store/1' WHERE key = 'format'")
    store.close()
    with pytest.raises(ConfigError, match="older version"):
        PartnerStore.open(home)
