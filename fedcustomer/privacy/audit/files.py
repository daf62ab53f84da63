"""The log's files on disk: descriptors, the writers' lock, the cached head, consistent snapshots.

Concurrency. Writers take an exclusive ``fcntl.flock`` on ``audit.lock``, read the head
under the lock (cached by file size and inode, so usually no read at all) and write each
line with one ``os.write`` on an ``O_APPEND`` descriptor. Readers snapshot file sizes under
a shared lock and read up to them, so they never see half an entry. The log is safe to
use from several processes and threads; descriptors are reopened after ``fork``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fedcustomer.errors import ConfigError, IntegrityError
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    HEX64,
    LOCK_NAME,
    LOG_NAME,
    PUBLIC_KEY_NAME,
    REPAIR_PENDING_NAME,
    Checkpoint,
    parse_json_line,
)


class LogFiles:
    """An audit directory's files and this process's descriptors on them.

    The base of :class:`~fedcustomer.privacy.audit.writer.AuditLog`: everything that must
    happen under the writers' lock (head, last checkpoint) is cached here.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.log_path = self.directory / LOG_NAME
        self.checkpoint_path = self.directory / CHECKPOINT_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.public_key_file = self.directory / PUBLIC_KEY_NAME
        self.repair_pending_path = self.directory / REPAIR_PENDING_NAME
        self._mutex = threading.Lock()
        self._pid: int | None = None
        self._log_fd: int | None = None
        self._lock_fd: int | None = None
        self._head_key: tuple[int, int] | None = None  # (inode, size) the cached head belongs to
        self._head: tuple[int, str] = (0, GENESIS_HASH)
        self._cp_size = -1
        self._cp_last: Checkpoint | None = None

    def __del__(self) -> None:  # release descriptors of a log dropped without close()
        if getattr(self, "_pid", None) == os.getpid():
            self._drop_fds()

    # --- descriptors and locking -----------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._pid == os.getpid() and self._log_fd is not None:
            return
        if self._pid is not None:  # inherited across fork: flock on a shared description would not exclude
            self._drop_fds()
        if not self.directory.is_dir():
            raise ConfigError(
                f"audit directory {self.directory} does not exist; create it with AuditLog.open()"
            )
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._pid = os.getpid()
        self._head_key = None
        self._cp_size = -1

    def _drop_fds(self) -> None:
        for fd in (self._log_fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._log_fd = self._lock_fd = None
        self._pid = None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._mutex:
            self._ensure_open()
            assert self._lock_fd is not None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _snapshot_sizes(self) -> tuple[int, int]:
        return snapshot_sizes(self.directory)

    # --- head ----------------------------------------------------------------------------------
    def _refresh_head(self) -> tuple[int, str, int, bool]:
        """Head (seq, hash), file size and whether the file ends in a torn line; under the lock."""
        assert self._log_fd is not None
        st = os.fstat(self._log_fd)
        try:
            path_ino = os.stat(self.log_path).st_ino
        except FileNotFoundError:
            path_ino = -1
        if path_ino != st.st_ino:  # file removed or replaced since we opened it
            os.close(self._log_fd)
            self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            st = os.fstat(self._log_fd)
            self._head_key = None
        key = (st.st_ino, st.st_size)
        if key == self._head_key:
            return self._head[0], self._head[1], st.st_size, False
        line, torn, _ = last_line(self._log_fd, st.st_size)
        if line is None:
            head = (0, GENESIS_HASH)
        else:
            try:
                d = parse_json_line(line)
                head = (int(d["seq"]), str(d["hash"]))
                if not HEX64.fullmatch(head[1]):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(
                    f"the last entry of {self.log_path} is not a valid audit entry; refusing to append. "
                    "Run `fedcustomer audit verify` to locate the damage"
                ) from None
        self._head = head
        self._head_key = None if torn else key
        return head[0], head[1], st.st_size, torn

    # --- checkpoints ---------------------------------------------------------------------------
    def _last_checkpoint(self) -> Checkpoint | None:
        try:
            size = self.checkpoint_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == self._cp_size:
            return self._cp_last
        last: Checkpoint | None = None
        if size:
            fd = os.open(self.checkpoint_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                line, _, _ = last_line(fd, size)
            finally:
                os.close(fd)
            try:
                last = Checkpoint.from_dict(parse_json_line(line or b""))
            except ValueError:
                raise IntegrityError(
                    f"the last checkpoint in {self.checkpoint_path} is malformed; run `fedcustomer audit verify`"
                ) from None
        self._cp_size, self._cp_last = size, last
        return last


def snapshot_sizes(directory: Path) -> tuple[int, int]:
    """Sizes of the log and checkpoint files in ``directory``, taken under a shared lock."""
    log_path, checkpoint_path, lock_path = (
        directory / LOG_NAME,
        directory / CHECKPOINT_NAME,
        directory / LOCK_NAME,
    )

    def sizes() -> tuple[int, int]:
        return (
            log_path.stat().st_size if log_path.exists() else 0,
            checkpoint_path.stat().st_size if checkpoint_path.exists() else 0,
        )

    if not lock_path.exists():
        return sizes()
    fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return sizes()
    finally:
        os.close(fd)  # closing releases the lock


def append_bytes(fd: int, data: bytes, size_before: int) -> None:
    """Write ``data`` at the end; on failure cut the file back so no partial line stays."""
    try:
        n = os.write(fd, data)
        while n < len(data):  # only on a nearly full disk; still under the lock
            n += os.write(fd, data[n:])
    except OSError as exc:
        try:
            os.ftruncate(fd, size_before)
        except OSError:
            pass
        if exc.errno == errno.ENOSPC:
            raise IntegrityError(
                "audit log could not be written: no space left on device; nothing was logged"
            ) from None
        raise


def write_new_file(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` atomically with ``data`` unless it exists; True if this call created it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: keep theirs
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def last_line(fd: int, size: int) -> tuple[bytes | None, bool, int]:
    """Last complete line of the first ``size`` bytes of ``fd``.

    Returns (line without newline or None, torn, end) where ``torn`` says the data does not
    end with a newline and ``end`` is the offset just after the returned line.
    """
    if size == 0:
        return None, False, 0
    torn = os.pread(fd, 1, size - 1) != b"\n"
    # find the newline that ends the last complete line
    pos, buf, block = size, b"", 8192
    end = -1
    while pos > 0:
        start = max(0, pos - block)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        if end < 0:
            i = buf.rfind(b"\n")
            if i >= 0:
                end = pos + i  # offset of the final complete line's newline
        if end >= 0:
            j = buf.rfind(b"\n", 0, end - pos)
            if j >= 0 or pos == 0:
                return buf[j + 1 : end - pos], torn, end + 1
        block *= 2
    return None, torn, 0  # no newline at all: only a torn fragment


def lines_upto(f: BinaryIO, size: int) -> Iterator[bytes]:
    """Lines of a binary file object, stopping at ``size`` bytes (a consistent snapshot)."""
    read = 0
    for raw in f:
        if read + len(raw) > size:
            raw = raw[: size - read]
            if raw:
                yield raw
            return
        read += len(raw)
        yield raw


def read_ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"
