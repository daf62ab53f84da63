"""Reads open rows in bulk: the same frame as one value at a time, the same refusals, audited."""

import sqlite3
from typing import Any

import pandas as pd
import pytest

from fedcustomer.data import store_read
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.store_db import open_row, open_row_key, table_name
from fedcustomer.errors import ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto.cipher import FieldCipher
from tests.data.store_fixtures import (
    ADMIN,
    CORE,
    MARKETING,
    RISK,
    TRAINING,
    _approve_core,
    audit_entries,
    bank,
    home,
    store,
    write_csv,
)
from tests.data.test_ingest import bank_frame


def _one_value_at_a_time(store, plan) -> tuple[list[str], dict[str, list[Any]]]:
    """The read's row loop as it was before bulk opening: one key, one row, one core token at a time."""
    schema, names = plan.schema, plan.visible
    q = store.backend.quote
    core = [n for n in names if schema.field(n).is_core]
    plain = [n for n in names if not schema.field(n).is_core]
    sql = (
        f"SELECT t.pseudonym, t.sealed, k.kek_version, k.blob{''.join(f', t.{q(n)}' for n in core)} "
        f"FROM {q(table_name(schema.dataset))} t LEFT JOIN data_keys k ON k.dataset = ? "
        "AND k.pseudonym = t.pseudonym ORDER BY t.pseudonym"
    )
    text_keys = {k for k in plan.where if schema.field(k).type in store_read.TEXT_TYPES}
    wanted = {}
    for name, value in plan.where.items():
        stored = {
            store_read._where_value(schema.field(name), v)
            for v in (value if isinstance(value, list) else [value])
        }
        wanted[name] = {store_read._fold(v) for v in stored} if name in text_keys else stored
    cipher = FieldCipher(schema.dataset)
    index: list[str] = []
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for row in store.backend.fetchall(sql, [schema.dataset]):
        p, sealed, version, blob = row[:4]
        key = open_row_key(store.keyring, cipher, p, version, blob)
        values = open_row(key, sealed)["values"] if plain or wanted else {}
        if any(
            (store_read._fold(values.get(k)) if k in text_keys else values.get(k)) not in allowed
            for k, allowed in wanted.items()
        ):
            continue
        index.append(p)
        for n in plain:
            columns[n].append(values.get(n))
        tokens = {n: bytes(t) for n, t in zip(core, row[4:]) if t is not None}
        clear = key.open(tokens) if tokens else {}
        for n in core:
            columns[n].append(clear.get(n))
    return index, columns


@pytest.fixture()
def loaded(tmp_path, store, bank):
    frame = bank_frame(23)
    frame.loc[[2, 9], "income"] = None  # a nullable float with missing cells
    frame["months_on_book"] = frame["months_on_book"].astype(object)
    frame.loc[[4], "months_on_book"] = None  # a nullable integer: its chunk cannot be an int64 block
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    return store


READS = [
    (
        TRAINING,
        "training",
        ["age", "income", "utilisation", "num_late_payments", "region", "defaulted"],
        None,
    ),
    (TRAINING, "training", ["age", "income"], {"region": ["north", "SOUTH"]}),
    (TRAINING, "training", ["months_on_book", "num_products", "defaulted"], None),  # blocks and lists
    (MARKETING, "marketing", None, None),  # masked views
    (RISK, "risk_review", CORE + ["region", "income"], None),  # core fields in clear
    (RISK, "risk_review", ["full_name", "age"], {"region": "east"}),
    (RISK, "risk_review", ["national_id"], None),  # core alone: no sealed row is opened
]


@pytest.mark.parametrize("chunk", [1, 5, 4096])
@pytest.mark.parametrize("actor,purpose,fields,where", READS)
def test_bulk_read_gives_the_frame_of_the_one_value_path(
    loaded, monkeypatch, chunk, actor, purpose, fields, where
):
    _approve_core(loaded)
    monkeypatch.setattr(store_read, "_CHUNK", chunk)
    bulk = loaded.read(actor, purpose, fields, where)
    monkeypatch.setattr(store_read, "_fetch_columns", _one_value_at_a_time)
    single = loaded.read(actor, purpose, fields, where)
    assert len(bulk) > 0
    pd.testing.assert_frame_equal(bulk, single)


@pytest.mark.parametrize("actor,purpose,fields,where", READS)
def test_a_read_after_erasures_gives_the_frame_of_the_one_value_path(
    loaded, monkeypatch, actor, purpose, fields, where
):
    _approve_core(loaded)
    people = loaded.read(RISK, "risk_review", ["customer_id", "region"])
    kept = set(
        people.drop_duplicates("region")["customer_id"]
    )  # every region keeps a customer: no read is empty
    ids = [c for c in people["customer_id"].tolist() if c not in kept]
    erased = [ids[0], ids[5], ids[-1]]
    for customer in erased:
        erase_customer(loaded, ADMIN, customer)
    bulk = loaded.read(actor, purpose, fields, where)
    monkeypatch.setattr(store_read, "_fetch_columns", _one_value_at_a_time)
    single = loaded.read(actor, purpose, fields, where)
    assert len(bulk) > 0
    assert not set(bulk.index) & {loaded.pseudonymizer.pseudonym(c) for c in erased}
    pd.testing.assert_frame_equal(bulk, single)


def test_every_bulk_read_is_audited_once(loaded):
    _approve_core(loaded)
    before = len(audit_entries(loaded))
    loaded.read(TRAINING, "training", ["age"])
    got = loaded.read(RISK, "risk_review", ["full_name"])
    entries = audit_entries(loaded)[before:]
    assert [e.action for e in entries] == ["read", "decrypt"]
    assert entries[1].row_count == 23 and set(entries[1].pseudonyms) == set(got.index)


