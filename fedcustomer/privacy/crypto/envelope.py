"""Sealing and opening one record: the envelope recipe in one place.

``seal_record`` draws a fresh data key for a record, wraps it with the keyring's active
KEK (AAD: dataset and pseudonym, so a wrapped key cannot be moved to another customer)
and encrypts the record's values under it; ``open_record`` unwraps a stored key. Both
hand back a :class:`RecordKey`, which seals and opens further fields of that record and
never shows the key itself, so code above this layer never wraps, unwraps or holds a
raw data key. :func:`open_records` opens many records' keys at once (a read opens a whole
dataset) and hands back :class:`RecordKeys`, which opens one field of all of them in a call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import (
    KeyRing,
    WrappedKey,
    data_key_context,
    data_key_contexts,
    unwrap_all,
)
from fedcustomer.privacy.crypto.material import new_data_key

__all__ = ["RecordKey", "RecordKeys", "SealedRecord", "open_record", "open_records", "seal_record"]


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
