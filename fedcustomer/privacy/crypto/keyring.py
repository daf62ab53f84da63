"""The KEK keyring: the protocol the store's envelope encryption uses, and the file keyring.

Why envelope encryption: every customer gets a random 256-bit *data key* that encrypts
that customer's core fields (AES-GCM). The data key is stored only *wrapped* by a key
encryption key (KEK) from a :class:`KeyRing`. Rotating the KEK therefore re-wraps small
data keys (:func:`rewrap`) instead of re-encrypting the data, and erasing a customer
(crypto-shredding) means deleting one wrapped key. :mod:`.envelope` seals and opens
records with these pieces; :class:`FileKeyRing` is the default keyring, keeping
versioned KEKs in ``<keys_dir>/keyring.json`` (mode 0600, written atomically).

Plugging in a KMS
-----------------
Anything with the four :class:`KeyRing` methods works; the store relies on nothing else
(no file, no key bytes, no particular blob layout). A cloud-KMS adapter typically:

- ``active_version()`` returns the number of the KMS key version it currently encrypts with
  (for example the primary version of a key, mapped to an int);
- ``wrap(data_key, context)`` calls the KMS *Encrypt* operation on ``data_key`` with
  ``context`` as the encryption context / additional authenticated data, and returns
  ``WrappedKey(version, ciphertext_blob)``;
- ``unwrap(wrapped, context)`` calls *Decrypt* with the same context and raises
  :class:`KeyMaterialError` when the KMS refuses (disabled or destroyed version, wrong
  key, altered blob or context);
- ``versions()`` lists the key versions with their state ("active", "available" for
  decrypt-only, "retired" for destroyed).

The master key then never leaves the KMS; only wrapped data keys are stored locally.
An adapter may also offer ``refresh()``: the store calls it inside each write
transaction so that a long-lived handle wraps under the version active *now* (the file
keyring re-reads its file there); without it, ``active_version()`` must itself be current.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto.material import KEY_BYTES, NONCE_BYTES, TAG_BYTES, lp, lp_text, utc_now
from fedcustomer.privacy.crypto.secret_files import (
    FILE_FORMAT_VERSION,
    check_format,
    create_secret_file,
    decode_key,
    ensure_keys_dir,
    parse_json_object,
    read_secret_file,
    replace_secret_file,
)

try:  # POSIX only; on other systems key-file mutations are not serialised between processes.
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "KEYRING_FILE",
    "PKCS11_BLOB_PREFIX",
    "FileKeyRing",
    "KekInfo",
    "KeyRing",
    "WrappedKey",
    "data_key_context",
    "data_key_contexts",
    "rewrap",
    "unwrap_all",
]

KEYRING_FILE = "keyring.json"

_KEYRING_FORMAT = "fedcustomer-keyring"
_WRAP_LABEL = b"fedcustomer/kek-wrap/v1\x00"
# Blobs wrapped inside a PKCS#11 token start with this (file-keyring blobs start with a random nonce),
# so each backend can tell the other's wrapped keys apart and say so.
PKCS11_BLOB_PREFIX = b"fcP11gcm1\x00"
_DATA_KEY_LABEL = b"fedcustomer/data-key/v1\x00"

ACTIVE, AVAILABLE, RETIRED = "active", "available", "retired"
_STATUSES = (ACTIVE, AVAILABLE, RETIRED)

_T = TypeVar("_T")


# --- wrapped keys and the keyring protocol ------------------------------------------------------


@dataclass(frozen=True, repr=False)
class WrappedKey:
    """A per-customer data key wrapped by one KEK version (``blob`` = nonce || ciphertext+tag)."""

    kek_version: int
    blob: bytes

    def to_bytes(self) -> bytes:
        """One self-describing byte string (4-byte version || blob), e.g. for a single BLOB column."""
        return struct.pack(">I", self.kek_version) + self.blob

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedKey:
        if len(data) < 5:
            raise KeyMaterialError(f"wrapped data key is {len(data)} bytes: too short to be a WrappedKey")
        return cls(struct.unpack(">I", data[:4])[0], bytes(data[4:]))

    def __repr__(self) -> str:
        return f"WrappedKey(kek_version={self.kek_version}, blob=<{len(self.blob)} bytes>)"


@dataclass(frozen=True)
class KekInfo:
    """Public facts about one KEK version (never its material)."""

    version: int
    created_at: str  # ISO 8601 UTC
    status: str  # "active" | "available" | "retired"


@runtime_checkable
class KeyRing(Protocol):
    """Wraps and unwraps data keys; a file keyring or an adapter over an external KMS."""

    def active_version(self) -> int: ...

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...

    def versions(self) -> list[KekInfo]: ...


def data_key_context(dataset: str, pseudonym: str) -> bytes:
    """AAD binding a wrapped data key to its dataset and customer, so it cannot be swapped."""
    return _DATA_KEY_LABEL + lp_text(dataset) + lp_text(pseudonym)


def data_key_context_head(dataset: str) -> bytes:
    """:func:`data_key_context` up to the pseudonym, which follows as ``lp(pseudonym as UTF-8)``."""
    return _DATA_KEY_LABEL + lp_text(dataset)


def data_key_contexts(dataset: str, pseudonyms: Sequence[str]) -> list[bytes]:
    """:func:`data_key_context` of many customers of one dataset (byte for byte the same)."""
    head = data_key_context_head(dataset)
    return [head + lp(p.encode("utf-8")) for p in pseudonyms]


def unwrap_all(keyring: KeyRing, wrapped: Sequence[WrappedKey], contexts: Sequence[bytes]) -> list[bytes]:
    """Many data keys at once: the keyring's own ``unwrap_many`` where it has one, else one
    :meth:`KeyRing.unwrap` each (a KMS or token adapter needs nothing new)."""
    if len(wrapped) != len(contexts):
        raise KeyMaterialError("unwrapping needs one context per wrapped data key")
    bulk = getattr(keyring, "unwrap_many", None)
    if bulk is not None:
        keys: list[bytes] = bulk(wrapped, contexts)
        return keys
    return [keyring.unwrap(w, c) for w, c in zip(wrapped, contexts)]


def rewrap(keyring: KeyRing, wrapped: WrappedKey, context: bytes) -> WrappedKey:
    """Re-wrap a data key under the keyring's active KEK (key rotation without re-encrypting data).

    A key already wrapped by the active version is returned unchanged, so an interrupted
    rotation can simply be run again.
    """
    active = keyring.active_version()
    if wrapped.kek_version == active:
        return wrapped
    return keyring.wrap(keyring.unwrap(wrapped, context), context)


# --- the default file keyring -----------------------------------------------------------------


@dataclass
class _Kek:
    version: int
    created_at: str
    status: str
    key: bytes | None  # None once retired (material destroyed)
    retired_at: str | None = None


class FileKeyRing:
    """Versioned 256-bit KEKs in ``<keys_dir>/keyring.json`` (mode 0600), one of them active.

    Statuses: ``active`` wraps new data keys and unwraps; ``available`` only unwraps (an
    older version awaiting re-wrap); ``retired`` has had its key material destroyed.
    Every change is written atomically (temp file + rename) under a file lock, after
    re-reading the file so concurrent administrators do not lose each other's changes.
    """

    def __init__(self, path: Path, keks: dict[int, _Kek]) -> None:
        """Use :meth:`create` or :meth:`open`; the constructor does no validation or I/O."""
        self._path = path
        self._keks = keks
        self._aead: dict[int, AESGCM] = {}
        self._active = self._find_active(keks, path)

    # --- construction ---------------------------------------------------------
    @classmethod
    def create(cls, keys_dir: Path) -> FileKeyRing:
        """Create a keyring with one active KEK; refuses to overwrite an existing keyring."""
        keys_dir = Path(keys_dir)
        path = keys_dir / KEYRING_FILE
        if path.exists() or path.is_symlink():
            raise KeyMaterialError(
                f"a keyring already exists at {path}; refusing to overwrite key material (open it instead)"
            )
        ensure_keys_dir(keys_dir)
        keks = {1: _Kek(1, utc_now(), ACTIVE, os.urandom(KEY_BYTES))}
        try:
            create_secret_file(path, _dump_keyring(keks))
        except FileExistsError:
            raise KeyMaterialError(
                f"a keyring already exists at {path}; refusing to overwrite key material (open it instead)"
            ) from None
        return cls(path, keks)

    @classmethod
    def open(cls, keys_dir: Path) -> FileKeyRing:
        """Load an existing keyring, validating permissions and structure."""
        path = Path(keys_dir) / KEYRING_FILE
        return cls(path, _load_keyring(path))

    @property
    def path(self) -> Path:
        return self._path

    # --- KeyRing protocol -----------------------------------------------------
    def active_version(self) -> int:
        return self._active

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """AES-GCM-encrypt ``data_key`` under the active KEK; AAD = label || version || context."""
        if not isinstance(data_key, (bytes, bytearray)) or not data_key:
            raise KeyMaterialError("data key to wrap must be non-empty bytes")
        version = self._active
        kek = self._keks[version]
        if kek.status != ACTIVE or kek.key is None:  # never wrap under a retired or demoted version
            raise KeyMaterialError(
                f"KEK version {version} of the keyring at {self._path} is not active; refresh it"
            )
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._aead_for(version).encrypt(nonce, bytes(data_key), _wrap_aad(version, context))
        return WrappedKey(version, blob)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Recover a data key; KeyMaterialError if its KEK is unknown, retired, or not the one that wrapped it."""
        version = wrapped.kek_version
        if version not in self._keks:
            self._reload()  # another process may have rotated since this keyring was opened
        kek = self._keks.get(version)
        if kek is None:
            known = ", ".join(str(v) for v in sorted(self._keks))
            raise KeyMaterialError(
                f"the data key was wrapped by KEK version {version}, which the keyring at {self._path} does not "
                f"have (it has versions {known}): this is the wrong keyring for this store, or an older backup"
            )
        if kek.key is None:
            raise KeyMaterialError(
                f"the data key was wrapped by KEK version {version}, retired at {kek.retired_at}; its material "
                f"was destroyed, so this data key cannot be recovered (re-wrap data keys before retiring a version)"
            )
        blob = wrapped.blob
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise KeyMaterialError(
                f"wrapped data key for KEK version {version} is {len(blob)} bytes: truncated or not a wrapped key"
            )
        try:
            return self._aead_for(version).decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _wrap_aad(version, context)
            )
        except InvalidTag:
            if blob.startswith(PKCS11_BLOB_PREFIX):
                raise KeyMaterialError(
                    f"the data key was wrapped inside a PKCS#11 token, not by the keyring file {self._path}: "
                    f'configure the token in [keyring] of partner.toml (backend = "pkcs11")'
                ) from None
            raise KeyMaterialError(
                f"KEK version {version} of the keyring at {self._path} could not unwrap the data key: this keyring "
                f"did not wrap it (another partner's keyring copied in?), or the wrapped key or its context "
                f"(dataset, pseudonym) was altered"
            ) from None

    def unwrap_many(self, wrapped: Sequence[WrappedKey], contexts: Sequence[bytes]) -> list[bytes]:
        """:meth:`unwrap` of many data keys: the same AEAD and AAD without the per-call overhead.

        A key that does not open at once (a version this keyring does not hold or has
        retired, a short or altered blob) goes through :meth:`unwrap`, which re-reads the
        keyring or raises that key's own error.
        """
        if len(wrapped) != len(contexts):
            raise KeyMaterialError("unwrapping needs one context per wrapped data key")
        ready: dict[int, tuple[AESGCM, bytes] | None] = {}
        keks = self._keks
        out: list[bytes] = []
        append = out.append
        for item, context in zip(wrapped, contexts):
            version, blob = item.kek_version, item.blob
            if version not in ready:
                kek = keks.get(version)
                usable = kek is not None and kek.key is not None
                ready[version] = (self._aead_for(version), _wrap_aad(version, b"")) if usable else None
            found = ready[version]
            if found is not None and len(blob) >= NONCE_BYTES + TAG_BYTES:
                try:
                    append(found[0].decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], found[1] + context))
                    continue
                except InvalidTag:
                    pass
            append(self.unwrap(item, context))  # re-reads the keyring or raises this key's error
            if self._keks is not keks:  # re-read: decide every version again from what it holds now
                keks = self._keks
                ready.clear()
        return out

    def kek_opener(self, version: int) -> tuple[Callable[[bytes, bytes, bytes], bytes], bytes] | None:
        """For a loop that unwraps many data keys of one KEK version in line: the KEK's AES-GCM
        ``decrypt(nonce, ciphertext, aad)`` and the AAD's head (the context follows it), or None
        when this keyring does not hold the version's key now (the caller then uses
        :meth:`unwrap_many`, which re-reads the keyring or raises the key's own error).

        The same AEAD and AAD as :meth:`unwrap`; the KEK itself never leaves the keyring.
        """
        kek = self._keks.get(version)
        if kek is None or kek.key is None:
            return None
        return self._aead_for(version).decrypt, _wrap_aad(version, b"")

    def versions(self) -> list[KekInfo]:
        return [KekInfo(k.version, k.created_at, k.status) for _, k in sorted(self._keks.items())]

    def refresh(self) -> None:
        """Re-read the keyring file: adopt the version active on disk now.

        A handle opened before another process rotated and retired would otherwise keep
        wrapping new data keys under the retired version (unrecoverable). The store calls
        this inside each write transaction, where no retirement can interleave.
        """
        self._install(_load_keyring(self._path))

    # --- administration -------------------------------------------------------
    def rotate(self) -> int:
        """Add a new KEK version and make it active; the previous active one stays available."""

        def change(keks: dict[int, _Kek]) -> int:
            new_version = max(keks) + 1
            for kek in keks.values():
                if kek.status == ACTIVE:
                    kek.status = AVAILABLE
            keks[new_version] = _Kek(new_version, utc_now(), ACTIVE, os.urandom(KEY_BYTES))
            return new_version

        return self._mutate(change)

    def retire(self, version: int) -> None:
        """Destroy one version's key material for good; refuses the active version.

        Data keys still wrapped by it become unrecoverable, so :func:`rewrap` them first.
        Retiring an already retired version does nothing.
        """

        def change(keks: dict[int, _Kek]) -> None:
            kek = keks.get(version)
            if kek is None:
                known = ", ".join(str(v) for v in sorted(keks))
                raise KeyMaterialError(
                    f"keyring at {self._path} has no KEK version {version} (it has {known})"
                )
            if kek.status == ACTIVE:
                raise KeyMaterialError(
                    f"KEK version {version} is the active version of the keyring at {self._path} and cannot be "
                    f"retired; rotate to a new version and re-wrap data keys first"
                )
            if kek.status == AVAILABLE:
                kek.status, kek.key, kek.retired_at = RETIRED, None, utc_now()

        self._mutate(change)

    # --- internals --------------------------------------------------------------
    def _aead_for(self, version: int) -> AESGCM:
        aead = self._aead.get(version)
        if aead is None:
            key = self._keks[version].key
            assert key is not None
            aead = self._aead[version] = AESGCM(key)
        return aead

    def _reload(self) -> None:
        try:
            keks = _load_keyring(self._path)
        except KeyMaterialError:
            return
        self._install(keks)

    def _install(self, keks: dict[int, _Kek]) -> None:
        active = self._find_active(keks, self._path)
        self._keks, self._active = keks, active
        self._aead = {}

    def _mutate(self, change: Callable[[dict[int, _Kek]], _T]) -> _T:
        """Apply ``change`` to the latest on-disk state under a lock; persist, then adopt it."""
        with self._locked():
            keks = _load_keyring(self._path)
            result = change(keks)
            self._find_active(keks, self._path)
            replace_secret_file(self._path, _dump_keyring(keks))
        self._install(keks)
        return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        # Lock the keys directory itself: no lock file to leave behind or to be tampered with.
        try:
            fd = os.open(self._path.parent, os.O_RDONLY)
        except OSError as exc:
            raise KeyMaterialError(
                f"keys directory {self._path.parent} could not be opened ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _find_active(keks: dict[int, _Kek], path: Path) -> int:
        active = [v for v, k in keks.items() if k.status == ACTIVE]
        if len(active) != 1:
            raise KeyMaterialError(
                f"keyring at {path} is malformed: it must have exactly one active KEK version, has {len(active)}"
            )
        return active[0]

    def __repr__(self) -> str:
        return f"FileKeyRing({str(self._path)!r}, active={self._active}, versions={len(self._keks)})"


def _wrap_aad(version: int, context: bytes) -> bytes:
    return _WRAP_LABEL + struct.pack(">I", version) + bytes(context)


def _dump_keyring(keks: dict[int, _Kek]) -> bytes:
    entries = []
    for version, kek in sorted(keks.items()):
        entry: dict[str, Any] = {"version": version, "created_at": kek.created_at, "status": kek.status}
        if kek.key is not None:
            entry["key"] = base64.b64encode(kek.key).decode("ascii")
        if kek.retired_at is not None:
            entry["retired_at"] = kek.retired_at
        entries.append(entry)
    doc = {"format": _KEYRING_FORMAT, "format_version": FILE_FORMAT_VERSION, "keks": entries}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _load_keyring(path: Path) -> dict[int, _Kek]:
    doc = parse_json_object(read_secret_file(path, "keyring"), path, "keyring")
    check_format(doc, path, _KEYRING_FORMAT)
    entries = doc.get("keks")
    if not isinstance(entries, list) or not entries:
        raise KeyMaterialError(f"{path}: field 'keks' must be a non-empty list; restore the file from backup")
    keks: dict[int, _Kek] = {}
    for i, entry in enumerate(entries):
        where = f"keks[{i}]"
        if not isinstance(entry, dict):
            raise KeyMaterialError(f"{path}: {where} must be an object; restore the file from backup")
        version = entry.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**32:
            raise KeyMaterialError(f"{path}: {where}.version must be an integer >= 1, got {version!r}")
        if version in keks:
            raise KeyMaterialError(
                f"{path}: {where}.version {version} appears twice; restore the file from backup"
            )
        status = entry.get("status")
        if status not in _STATUSES:
            raise KeyMaterialError(
                f"{path}: {where}.status must be one of {', '.join(_STATUSES)}, got {status!r}"
            )
        created_at = entry.get("created_at")
        if not isinstance(created_at, str):
            raise KeyMaterialError(f"{path}: {where}.created_at must be an ISO 8601 string")
        if status == RETIRED:
            if "key" in entry:
                raise KeyMaterialError(
                    f"{path}: {where} is retired but still holds key material; remove its 'key' field"
                )
            key = None
        else:
            key = decode_key(entry.get("key"), path, f"{where}.key")
        retired_at = entry.get("retired_at")
        keks[version] = _Kek(
            version, created_at, status, key, retired_at if isinstance(retired_at, str) else None
        )
    FileKeyRing._find_active(keks, path)
    return keks