def _alter(store, sql, params=()):
    con = sqlite3.connect(store.home.store_path)
    try:
        con.execute(sql, params)
        con.commit()
    finally:
        con.close()


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


def _a_customer(store):
    return store.backend.fetchall(
        f"SELECT pseudonym, sealed, full_name FROM {table_name('bank')} ORDER BY pseudonym"
    )[7]


@pytest.mark.parametrize("column", ["sealed", "full_name"])
def test_an_altered_value_still_refuses_the_read_and_the_refusal_is_logged(loaded, column):
    _approve_core(loaded)
    pseudonym, sealed, full_name = _a_customer(loaded)
    token = sealed if column == "sealed" else full_name
    _alter(
        loaded,
        f"UPDATE {table_name('bank')} SET {column} = ? WHERE pseudonym = ?",
        (_flip_last_byte(token), pseudonym),
    )
    fields = ["age"] if column == "sealed" else ["full_name"]
    actor, purpose = (TRAINING, "training") if column == "sealed" else (RISK, "risk_review")
    with pytest.raises(IntegrityError, match=pseudonym) as info:
        loaded.read(actor, purpose, fields)
    assert "failed authentication" in str(info.value)
    denied = audit_entries(loaded, decision="denied")[-1]
    assert denied.actor == actor.name and "read failed" in denied.reason and denied.fields == tuple(fields)


def test_a_data_key_moved_to_another_customer_is_refused(loaded):
    rows = loaded.backend.fetchall(
        "SELECT pseudonym, blob FROM data_keys WHERE dataset = 'bank' ORDER BY pseudonym"
    )
    a, other_blob = rows[3][0], rows[4][1]
    _alter(loaded, "UPDATE data_keys SET blob = ? WHERE dataset = 'bank' AND pseudonym = ?", (other_blob, a))
    with pytest.raises(KeyMaterialError, match="could not unwrap"):
        loaded.read(TRAINING, "training", ["age"])
    assert "read failed" in audit_entries(loaded, decision="denied")[-1].reason


def test_a_customer_without_a_data_key_is_refused(loaded):
    pseudonym = _a_customer(loaded)[0]
    _alter(loaded, "DELETE FROM data_keys WHERE dataset = 'bank' AND pseudonym = ?", (pseudonym,))
    with pytest.raises(IntegrityError, match=f"customer {pseudonym} .* has no data key"):
        loaded.read(TRAINING, "training", ["age"])


@pytest.mark.parametrize(
    "rows,expected",
    [
        ([{"a": 1, "b": 2}, {"a": 3, "b": 4}], [[1, 2], [3, 4]]),
        ([{"a": True, "b": 2}], [[1, 2]]),  # a bool among ints reads as 0/1, as on the general path
        ([{"a": True, "b": False}], [[1, 0]]),  # bools alone too
        ([{"a": 1, "b": 2.0}], None),  # a whole float is still a float
        ([{"a": 1, "b": float("nan")}], None),
        ([{"a": 1, "b": {"c": 2}}], None),
        ([{"a": 1, "b": 2**63}], None),  # one past int64
        ([], None),  # no rows: the general path's empty column
        ([{"a": 1, "b": None}], None),  # a missing cell
        ([{"a": 1}], None),  # a missing field
        ([{"a": 1, "b": 2.5}], None),  # a float
        ([{"a": 1, "b": "2"}], None),  # a text
        ([{"a": 1, "b": 2**53 + 1}], None),  # past what the general path's float keeps exact
        ([{"a": 1, "b": -(2**63)}], None),
        ([{"a": 1, "b": 2**70}], None),  # past int64
        ([{"a": [1], "b": 2}], None),
    ],
)
def test_a_chunk_is_an_int64_block_only_when_every_value_is_a_whole_number(rows, expected):
    block = store_read._whole_block(rows, ["a", "b"])
    if expected is None:
        assert block is None
    else:
        assert block is not None and block.dtype == "int64"
        assert block.tolist() == expected


def test_a_single_whole_field_is_a_one_column_block():
    block = store_read._whole_block([{"a": 5}, {"a": 6}], ["a"])
    assert block is not None and block.shape == (2, 1) and block[:, 0].tolist() == [5, 6]


def test_the_cycle_collector_is_paused_during_a_read_and_resumed_after(loaded, monkeypatch):
    import gc

    seen = []
    real = store_read._to_frame

    def watching(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(store_read, "_to_frame", watching)
    assert gc.isenabled()
    loaded.read(TRAINING, "training", ["age", "income"])
    assert seen == [False] and gc.isenabled()


def test_a_failed_read_resumes_the_collector_and_one_paused_by_the_caller_stays_paused(loaded):
    import gc

    pseudonym, sealed, _ = _a_customer(loaded)
    _alter(
        loaded,
        f"UPDATE {table_name('bank')} SET sealed = ? WHERE pseudonym = ?",
        (_flip_last_byte(sealed), pseudonym),
    )
    with pytest.raises(IntegrityError):
        loaded.read(TRAINING, "training", ["age"])
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(IntegrityError):
            loaded.read(TRAINING, "training", ["age"])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_read_for_an_unknown_split_is_refused_before_anything_is_read_or_logged(loaded):
    before = len(audit_entries(loaded))
    with pytest.raises(ConfigError, match="split must be one of train, test, got 'validation'"):
        loaded.read(TRAINING, "training", ["age"], split="validation")
    assert len(audit_entries(loaded)) == before
    assert len(loaded.read(TRAINING, "training", ["age"], split="test")) < 23  # a known split reads its part
