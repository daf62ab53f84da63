"""Envelope encryption of core-tier fields, the KEK keyring, and keyed customer pseudonyms.

Why envelope encryption: every customer gets a random 256-bit *data key* that encrypts
that customer's core fields (AES-GCM). The data key is stored only *wrapped* by a key
encryption key (KEK) from a :class:`KeyRing`. Rotating the KEK therefore re-wraps small
data keys (:func:`rewrap`) instead of re-encrypting the data, and erasing a customer
(crypto-shredding) means deleting one wrapped key.

Layers, safest first:

- :class:`FieldCipher` -- "encrypt this field for this record". Callers never see nonces
  or associated data. A token is ``version byte || nonce || ciphertext+tag``; the AAD binds
  the format version, dataset, field name and customer pseudonym, so a token altered or
  moved to another field, customer or dataset fails with :class:`IntegrityError`.
- :class:`Pseudonymizer` -- keyed HMAC-SHA256 pseudonyms for customer ids (normalised with
  Unicode NFKC, stripped, upper-cased; domain-separated), with its own key file.
- :class:`KeyRing` -- the protocol the store uses to wrap and unwrap data keys, and
  :class:`FileKeyRing`, the default implementation keeping versioned KEKs in
  ``<keys_dir>/keyring.json`` (mode 0600, written atomically).

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
import binascii
import contextlib
import json
import os
import stat
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from hmac import compare_digest
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcustomer.errors import DataError, IntegrityError, KeyMaterialError

try:  # POSIX only; on other systems key-file mutations are not serialised between processes.
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "KEY_BYTES",
    "FileKeyRing",
    "FieldCipher",
    "KekInfo",
    "KeyRing",
    "Pseudonymizer",
    "WrappedKey",
    "data_key_context",
    "new_data_key",
    "rewrap",
]

KEY_BYTES = 32  # AES-256 for KEKs, data keys and the pseudonym key
NONCE_BYTES = 12  # AES-GCM standard nonce; random per encryption
TAG_BYTES = 16

KEYRING_FILE = "keyring.json"
PSEUDONYM_KEY_FILE = "pseudonym.key"

_KEYRING_FORMAT = "fedcustomer-keyring"
_PSEUDONYM_FORMAT = "fedcustomer-pseudonym-key"
_FILE_FORMAT_VERSION = 1

_FIELD_FORMAT_V1 = b"\x01"  # first byte of every field token and of its AAD
_WRAP_LABEL = b"fedcustomer/kek-wrap/v1\x00"
_DATA_KEY_LABEL = b"fedcustomer/data-key/v1\x00"
_PSEUDONYM_LABEL = b"fedcustomer/pseudonym/v1\x00"

ACTIVE, AVAILABLE, RETIRED = "active", "available", "retired"
_STATUSES = (ACTIVE, AVAILABLE, RETIRED)


# --- small helpers -------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _lp(data: bytes) -> bytes:
    """Length-prefix ``data`` so concatenated AAD parts can never be confused."""
    return struct.pack(">I", len(data)) + data


@lru_cache(maxsize=4096)
def _lp_text(text: str) -> bytes:
    """Cached length-prefixed UTF-8 of a field name or dataset (few distinct values)."""
    return _lp(text.encode("utf-8"))


def _check_key_bytes(key: object, what: str) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise KeyMaterialError(f"{what} must be {KEY_BYTES} random bytes, got {size}")
    return bytes(key)


def _write_secret_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temp file, atomically.

    ``replace=False`` refuses (FileExistsError) when ``path`` already exists, without a
    window in which a half-written key file is visible.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_no_overwrite(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _link_no_overwrite(tmp: Path, path: Path) -> None:
    """Publish ``tmp`` as ``path`` only if ``path`` does not exist (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)  # atomic and never overwrites
    except FileExistsError:
        raise
    except OSError:  # filesystem without hard links: check, then rename (tiny race, same result)
        if path.exists() or path.is_symlink():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _trusted_owner(uid: int) -> bool:
    """The partner node's own user, or root (mounted secrets); anyone else could swap the key."""
    return uid in (os.geteuid(), 0)


