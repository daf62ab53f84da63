"""Opening many records at once: the bulk calls give what the one-value calls give, and refuse
exactly what they refuse (FieldCipher.decrypt_many, FileKeyRing.unwrap_many, open_records)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcustomer.errors import DataError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import open_record, open_records, seal_record
from fedcustomer.privacy.crypto.keyring import (
    FileKeyRing,
    KekInfo,
    WrappedKey,
    data_key_context,
    data_key_contexts,
    unwrap_all,
)
from fedcustomer.privacy.crypto.material import new_data_key

PSEUDONYMS = [f"{i:064x}" for i in range(6)] + ["é" * 3]


def _sealed(ring: FileKeyRing, values: list[str]) -> tuple[FieldCipher, list[WrappedKey], list[bytes]]:
    cipher = FieldCipher("loans")
    wrapped, tokens = [], []
    for pseudonym, value in zip(PSEUDONYMS, values):
        record = seal_record(ring, cipher, pseudonym, {"income": value})
        wrapped.append(record.wrapped)
        tokens.append(record.tokens["income"])
    return cipher, wrapped, tokens


@pytest.fixture()
def ring(tmp_path: Path) -> FileKeyRing:
    return FileKeyRing.create(tmp_path / "keys")


# --- FieldCipher.decrypt_many -------------------------------------------------------------------


@given(values=st.lists(st.text(max_size=50), min_size=0, max_size=7))
def test_decrypt_many_equals_one_value_at_a_time(values: list[str]) -> None:
    cipher = FieldCipher("loans")
    keys = [new_data_key() for _ in values]
    pseudonyms = PSEUDONYMS[: len(values)]
    tokens = [cipher.encrypt(k, "f", p, v) for k, p, v in zip(keys, pseudonyms, values)]
    many = cipher.decrypt_many(keys, "f", pseudonyms, tokens)
    assert many == [cipher.decrypt(k, "f", p, t) for k, p, t in zip(keys, pseudonyms, tokens)] == values


def _one_bad(mangle_token=None, key=None, field="f", pseudonym=None):  # type: ignore[no-untyped-def]
    """decrypt_many over three records whose middle one is mangled; the one-value call's error too."""
    cipher = FieldCipher("loans")
    keys = [new_data_key() for _ in range(3)]
    tokens = [cipher.encrypt(k, "f", p, "secret-value") for k, p in zip(keys, PSEUDONYMS)]
    pseudonyms = list(PSEUDONYMS[:3])
    if mangle_token is not None:
        tokens[1] = mangle_token(tokens[1])
    if key is not None:
        keys[1] = key
    if pseudonym is not None:
        pseudonyms[1] = pseudonym
    first = 0 if field != "f" else 1  # the first record that fails: every one for another field
    with pytest.raises(Exception) as single:
        cipher.decrypt(keys[first], field, pseudonyms[first], tokens[first])
    with pytest.raises(type(single.value)) as bulk:
        cipher.decrypt_many(keys, field, pseudonyms, tokens)
    return single.value, bulk.value


@pytest.mark.parametrize(
    "case",
    [
        {"mangle_token": lambda t: t[:-1] + bytes([t[-1] ^ 1])},  # altered tag
        {"mangle_token": lambda t: t[:14] + bytes([t[14] ^ 0x80]) + t[15:]},  # altered ciphertext
        {"mangle_token": lambda t: t[:20]},  # truncated
        {"mangle_token": lambda t: b"\x02" + t[1:]},  # unknown format
        {"key": new_data_key()},  # another data key
        {"key": b"x" * 16},  # a key of the wrong size (AES-128 would take it)
        {"pseudonym": PSEUDONYMS[5]},  # moved to another customer
        {"field": "phone"},  # moved to another field
    ],
)
def test_decrypt_many_refuses_what_one_value_refuses_with_the_same_message(case) -> None:  # type: ignore[no-untyped-def]
    single, bulk = _one_bad(**case)
    assert isinstance(bulk, (IntegrityError, KeyMaterialError))
    assert str(bulk) == str(single) and "secret-value" not in str(bulk)


def test_decrypt_many_needs_one_key_and_pseudonym_per_token() -> None:
    cipher = FieldCipher("loans")
    key = new_data_key()
    token = cipher.encrypt(key, "f", PSEUDONYMS[0], "v")
    with pytest.raises(DataError, match="one data key and one pseudonym per token"):
        cipher.decrypt_many([key, key], "f", [PSEUDONYMS[0]], [token])


# --- FileKeyRing.unwrap_many and unwrap_all --------------------------------------------------------


def test_unwrap_many_equals_unwrap_across_kek_versions(ring: FileKeyRing) -> None:
    keys = [new_data_key() for _ in PSEUDONYMS]
    contexts = data_key_contexts("loans", PSEUDONYMS)
    assert contexts == [data_key_context("loans", p) for p in PSEUDONYMS]
    wrapped = [ring.wrap(k, c) for k, c in zip(keys[:3], contexts)]
    ring.rotate()
    wrapped += [ring.wrap(k, c) for k, c in zip(keys[3:], contexts[3:])]
    assert {w.kek_version for w in wrapped} == {1, 2}
    assert (
        ring.unwrap_many(wrapped, contexts) == [ring.unwrap(w, c) for w, c in zip(wrapped, contexts)] == keys
    )


