"""A read's rows opened in one pass (open_sealed_rows): the keys and documents of the two steps
(open_row_keys, then open_rows), and each fault refused with the two steps' own error."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcustomer.data import store_db
from fedcustomer.data.store_db import (
    ROW_FIELD,
    open_row_keys,
    open_rows,
    open_sealed_rows,
    seal_row,
    table_name,
)
from fedcustomer.errors import IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import seal_record
from tests.data.store_fixtures import ADMIN, bank, home, store, write_csv
from tests.data.test_ingest import bank_frame

SELECT = (
    f"SELECT t.pseudonym, t.sealed, k.kek_version, k.blob, t.full_name FROM {table_name('bank')} t "
    "LEFT JOIN data_keys k ON k.dataset = 'bank' AND k.pseudonym = t.pseudonym ORDER BY t.pseudonym"
)


@pytest.fixture()
def loaded(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(12)))
    return store


def _rows(store) -> list[tuple[Any, ...]]:
    return store.backend.fetchall(SELECT)


def _two_steps(store, rows) -> tuple[Any, list[dict[str, Any]]]:
    keys = open_row_keys(store.keyring, FieldCipher("bank"), [(r[0], r[2], r[3]) for r in rows])
    return keys, open_rows(keys, [r[1] for r in rows])


def test_one_pass_gives_the_two_steps_documents_and_keys(loaded):
    rows = _rows(loaded)
    keys, docs = open_sealed_rows(loaded.keyring, FieldCipher("bank"), rows)
    old_keys, old_docs = _two_steps(loaded, rows)
    assert len(docs) == 12
    assert json.dumps(docs) == json.dumps(old_docs)  # types and key order too
    names = [bytes(r[4]) for r in rows]
    assert keys.open_field("full_name", names) == old_keys.open_field("full_name", names)
    assert keys.pseudonyms == old_keys.pseudonyms


def test_rows_that_open_at_once_take_the_one_pass(loaded, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the two steps ran")

    monkeypatch.setattr(store_db, "open_row_keys", refuse)
    monkeypatch.setattr(store_db, "open_rows", refuse)
    assert len(open_sealed_rows(loaded.keyring, FieldCipher("bank"), _rows(loaded))[1]) == 12


def test_no_rows_give_no_documents(loaded):
    keys, docs = open_sealed_rows(loaded.keyring, FieldCipher("bank"), [])
    assert docs == [] and len(keys) == 0


def _resealed(store, rows, at: int, plaintext: bytes) -> list[tuple[Any, ...]]:
    """``rows`` with row ``at`` sealed anew under a fresh data key: ``plaintext`` as its row bytes."""
    pseudonym = rows[at][0]
    cipher = FieldCipher("bank")
    record = seal_record(store.keyring, cipher, pseudonym)
    nonce = os.urandom(12)
    aad = cipher._aad(ROW_FIELD, pseudonym)
    sealed = b"\x01" + nonce + AESGCM(record.key._key).encrypt(nonce, plaintext, aad)
    out = list(rows)
    out[at] = (pseudonym, sealed, record.wrapped.kek_version, record.wrapped.blob, *rows[at][4:])
    return out


@pytest.mark.parametrize(
    "values",
    [
        {"age": float("nan"), "income": float("inf")},  # orjson refuses NaN and Infinity
        {"age": 2**70, "income": -(10**20)},  # past 64 bits: parsed by json
        {"region": "\ud800"},  # a lone surrogate escape
    ],
)
def test_rows_orjson_does_not_parse_give_the_two_steps_documents(loaded, values):
    rows = _rows(loaded)
    pseudonym = rows[3][0]
    record = seal_record(loaded.keyring, FieldCipher("bank"), pseudonym)
    text = seal_row(record.key, "", "ab" * 32, values)
    rows[3] = (pseudonym, text, record.wrapped.kek_version, record.wrapped.blob, rows[3][4])
    docs = open_sealed_rows(loaded.keyring, FieldCipher("bank"), rows)[1]
    assert json.dumps(docs) == json.dumps(_two_steps(loaded, rows)[1])
    assert docs[3]["values"].keys() == values.keys()


def _error(fn) -> tuple[type, str]:  # type: ignore[no-untyped-def]
    with pytest.raises((IntegrityError, KeyMaterialError, ValueError)) as info:
        fn()
    return type(info.value), str(info.value)


def _flip(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


FAULTS = {
    "row not UTF-8": lambda store, rows: _resealed(store, rows, 5, b'{"values":{"age":"\xff"}}'),
    "row not JSON": lambda store, rows: _resealed(store, rows, 5, b"not json"),
    "row altered": lambda store, rows: [*rows[:5], (rows[5][0], _flip(rows[5][1]), *rows[5][2:]), *rows[6:]],
    "row missing": lambda store, rows: [*rows[:5], (rows[5][0], None, *rows[5][2:]), *rows[6:]],
    "key altered": lambda store, rows: [*rows[:5], (*rows[5][:3], _flip(rows[5][3]), rows[5][4]), *rows[6:]],
    "key missing": lambda store, rows: [
        *rows[:5],
        (rows[5][0], rows[5][1], None, None, rows[5][4]),
        *rows[6:],
    ],
    "key of the next customer": lambda store, rows: [
        *rows[:5],
        (*rows[5][:3], rows[6][3], rows[5][4]),
        *rows[6:],
    ],
    "two faults, the key's first": lambda store, rows: [
        *rows[:2],
        (rows[2][0], _flip(rows[2][1]), *rows[2][2:]),
        *rows[3:8],
        (*rows[8][:3], _flip(rows[8][3]), rows[8][4]),
        *rows[9:],
    ],
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_raises_the_two_steps_own_error(loaded, fault):
    rows = FAULTS[fault](loaded, _rows(loaded))
    expected = _error(lambda: _two_steps(loaded, rows))
    got = _error(lambda: open_sealed_rows(loaded.keyring, FieldCipher("bank"), rows))
    assert got == expected
    if fault == "two faults, the key's first":
        assert got[0] is KeyMaterialError  # every key is opened before any row, as before
