"""Sealing and opening one record: the envelope recipe in one place.

``seal_record`` draws a fresh data key for a record, wraps it with the keyring's active
KEK (AAD: dataset and pseudonym, so a wrapped key cannot be moved to another customer)
and encrypts the record's values under it; ``open_record`` unwraps a stored key. Both
hand back a :class:`RecordKey`, which seals and opens further fields of that record and
never shows the key itself, so code above this layer never wraps, unwraps or holds a
raw data key. :func:`open_records` opens many records' keys at once (a read opens a whole
dataset) and hands back :class:`RecordKeys`, which opens one field of all of them in a call;
:func:`open_records_field` does both for a field every record has, in one pass.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcustomer.privacy.crypto.cipher import TOKEN_HEAD, TOKEN_MIN, TOKEN_VERSION, FieldCipher
from fedcustomer.privacy.crypto.keyring import (
    KeyRing,
    WrappedKey,
    data_key_context,
    data_key_context_head,
    data_key_contexts,
    unwrap_all,
)
from fedcustomer.privacy.crypto.material import KEY_BYTES, NONCE_BYTES, new_data_key

__all__ = [
    "RecordKey",
    "RecordKeys",
    "SealedRecord",
    "open_record",
    "open_records",
    "open_records_field",
    "seal_record",
]


class RecordKey:
    """One record's opened data key: encrypts and decrypts that record's fields."""

    __slots__ = ("_cipher", "_key", "pseudonym")

    def __init__(self, cipher: FieldCipher, pseudonym: str, data_key: bytes) -> None:
        """Use :func:`seal_record` or :func:`open_record`."""
        self._cipher = cipher
        self._key = data_key
        self.pseudonym = pseudonym

    @property
    def dataset(self) -> str:
        return self._cipher.dataset

    def seal(self, values: Mapping[str, str]) -> dict[str, bytes]:
        """One token per field, each bound to its field, this record and the dataset."""
        return self._cipher.encrypt_record(self._key, self.pseudonym, values)

    def open(self, tokens: Mapping[str, bytes]) -> dict[str, str]:
        """The clear values of ``tokens`` (IntegrityError if one was altered or moved)."""
        return self._cipher.decrypt_record(self._key, self.pseudonym, tokens)

    def seal_value(self, field: str, value: str) -> bytes:
        return self._cipher.encrypt(self._key, field, self.pseudonym, value)

    def open_value(self, field: str, token: bytes) -> str:
        return self._cipher.decrypt(self._key, field, self.pseudonym, token)

    def __repr__(self) -> str:
        return f"RecordKey(dataset={self._cipher.dataset!r}, pseudonym={self.pseudonym!r})"


class RecordKeys:
    """Many records' opened data keys (one dataset): opens one field of all of them per call.

    The bulk form of :class:`RecordKey`: the same cipher, keys and checks, paid per call
    rather than per value. Like it, it never shows a key.
    """

    __slots__ = ("_cipher", "_keys", "pseudonyms")

    def __init__(self, cipher: FieldCipher, pseudonyms: Sequence[str], data_keys: Sequence[bytes]) -> None:
        """Use :func:`open_records`."""
        self._cipher = cipher
        self._keys = list(data_keys)
        self.pseudonyms = list(pseudonyms)

    def __len__(self) -> int:
        return len(self.pseudonyms)

    @property
    def dataset(self) -> str:
        return self._cipher.dataset

    def open_field(self, field: str, tokens: Sequence[bytes]) -> list[str]:
        """Each record's clear value of ``field``, one token per record in order (IntegrityError
        naming the customer if one was altered or moved)."""
        return self._cipher.decrypt_many(self._keys, field, self.pseudonyms, tokens)

    def select(self, positions: Sequence[int]) -> RecordKeys:
        """The keys of the records at ``positions`` (e.g. the rows a filter kept)."""
        return RecordKeys(
            self._cipher, [self.pseudonyms[i] for i in positions], [self._keys[i] for i in positions]
        )

    def record(self, position: int) -> RecordKey:
        """One record's key, for the one-value calls."""
        return RecordKey(self._cipher, self.pseudonyms[position], self._keys[position])

    def __repr__(self) -> str:
        return f"RecordKeys(dataset={self._cipher.dataset!r}, records={len(self.pseudonyms)})"