def check_keys_dir(keys_dir: Path) -> None:
    """Refuse a keys directory that another user could write to (they could plant or swap keys)."""
    if os.name != "posix":  # pragma: no cover - permissions are POSIX-only here
        return
    try:
        st = os.stat(keys_dir)
    except FileNotFoundError:
        return  # the missing key file is reported by the caller, with the fix
    except OSError as exc:
        raise KeyMaterialError(f"keys directory {keys_dir} could not be inspected ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyMaterialError(f"keys directory {keys_dir} is not a directory")
    if st.st_mode & 0o022:
        raise KeyMaterialError(
            f"keys directory {keys_dir} is writable by group or others (mode {st.st_mode & 0o777:04o}); "
            f"anyone who can write there can replace the keys: restrict it with: chmod 700 {keys_dir}"
        )
    if not _trusted_owner(st.st_uid):
        raise KeyMaterialError(
            f"keys directory {keys_dir} is owned by user id {st.st_uid}, not by the partner node's user "
            f"({os.geteuid()}); chown it to the node's user"
        )


def _read_secret_file(path: Path, what: str) -> bytes:
    """Read a key file, refusing one that is missing, not a regular file, or too permissive.

    Opened non-blocking so a FIFO or device planted at the path is refused instead of
    hanging the process; the directory holding it must not be writable by others either.
    """
    check_keys_dir(path.parent)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)  # symlinks allowed (mounted secrets); the target is checked
    except FileNotFoundError:
        raise KeyMaterialError(
            f"{what} not found at {path}: initialise this partner's keys, or restore the file from backup"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(
            f"{what} at {path} could not be opened ({exc.strerror}); it must be a regular file "
            f"readable by the partner node's user (chmod 600 {path})"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyMaterialError(
                f"{what} at {path} is not a regular file (a pipe, device or directory); replace it with the "
                f"key file from backup"
            )
        if os.name == "posix" and st.st_mode & 0o077:
            raise KeyMaterialError(
                f"{what} at {path} is accessible to group or others (mode {st.st_mode & 0o777:04o}); "
                f"restrict it with: chmod 600 {path}"
            )
        if os.name == "posix" and not _trusted_owner(st.st_uid):
            raise KeyMaterialError(
                f"{what} at {path} is owned by user id {st.st_uid}, not by the partner node's user "
                f"({os.geteuid()}); chown it to the node's user"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            return fh.read()
    except OSError as exc:
        raise KeyMaterialError(f"{what} at {path} could not be read ({exc.strerror})") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _ensure_keys_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(keys_dir, 0o700)


def _parse_json_object(raw: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise KeyMaterialError(
            f"{what} at {path} is malformed: not valid JSON{where}; restore it from backup"
        ) from None
    if not isinstance(doc, dict):
        raise KeyMaterialError(
            f"{what} at {path} is malformed: expected a JSON object; restore it from backup"
        )
    return doc


def _decode_key(value: object, path: Path, where: str) -> bytes:
    if not isinstance(value, str):
        raise KeyMaterialError(f"{path}: {where} must be a base64 string; restore the file from backup")
    try:
        key = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyMaterialError(f"{path}: {where} is not valid base64; restore the file from backup") from None
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(
            f"{path}: {where} is {len(key)} bytes, expected {KEY_BYTES}; restore the file from backup"
        )
    return key


def _check_format(doc: dict[str, Any], path: Path, expected: str) -> None:
    if doc.get("format") != expected:
        raise KeyMaterialError(
            f"{path}: field 'format' is {doc.get('format')!r}, expected {expected!r}: "
            f"this is not the right kind of key file"
        )
    if doc.get("format_version") != _FILE_FORMAT_VERSION:
        raise KeyMaterialError(
            f"{path}: field 'format_version' is {doc.get('format_version')!r}; this version of fedcustomer "
            f"reads format_version {_FILE_FORMAT_VERSION}"
        )


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
    return _DATA_KEY_LABEL + _lp_text(dataset) + _lp_text(pseudonym)


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return os.urandom(KEY_BYTES)


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
        _ensure_keys_dir(keys_dir)
        keks = {1: _Kek(1, _now(), ACTIVE, os.urandom(KEY_BYTES))}
        try:
            _write_secret_file(path, _dump_keyring(keks), replace=False)
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
            raise KeyMaterialError(
                f"KEK version {version} of the keyring at {self._path} could not unwrap the data key: this keyring "
                f"did not wrap it (another partner's keyring copied in?), or the wrapped key or its context "
                f"(dataset, pseudonym) was altered"
            ) from None

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
            keks[new_version] = _Kek(new_version, _now(), ACTIVE, os.urandom(KEY_BYTES))
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
                kek.status, kek.key, kek.retired_at = RETIRED, None, _now()

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

    def _mutate(self, change: Any) -> Any:
        """Apply ``change`` to the latest on-disk state under a lock; persist, then adopt it."""
        with self._locked():
            keks = _load_keyring(self._path)
            result = change(keks)
            self._find_active(keks, self._path)
            _write_secret_file(self._path, _dump_keyring(keks), replace=True)
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
    doc = {"format": _KEYRING_FORMAT, "format_version": _FILE_FORMAT_VERSION, "keks": entries}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _load_keyring(path: Path) -> dict[int, _Kek]:
    doc = _parse_json_object(_read_secret_file(path, "keyring"), path, "keyring")
    _check_format(doc, path, _KEYRING_FORMAT)
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
            key = _decode_key(entry.get("key"), path, f"{where}.key")
        retired_at = entry.get("retired_at")
        keks[version] = _Kek(
            version, created_at, status, key, retired_at if isinstance(retired_at, str) else None
        )
    FileKeyRing._find_active(keks, path)
    return keks


# --- field encryption --------------------------------------------------------------------------


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
        self._prefix = _FIELD_FORMAT_V1 + _lp_text(dataset)
        self._cache: tuple[bytes, AESGCM] | None = None

    @property
    def dataset(self) -> str:
        return self._dataset

    def _aead(self, data_key: bytes) -> AESGCM:
        cache = self._cache
        if cache is not None and type(data_key) is bytes and compare_digest(cache[0], data_key):
            return cache[1]
        key = _check_key_bytes(data_key, "data key")
        aead = AESGCM(key)
        self._cache = (key, aead)
        return aead

    def _aad(self, field: str, pseudonym: str) -> bytes:
        return self._prefix + _lp_text(field) + _lp_text(pseudonym)

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


# --- pseudonyms --------------------------------------------------------------------------------


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
        base = crypto_hmac.HMAC(_check_key_bytes(key, "pseudonym key"), hashes.SHA256())
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
        _ensure_keys_dir(keys_dir)
        key = os.urandom(KEY_BYTES)
        doc = {
            "format": _PSEUDONYM_FORMAT,
            "format_version": _FILE_FORMAT_VERSION,
            "created_at": _now(),
            "key": base64.b64encode(key).decode("ascii"),
        }
        try:
            _write_secret_file(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), replace=False)
        except FileExistsError:
            raise KeyMaterialError(message) from None
        return cls(path, key)

    @classmethod
    def open(cls, keys_dir: Path) -> Pseudonymizer:
        path = Path(keys_dir) / PSEUDONYM_KEY_FILE
        doc = _parse_json_object(_read_secret_file(path, "pseudonym key"), path, "pseudonym key")
        _check_format(doc, path, _PSEUDONYM_FORMAT)
        return cls(path, _decode_key(doc.get("key"), path, "key"))

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
