"""Sizes and byte helpers shared by the key files, the keyring and the field cipher.

Kept apart so the cipher, the keyring and the pseudonymizer agree on one key size and
one unambiguous way of joining associated data, without importing each other.
"""

from __future__ import annotations

import os
import struct
from datetime import UTC, datetime
from functools import lru_cache

from fedcustomer.errors import KeyMaterialError

KEY_BYTES = 32  # AES-256 for KEKs, data keys and the pseudonym key
NONCE_BYTES = 12  # AES-GCM standard nonce; random per encryption
TAG_BYTES = 16


def utc_now() -> str:
    """Seconds-precision ISO 8601 UTC time, as written in key files."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def lp(data: bytes) -> bytes:
    """Length-prefix ``data`` so concatenated AAD parts can never be confused."""
    return struct.pack(">I", len(data)) + data


@lru_cache(maxsize=4096)
def lp_text(text: str) -> bytes:
    """Cached length-prefixed UTF-8 of a field name or dataset (few distinct values)."""
    return lp(text.encode("utf-8"))


def check_key_bytes(key: object, what: str) -> bytes:
    """``key`` as bytes if it is exactly :data:`KEY_BYTES` long; KeyMaterialError otherwise."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise KeyMaterialError(f"{what} must be {KEY_BYTES} random bytes, got {size}")
    return bytes(key)


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return os.urandom(KEY_BYTES)
