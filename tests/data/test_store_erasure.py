"""Erasing a customer from the governed store, and from backups taken before the erasure."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcustomer.common.sqlite_wal import backup_database
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.errors import IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import WrappedKey, data_key_context
from tests.data.store_fixtures import ADMIN, audit_entries, bank, home, home_bytes, store, write_csv
from tests.data.test_ingest import bank_frame, plant_bad_rows

__all__ = ["bank", "home", "store"]  # fixtures


def test_erased_customer_is_unrecoverable(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(10))
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    victim = frame.at[6, "customer_id"]
    quarantined_victim = frame.at[1, "customer_id"]  # also has a quarantined row
    p = store.pseudonymizer.pseudonym(victim)
    tokens = store.backend.fetchone('SELECT national_id, full_name FROM "c_bank" WHERE pseudonym = ?', (p,))
    wrapped = store.backend.fetchone("SELECT kek_version, blob FROM data_keys WHERE pseudonym = ?", (p,))
    result = erase_customer(store, ADMIN, victim)
    assert result["found"] and result["datasets"] == {"bank": 1} and result["data_keys"] == 1
    assert erase_customer(store, ADMIN, quarantined_victim)["quarantine"] == 1
    assert store.count("bank") == 4
    assert store.backend.fetchone('SELECT 1 FROM "c_bank" WHERE pseudonym = ?', (p,)) is None
    assert store.backend.fetchone("SELECT 1 FROM data_keys WHERE pseudonym = ?", (p,)) is None
    # No remaining data key decrypts the saved ciphertext, and the wrapped key is gone from the file.
    cipher = FieldCipher("bank")
    for ds, q, v, blob in store.backend.fetchall(
        "SELECT dataset, pseudonym, kek_version, blob FROM data_keys"
    ):
        key = store.keyring.unwrap(WrappedKey(v, bytes(blob)), data_key_context(ds, q))
        with pytest.raises(IntegrityError):
            cipher.decrypt(key, "national_id", p, bytes(tokens[0]))
    raw = home_bytes(store)
    assert bytes(wrapped[1]) not in raw and bytes(tokens[0]) not in raw
    entry = audit_entries(store, action="erase")[0]
    assert entry.pseudonyms == (p,) and victim not in str(entry.to_dict())
    # A later file cannot bring the erased customer back.
    again = store.ingest(ADMIN, bank, write_csv(tmp_path, frame.iloc[[6]].assign(income=5.0), "again.csv"))
    assert again.suppressed == 1 and store.count("bank") == 4


def _rows_naming(db, pseudonym):
    """Every row of every table of a SQLite file in which a column equals ``pseudonym``."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        found = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cur = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall() if pseudonym in r]
            if rows:
                found[table] = rows
        return found
    finally:
        con.close()


def test_backup_taken_before_erasure_yields_nothing_of_the_customer_after_rotate_and_retire(
    tmp_path, store, bank
):
    frame = bank_frame(12)
    dup = frame.iloc[[3]].assign(updated_at="2019-01-01T00:00:00Z", income=1.0)  # also leaves a merge record
    store.ingest(ADMIN, bank, write_csv(tmp_path, pd.concat([frame, dup], ignore_index=True)))
    victim = frame.iloc[3]
    p = store.pseudonymizer.pseudonym(victim["customer_id"])
    backup = tmp_path / "backup.db"
    backup_database(store.home.store_path, backup)  # an operator's backup, taken before the erasure
    erase_customer(store, ADMIN, victim["customer_id"])
    KeyAdmin(store).rotate(ADMIN)
    KeyAdmin(store).retire(ADMIN, 1)
    # Found by the keyed pseudonym (the pseudonym key remains), the customer's rows in the
    # backup hold nothing but ciphertext, numbers that count ingests, and labels.
    found = _rows_naming(backup, p)
    assert set(found) >= {"c_bank", "data_keys", "merges"}
    labels = {p, "bank", "duplicate_in_file", "kept_stored", "replaced_stored"}
    for table, rows in found.items():
        for row in rows:
            for column, value in row.items():
                ok = (
                    isinstance(value, bytes)
                    or value in labels
                    or (column in ("ingest_id", "kek_version", "id") and isinstance(value, int))
                )
                assert ok, (table, column)
    # No key that remains opens any of it: the backup's wrapped key needs the retired KEK,
    # and no live data key decrypts the sealed row or core tokens.
    import sqlite3

    con = sqlite3.connect(backup)
    version, blob = con.execute(
        "SELECT kek_version, blob FROM data_keys WHERE pseudonym = ?", (p,)
    ).fetchone()
    sealed, national = con.execute(
        'SELECT sealed, national_id FROM "c_bank" WHERE pseudonym = ?', (p,)
    ).fetchone()
    con.close()
    with pytest.raises(KeyMaterialError, match="retired"):
        store.keyring.unwrap(WrappedKey(version, bytes(blob)), data_key_context("bank", p))
    cipher = FieldCipher("bank")
    for ds, q, v, b in store.backend.fetchall("SELECT dataset, pseudonym, kek_version, blob FROM data_keys"):
        key = store.keyring.unwrap(WrappedKey(v, bytes(b)), data_key_context(ds, q))
        for field, token in (("__sealed_row__", sealed), ("national_id", national)):
            with pytest.raises(IntegrityError):
                cipher.decrypt(key, field, p, bytes(token))
    # And the backup file holds none of the customer's values in any encoding SQLite uses.
    import struct

    raw = backup.read_bytes()
    for value in (victim["income"], victim["balance"], victim["credit_limit"], victim["utilisation"]):
        assert struct.pack(">d", float(value)) not in raw
    for value in (victim["national_id"], victim["phone"], victim["updated_at"], victim["full_name"]):
        assert str(value).encode() not in raw


def test_a_customers_status_is_held_erased_or_unknown(tmp_path, store, bank):
    from fedcustomer.data.store_customers import customer_status

    frame = bank_frame(6)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    kept, gone = (store.pseudonymizer.pseudonym(frame.at[i, "customer_id"]) for i in (2, 4))
    erase_customer(store, ADMIN, frame.at[4, "customer_id"])
    path = store.home.store_path
    assert customer_status(path, kept) == "held" and customer_status(path, gone) == "erased"
    assert customer_status(path, "ab" * 32) == "unknown"
    assert customer_status(tmp_path / "no-store.db", kept) is None  # a bare copy of the log: nothing to ask
