"""Key files on disk: created 0600, never silently overwritten, and refused when unsafe.

A key file is only as safe as the directory and the file around it: reading refuses a
keys directory others can write to, a file others can read, a FIFO or device planted at
the path, and a file owned by another user. Replacing a key file (keyring rotation) goes
through the project's atomic whole-file write with mode 0600; creating one must never
replace a key that already exists, which that helper cannot promise, so
:func:`create_secret_file` publishes the new file with a hard link instead.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_bytes, fsync_dir
from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto.material import KEY_BYTES

__all__ = [
    "FILE_FORMAT_VERSION",
    "check_format",
    "check_keys_dir",
    "create_secret_file",
    "decode_key",
    "ensure_keys_dir",
    "parse_json_object",
    "read_secret_file",
    "replace_secret_file",
    "shred_secret_file",
]

FILE_FORMAT_VERSION = 1


def replace_secret_file(path: Path, data: bytes) -> None:
    """Replace the key file ``path`` with ``data`` atomically, created with mode 0600."""
    atomic_write_bytes(path, data, mode=0o600)


def shred_secret_file(path: Path) -> None:
    """Overwrite a key file with random bytes, sync, then unlink it (a key retired for good).

    Best effort against the disk: a journaling or copy-on-write filesystem, or a backup,
    may still hold the old blocks, so a retired key is also one no store still needs.
    A missing file is not an error (the key was already removed).
    """
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise KeyMaterialError(
            f"key file {path} could not be opened to destroy it ({exc.strerror})"
        ) from None
    try:
        noise = memoryview(os.urandom(os.fstat(fd).st_size))
        while noise:
            noise = noise[os.write(fd, noise) :]
        os.fsync(fd)
    except OSError as exc:
        raise KeyMaterialError(f"key file {path} could not be overwritten ({exc.strerror})") from None
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fsync_dir(path.parent)


def create_secret_file(path: Path, data: bytes) -> None:
    """Write a new key file with mode 0600; FileExistsError when ``path`` already exists.

    There is no window in which a half-written key file is visible, and an existing key
    is never replaced, even by a concurrent writer.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _link_no_overwrite(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


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


def read_secret_file(path: Path, what: str) -> bytes:
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


def ensure_keys_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        os.chmod(keys_dir, 0o700)


def parse_json_object(raw: bytes, path: Path, what: str) -> dict[str, Any]:
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


def decode_key(value: object, path: Path, where: str) -> bytes:
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


def check_format(doc: dict[str, Any], path: Path, expected: str) -> None:
    if doc.get("format") != expected:
        raise KeyMaterialError(
            f"{path}: field 'format' is {doc.get('format')!r}, expected {expected!r}: "
            f"this is not the right kind of key file"
        )
    if doc.get("format_version") != FILE_FORMAT_VERSION:
        raise KeyMaterialError(
            f"{path}: field 'format_version' is {doc.get('format_version')!r}; this version of fedcustomer "
            f"reads format_version {FILE_FORMAT_VERSION}"
        )
