"""Keyed customer pseudonyms: HMAC-SHA256 over the normalised id, with its own key file.

Ids are normalised with Unicode NFKC, stripped and upper-cased, and the MAC is
domain-separated, so the same customer gets the same pseudonym however the id was typed.
"""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from fedcustomer.errors import DataError, KeyMaterialError
from fedcustomer.privacy.crypto.material import KEY_BYTES, check_key_bytes, utc_now
from fedcustomer.privacy.crypto.secret_files import (
    FILE_FORMAT_VERSION,
    check_format,
    create_secret_file,
    decode_key,
    ensure_keys_dir,
    parse_json_object,
    read_secret_file,
)

__all__ = ["PSEUDONYM_KEY_FILE", "Pseudonymizer", "normalize_id"]

PSEUDONYM_KEY_FILE = "pseudonym.key"
_PSEUDONYM_FORMAT = "fedcustomer-pseudonym-key"
_PSEUDONYM_LABEL = b"fedcustomer/pseudonym/v1\x00"


def normalize_id(raw_id: str) -> str:
    """Canonical form of a customer id: Unicode NFKC, surrounding whitespace stripped, upper-case."""
    return unicodedata.normalize("NFKC", raw_id).strip().upper()


class Pseudonymizer:
    """Keyed HMAC-SHA256 pseudonyms; the key lives in ``<keys_dir>/pseudonym.key`` (0600).

    Without the key a pseudonym cannot be linked back to an id by hashing candidate ids,
    and two partners' pseudonyms for the same customer differ unless they share the key.
    """

    __slots__ = ("_path", "_base")

    def __init__(self, path: Path, key: bytes) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._path = path
        base = crypto_hmac.HMAC(check_key_bytes(key, "pseudonym key"), hashes.SHA256())
        base.update(_PSEUDONYM_LABEL)
        self._base = base

    @classmethod
    def create(cls, keys_dir: Path) -> Pseudonymizer:
        """Generate a new pseudonym key; refuses to overwrite an existing one."""
        keys_dir = Path(keys_dir)
        path = keys_dir / PSEUDONYM_KEY_FILE
        message = (
            f"a pseudonym key already exists at {path}; refusing to overwrite it "
            f"(a new key would change every customer's pseudonym)"
        )
        if path.exists() or path.is_symlink():
            raise KeyMaterialError(message)
        ensure_keys_dir(keys_dir)
        key = os.urandom(KEY_BYTES)
        doc = {
            "format": _PSEUDONYM_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "created_at": utc_now(),
            "key": base64.b64encode(key).decode("ascii"),
        }
        try:
            create_secret_file(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        except FileExistsError:
            raise KeyMaterialError(message) from None
        return cls(path, key)

    @classmethod
    def open(cls, keys_dir: Path) -> Pseudonymizer:
        path = Path(keys_dir) / PSEUDONYM_KEY_FILE
        doc = parse_json_object(read_secret_file(path, "pseudonym key"), path, "pseudonym key")
        check_format(doc, path, _PSEUDONYM_FORMAT)
        return cls(path, decode_key(doc.get("key"), path, "key"))

    @property
    def path(self) -> Path:
        return self._path

    def pseudonym(self, raw_id: str) -> str:
        """64 hex chars; the same for ids equal after :func:`normalize_id`."""
        if not isinstance(raw_id, str):
            raise DataError(f"customer id must be a string, got {type(raw_id).__name__}")
        canonical = normalize_id(raw_id)
        if not canonical:
            raise DataError("customer id is empty (or only whitespace); every record needs an id")
        try:
            data = canonical.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError("customer id is not valid Unicode text (it contains a lone surrogate)") from None
        mac = self._base.copy()
        mac.update(data)
        return mac.finalize().hex()

    def pseudonyms(self, raw_ids: Iterable[str]) -> list[str]:
        one = self.pseudonym
        return [one(raw_id) for raw_id in raw_ids]

    def __repr__(self) -> str:
        return f"Pseudonymizer({str(self._path)!r})"
