"""Field encryption: "encrypt this field of this record" under the record's data key.

Callers never see nonces or associated data. A token is ``version byte || nonce ||
ciphertext+tag``; the AAD binds the format version, dataset, field name and customer
pseudonym, so a token altered or moved to another field, customer or dataset fails with
:class:`IntegrityError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from hmac import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcustomer.errors import DataError, IntegrityError
from fedcustomer.privacy.crypto.material import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    check_key_bytes,
    lp,
    lp_text,
)

__all__ = ["TOKEN_HEAD", "TOKEN_MIN", "TOKEN_VERSION", "FieldCipher"]

_FIELD_FORMAT_V1 = b"\x01"  # first byte of every field token and of its AAD
TOKEN_VERSION = _FIELD_FORMAT_V1[0]  # the same, as the int ``token[0]`` gives
TOKEN_HEAD = 1 + NONCE_BYTES  # a token's ciphertext+tag starts here
TOKEN_MIN = TOKEN_HEAD + TAG_BYTES  # the shortest token (an empty value)


class FieldCipher:
    """Encrypts one field value of one customer record under that customer's data key.

    Token layout: ``0x01 || 12-byte random nonce || AES-GCM ciphertext+tag``. AAD:
    ``0x01 || len-prefixed dataset || len-prefixed field || len-prefixed pseudonym``.
    The last AESGCM object is cached (and one per record in the ``*_record`` methods),
    so per-field cost is one AEAD call plus a little byte concatenation.
    """

    __slots__ = ("_dataset", "_prefix", "_cache")

    def __init__(self, dataset: str) -> None:
        if not isinstance(dataset, str) or not dataset:
            raise DataError("FieldCipher needs a non-empty dataset name")
        self._dataset = dataset
        self._prefix = _FIELD_FORMAT_V1 + lp_text(dataset)
        self._cache: tuple[bytes, AESGCM] | None = None

    @property
    def dataset(self) -> str:
        return self._dataset

    def _aead(self, data_key: bytes) -> AESGCM:
        cache = self._cache
        if cache is not None and type(data_key) is bytes and compare_digest(cache[0], data_key):
            return cache[1]
        key = check_key_bytes(data_key, "data key")
        aead = AESGCM(key)
        self._cache = (key, aead)
        return aead

    def aad_head(self, field: str) -> bytes:
        """The AAD of ``field`` up to the pseudonym: a value's AAD is this head, then
        ``lp(pseudonym as UTF-8)`` (for a loop that opens one field of many records in line)."""
        return self._prefix + lp_text(field)

    def _aad(self, field: str, pseudonym: str) -> bytes:
        return self._prefix + lp_text(field) + lp_text(pseudonym)

    def encrypt(self, data_key: bytes, field: str, pseudonym: str, value: str) -> bytes:
        return self._encrypt(self._aead(data_key), field, pseudonym, value)

    def decrypt(self, data_key: bytes, field: str, pseudonym: str, token: bytes) -> str:
        return self._decrypt(self._aead(data_key), field, pseudonym, token)

    def encrypt_record(self, data_key: bytes, pseudonym: str, values: Mapping[str, str]) -> dict[str, bytes]:
        aead = self._aead(data_key)
        enc = self._encrypt
        return {field: enc(aead, field, pseudonym, value) for field, value in values.items()}

    def decrypt_record(self, data_key: bytes, pseudonym: str, tokens: Mapping[str, bytes]) -> dict[str, str]:
        aead = self._aead(data_key)
        dec = self._decrypt
        return {field: dec(aead, field, pseudonym, token) for field, token in tokens.items()}

    def decrypt_many(
        self, data_keys: Sequence[bytes], field: str, pseudonyms: Sequence[str], tokens: Sequence[bytes]
    ) -> list[str]:
        """:meth:`decrypt` of one field of many records, each token under its own record's key.

        The same AEAD, key-size check, token layout and AAD as the one-value path, without
        its per-call overhead (a read opens every row of a dataset). A token that does not
        open is handed to :meth:`decrypt`, which raises the one-value path's error for it.
        """
        if not len(data_keys) == len(pseudonyms) == len(tokens):
            raise DataError("decrypt_many needs one data key and one pseudonym per token")
        aad_head = self._prefix + lp_text(field)
        head, shortest, version = 1 + NONCE_BYTES, 1 + NONCE_BYTES + TAG_BYTES, _FIELD_FORMAT_V1
        out: list[str] = []
        append = out.append
        for key, pseudonym, token in zip(data_keys, pseudonyms, tokens):
            try:
                if len(token) < shortest or token[:1] != version or len(key) != KEY_BYTES:
                    raise ValueError("not a version-1 token under a data key")
                aad = aad_head + lp(pseudonym.encode("utf-8"))
                append(AESGCM(key).decrypt(token[1:head], token[head:], aad).decode("utf-8"))
            except (InvalidTag, UnicodeError, ValueError, TypeError, AttributeError):
                append(self.decrypt(key, field, pseudonym, token))  # raises this value's own error
        return out

    def _encrypt(self, aead: AESGCM, field: str, pseudonym: str, value: str) -> bytes:
        try:
            plaintext = value.encode("utf-8")
        except (AttributeError, UnicodeEncodeError):
            # The value itself is never echoed: it may be a core-tier value.
            raise DataError(
                f"field {field!r} of customer {pseudonym} in dataset {self._dataset!r}: value must be valid "
                f"Unicode text (str), got {type(value).__name__}"
            ) from None
        nonce = os.urandom(NONCE_BYTES)
        return _FIELD_FORMAT_V1 + nonce + aead.encrypt(nonce, plaintext, self._aad(field, pseudonym))

    def _decrypt(self, aead: AESGCM, field: str, pseudonym: str, token: bytes) -> str:
        if len(token) < 1 + NONCE_BYTES + TAG_BYTES or token[:1] != _FIELD_FORMAT_V1:
            raise IntegrityError(
                f"field {field!r} of customer {pseudonym} in dataset {self._dataset!r}: ciphertext is truncated or "
                f"has an unknown format version; the stored value is corrupt"
            )
        try:
            plaintext = aead.decrypt(
                token[1 : 1 + NONCE_BYTES], token[1 + NONCE_BYTES :], self._aad(field, pseudonym)
            )
            return plaintext.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise IntegrityError(
                f"field {field!r} of customer {pseudonym} in dataset {self._dataset!r} failed authentication: the "
                f"ciphertext was altered, moved from another field, customer or dataset, or encrypted under another "
                f"data key"
            ) from None

    def __repr__(self) -> str:
        return f"FieldCipher(dataset={self._dataset!r})"
