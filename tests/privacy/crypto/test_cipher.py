"""FieldCipher: per-field envelope encryption round-trips, and every tampering or misuse is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcustomer.errors import DataError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto.cipher import FieldCipher

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDO_A = "a" * 64
PSEUDO_B = "b" * 64
texts = st.text(max_size=200)
names = st.text(min_size=1, max_size=40)


# --- FieldCipher: round trips ------------------------------------------------------------------


@given(dataset=names, field=names, pseudonym=names, value=texts)
def test_field_round_trips_any_unicode_value_and_names(
    dataset: str, field: str, pseudonym: str, value: str
) -> None:
    cipher = FieldCipher(dataset)
    token = cipher.encrypt(KEY, field, pseudonym, value)
    assert cipher.decrypt(KEY, field, pseudonym, token) == value


@given(values=st.dictionaries(names, texts, max_size=8))
def test_record_round_trips_every_field(values: dict[str, str]) -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, values)
    assert set(tokens) == set(values)
    assert cipher.decrypt_record(KEY, PSEUDO_A, tokens) == values


def test_record_tokens_decrypt_field_by_field_and_vice_versa() -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, {"national_id": "AB123456C", "name": "Ada"})
    assert cipher.decrypt(KEY, "name", PSEUDO_A, tokens["name"]) == "Ada"
    single = {"name": cipher.encrypt(KEY, "name", PSEUDO_A, "Ada")}
    assert cipher.decrypt_record(KEY, PSEUDO_A, single) == {"name": "Ada"}


def test_same_value_encrypts_to_different_tokens_without_plaintext() -> None:
    cipher = FieldCipher("loans")
    t1 = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    t2 = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    assert t1 != t2  # fresh nonce per encryption
    assert b"AB123456C" not in t1
    assert t1[0] == 1 and len(t1) == 1 + 12 + len("AB123456C") + 16


def test_cipher_cache_does_not_reuse_previous_key_for_a_new_key() -> None:
    cipher = FieldCipher("loans")
    t_key = cipher.encrypt(KEY, "f", PSEUDO_A, "v")
    t_other = cipher.encrypt(OTHER_KEY, "f", PSEUDO_A, "v")
    assert cipher.decrypt(OTHER_KEY, "f", PSEUDO_A, t_other) == "v"
    assert cipher.decrypt(KEY, "f", PSEUDO_A, t_key) == "v"
    with pytest.raises(IntegrityError):
        cipher.decrypt(OTHER_KEY, "f", PSEUDO_A, t_key)


# --- FieldCipher: tampering and misuse --------------------------------------------------------


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(position: int, bit: int) -> None:
    cipher = FieldCipher("loans")
    token = bytearray(cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C"))
    token[position % len(token)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        cipher.decrypt(KEY, "national_id", PSEUDO_A, bytes(token))


def test_token_moved_to_another_field_is_rejected() -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, {"national_id": "AB123456C", "phone": "0700900123"})
    swapped = {"national_id": tokens["phone"], "phone": tokens["national_id"]}
    with pytest.raises(IntegrityError, match="national_id") as info:
        cipher.decrypt_record(KEY, PSEUDO_A, swapped)
    assert "AB123456C" not in str(info.value) and "0700900123" not in str(info.value)


def test_token_moved_to_another_customer_is_rejected() -> None:
    cipher = FieldCipher("loans")
    token = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    with pytest.raises(IntegrityError, match=PSEUDO_B):
        cipher.decrypt(KEY, "national_id", PSEUDO_B, token)


def test_token_moved_to_another_dataset_is_rejected() -> None:
    token = FieldCipher("loans").encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    with pytest.raises(IntegrityError, match="cards"):
        FieldCipher("cards").decrypt(KEY, "national_id", PSEUDO_A, token)


def test_aad_parts_cannot_be_shifted_between_names() -> None:
    # Naive concatenation would make ("ab", "c") and ("a", "bc") identical.
    token = FieldCipher("ab").encrypt(KEY, "c", PSEUDO_A, "v")
    with pytest.raises(IntegrityError):
        FieldCipher("a").decrypt(KEY, "bc", PSEUDO_A, token)


def test_wrong_data_key_is_an_integrity_error() -> None:
    token = FieldCipher("loans").encrypt(KEY, "f", PSEUDO_A, "v")
    with pytest.raises(IntegrityError, match="another data key"):
        FieldCipher("loans").decrypt(OTHER_KEY, "f", PSEUDO_A, token)


@pytest.mark.parametrize("mangle", [lambda t: t[:20], lambda t: b"", lambda t: b"\x02" + t[1:]])
def test_truncated_or_unknown_format_token_is_an_integrity_error(mangle) -> None:  # type: ignore[no-untyped-def]
    cipher = FieldCipher("loans")
    token = cipher.encrypt(KEY, "f", PSEUDO_A, "value")
    with pytest.raises(IntegrityError, match="truncated or has an unknown format version"):
        cipher.decrypt(KEY, "f", PSEUDO_A, mangle(token))


@pytest.mark.parametrize("bad_key", [b"", b"x" * 16, b"x" * 33, "k" * 32])
def test_data_key_of_wrong_size_or_type_is_refused(bad_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyMaterialError, match="must be 32 random bytes"):
        FieldCipher("loans").encrypt(bad_key, "f", PSEUDO_A, "v")


def test_non_text_value_is_a_data_error_that_does_not_echo_the_value() -> None:
    cipher = FieldCipher("loans")
    with pytest.raises(DataError, match="national_id"):
        cipher.encrypt(KEY, "national_id", PSEUDO_A, 123456789)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        cipher.encrypt(KEY, "name", PSEUDO_A, "Ada\ud800Lovelace")
    assert "Ada" not in str(info.value)


def test_empty_dataset_name_is_refused() -> None:
    with pytest.raises(DataError):
        FieldCipher("")
