"""Files written whole or not at all: a reader never sees half a summary, key or index.

Every writer in the project goes through :func:`atomic_write_bytes`: a temporary file in
the same folder, flushed and fsynced, then renamed over the target (atomic on POSIX), and
removed again if anything fails. ``mode`` sets the permissions at creation (e.g. 0o600 for
secrets), so a secret is never readable by others, not even for a moment; ``exact=True``
also sets them past the umask and any inherited default ACL, before the file gets its name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666, exact: bool = False
) -> Path:
    """Replace ``path`` with ``data`` atomically; ``mode`` is filtered by the umask unless ``exact``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if exact:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, mode: int = 0o666, exact: bool = False
) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode, exact=exact)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(path: str | os.PathLike[str], data: bytes, flags: int, mode: int) -> None:
    """Open ``path`` with ``flags`` (write access, e.g. create-exclusive or append) and write all of
    ``data``: ``os.write`` may write less than asked, so it is called until nothing is left."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