@pytest.mark.parametrize("what", ["blob", "context", "short", "version"])
def test_unwrap_many_refuses_an_altered_key_with_unwraps_message(ring: FileKeyRing, what: str) -> None:
    keys = [new_data_key() for _ in range(3)]
    contexts = data_key_contexts("loans", PSEUDONYMS[:3])
    wrapped = [ring.wrap(k, c) for k, c in zip(keys, contexts)]
    bad = wrapped[1]
    if what == "blob":
        wrapped[1] = WrappedKey(bad.kek_version, bad.blob[:-1] + bytes([bad.blob[-1] ^ 1]))
    elif what == "context":
        contexts[1] = contexts[2]
    elif what == "short":
        wrapped[1] = WrappedKey(bad.kek_version, bad.blob[:20])
    else:
        wrapped[1] = WrappedKey(7, bad.blob)
    with pytest.raises(KeyMaterialError) as single:
        ring.unwrap(wrapped[1], contexts[1])
    with pytest.raises(KeyMaterialError) as bulk:
        ring.unwrap_many(wrapped, contexts)
    assert str(bulk.value) == str(single.value)


def test_unwrap_many_refuses_a_retired_version(tmp_path: Path, ring: FileKeyRing) -> None:
    key, context = new_data_key(), data_key_context("loans", PSEUDONYMS[0])
    old = ring.wrap(key, context)
    ring.rotate()
    ring.retire(1)
    with pytest.raises(KeyMaterialError, match="retired"):
        ring.unwrap_many([old], [context])


def test_unwrap_many_sees_a_version_another_process_added(tmp_path: Path, ring: FileKeyRing) -> None:
    other = FileKeyRing.open(tmp_path / "keys")
    other.rotate()  # this handle has never seen version 2
    contexts = data_key_contexts("loans", PSEUDONYMS[:2])
    keys = [new_data_key(), new_data_key()]
    wrapped = [ring.wrap(keys[0], contexts[0]), other.wrap(keys[1], contexts[1])]
    assert [w.kek_version for w in wrapped] == [1, 2]
    assert ring.unwrap_many(wrapped, contexts) == keys


class _Kms:
    """A keyring adapter with the four protocol methods only (no unwrap_many)."""

    def active_version(self) -> int:
        return 1

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        return WrappedKey(1, hashlib.sha256(context).digest()[:4] + data_key)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.blob[:4] != hashlib.sha256(context).digest()[:4]:
            raise KeyMaterialError("context mismatch")
        return wrapped.blob[4:]

    def versions(self) -> list[KekInfo]:
        return [KekInfo(1, "2024-01-01T00:00:00+00:00", "active")]


def test_unwrap_all_uses_plain_unwrap_for_an_adapter_without_a_bulk_call() -> None:
    kms = _Kms()
    contexts = data_key_contexts("loans", PSEUDONYMS[:2])
    keys = [new_data_key(), new_data_key()]
    wrapped = [kms.wrap(k, c) for k, c in zip(keys, contexts)]
    assert unwrap_all(kms, wrapped, contexts) == keys
    with pytest.raises(KeyMaterialError, match="context mismatch"):
        unwrap_all(kms, wrapped, contexts[::-1])
    with pytest.raises(KeyMaterialError, match="one context per wrapped data key"):
        unwrap_all(kms, wrapped, contexts[:1])


# --- open_records / RecordKeys -------------------------------------------------------------------


def test_open_records_opens_what_open_record_opens(ring: FileKeyRing) -> None:
    values = [f"{i * 1000}.5" for i in range(len(PSEUDONYMS))]
    cipher, wrapped, tokens = _sealed(ring, values)
    keys = open_records(ring, cipher, PSEUDONYMS, wrapped)
    assert len(keys) == len(PSEUDONYMS) and keys.dataset == "loans"
    assert keys.open_field("income", tokens) == values
    one_by_one = [
        open_record(ring, cipher, p, w).open_value("income", t)
        for p, w, t in zip(PSEUDONYMS, wrapped, tokens)
    ]
    assert one_by_one == values
    picked = keys.select([4, 1])
    assert picked.pseudonyms == [PSEUDONYMS[4], PSEUDONYMS[1]]
    assert picked.open_field("income", [tokens[4], tokens[1]]) == [values[4], values[1]]
    assert keys.record(2).open_value("income", tokens[2]) == values[2]
    assert "income" not in repr(keys) and "records=7" in repr(keys)


def test_open_records_refuses_a_token_moved_between_customers(ring: FileKeyRing) -> None:
    cipher, wrapped, tokens = _sealed(ring, ["1", "2", "3"])
    keys = open_records(ring, cipher, PSEUDONYMS[:3], wrapped[:3])
    with pytest.raises(IntegrityError, match=PSEUDONYMS[0]):
        keys.open_field("income", [tokens[1], tokens[0], tokens[2]])


def test_open_records_refuses_a_wrapped_key_moved_between_customers(ring: FileKeyRing) -> None:
    cipher, wrapped, _ = _sealed(ring, ["1", "2"])
    with pytest.raises(KeyMaterialError, match="could not unwrap"):
        open_records(ring, cipher, PSEUDONYMS[:2], [wrapped[1], wrapped[0]])