@dataclass(frozen=True)
class SealedRecord:
    """A new record's wrapped data key (to store), its value tokens, and the opened key."""

    wrapped: WrappedKey
    tokens: dict[str, bytes]
    key: RecordKey


def seal_record(
    keyring: KeyRing, cipher: FieldCipher, pseudonym: str, values: Mapping[str, str] | None = None
) -> SealedRecord:
    """Draw a data key for a new record, wrap it under the active KEK and encrypt ``values``."""
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, data_key_context(cipher.dataset, pseudonym))
    key = RecordKey(cipher, pseudonym, data_key)
    return SealedRecord(wrapped, key.seal(values) if values else {}, key)


def open_record(keyring: KeyRing, cipher: FieldCipher, pseudonym: str, wrapped: WrappedKey) -> RecordKey:
    """Unwrap a record's stored data key (KeyMaterialError if it is not this record's key)."""
    return RecordKey(cipher, pseudonym, keyring.unwrap(wrapped, data_key_context(cipher.dataset, pseudonym)))


def open_records(
    keyring: KeyRing, cipher: FieldCipher, pseudonyms: Sequence[str], wrapped: Sequence[WrappedKey]
) -> RecordKeys:
    """:func:`open_record` for many records of one dataset (KeyMaterialError naming the first that fails)."""
    contexts = data_key_contexts(cipher.dataset, pseudonyms)
    return RecordKeys(cipher, pseudonyms, unwrap_all(keyring, wrapped, contexts))


_LENGTH = struct.Struct(">I")  # the length prefix of :func:`~fedcustomer.privacy.crypto.material.lp`
_KekOpener = tuple[Callable[[bytes, bytes, bytes], bytes], bytes]


def open_records_field(
    keyring: KeyRing,
    cipher: FieldCipher,
    pseudonyms: Sequence[str],
    versions: Sequence[Any],
    blobs: Sequence[Any],
    field: str,
    tokens: Sequence[Any],
) -> tuple[RecordKeys, list[bytes]] | None:
    """:func:`open_records`, then ``field`` of every record opened, in one pass over the records.

    A read opens every customer's data key and sealed row; one loop that unwraps a key and opens
    the value under it shares each pseudonym's bytes between the two AADs and pays Python's loop
    once, not twice. The same KEK, AEAD, AADs, token layout and size checks as the two steps.
    The values come back as their UTF-8 bytes, not yet decoded: the caller decodes or parses
    them, and refuses invalid UTF-8 as :meth:`RecordKeys.open_field` would.

    None when any record does not open at once (a KEK version the keyring does not hold now,
    a missing, short or altered key or token, a data key of the wrong size, a keyring without
    ``kek_opener``): the caller then takes the two steps, which re-read the keyring or raise
    that record's own error, in their order.
    """
    get_opener = getattr(keyring, "kek_opener", None)
    if get_opener is None or not len(pseudonyms) == len(versions) == len(blobs) == len(tokens):
        return None
    context_head = data_key_context_head(cipher.dataset)
    field_head = cipher.aad_head(field)
    openers: dict[int, _KekOpener | None] = {}
    pack = _LENGTH.pack
    keys: list[bytes] = []
    values: list[bytes] = []
    add_key, add_value = keys.append, values.append
    try:
        for pseudonym, version, blob, token in zip(pseudonyms, versions, blobs, tokens):
            if type(version) is not int or type(blob) is not bytes or type(token) is not bytes:
                return None
            if version not in openers:
                found = get_opener(version)
                openers[version] = None if found is None else (found[0], found[1] + context_head)
            opener = openers[version]
            if opener is None or len(token) < TOKEN_MIN or token[0] != TOKEN_VERSION:
                return None
            name = pseudonym.encode("utf-8")
            tail = pack(len(name)) + name
            key = opener[0](blob[:NONCE_BYTES], blob[NONCE_BYTES:], opener[1] + tail)
            if len(key) != KEY_BYTES:
                return None
            add_value(AESGCM(key).decrypt(token[1:TOKEN_HEAD], token[TOKEN_HEAD:], field_head + tail))
            add_key(key)
    except (InvalidTag, ValueError, TypeError, AttributeError, UnicodeError):
        return None
    return RecordKeys(cipher, pseudonyms, keys), values
