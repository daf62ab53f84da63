"""Sealing and opening one record: the envelope recipe in one place.

``seal_record`` draws a fresh data key for a record, wraps it with the keyring's active
KEK (AAD: dataset and pseudonym, so a wrapped key cannot be moved to another customer)
and encrypts the record's values under it; ``open_record`` unwraps a stored key. Both
hand back a :class:`RecordKey`, which seals and opens further fields of that record and
never shows the key itself, so code above this layer never wraps, unwraps or holds a
raw data key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import KeyRing, WrappedKey, data_key_context
from fedcustomer.privacy.crypto.material import new_data_key

__all__ = ["RecordKey", "SealedRecord", "open_record", "seal_record"]


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
