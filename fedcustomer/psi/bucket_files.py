"""The files a streaming PSI party keeps its values in: fixed-width records in hash buckets.

Why apart from :mod:`fedcustomer.psi.stream`: the on-disk layout (record types, bucket routing
by a value's first two bytes, private 0600 appends, slices of packed files) is shared by the
plain streaming party and the intersection-sum parties built on it, and holds no protocol step.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedcustomer.common.files import write_all
from fedcustomer.errors import IntegrityError
from fedcustomer.psi.core import POINT_BYTES

RECORD = np.dtype([("v", f"S{POINT_BYTES}"), ("r", "<u8")])  # blinded value, the party's own row
VALUE = np.dtype(f"S{POINT_BYTES}")
FLUSH_RECORDS = 1 << 17  # records buffered before they are appended to the bucket files


def private_append(path: Path, data: bytes) -> None:
    write_all(path, data, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def read_slice(path: Path, start: int, count: int) -> bytes:
    """``count`` values from value ``start`` of a packed file."""
    try:
        with path.open("rb") as handle:
            handle.seek(start * POINT_BYTES)
            return handle.read(count * POINT_BYTES)
    except FileNotFoundError:
        raise IntegrityError("PSI session work files are missing; run a new session") from None


class Buckets:
    """Append-only files of fixed-width records, one per bucket, routed by a value's first two bytes.

    The routing is monotonic in the value, so reading buckets in order and sorting each gives
    the values in global sorted order.
    """

    def __init__(self, directory: Path, name: str, count: int, dtype: np.dtype) -> None:
        self.directory, self.name, self.count, self.dtype = directory, name, count, dtype
        self._pending: list[np.ndarray] = []
        self._buffered = 0

    def path(self, bucket: int) -> Path:
        return self.directory / f"{self.name}-{bucket:05d}.bin"

    def bucket_of(self, records: np.ndarray) -> np.ndarray:
        values = records["v"] if records.dtype.names else records
        head = (
            np.frombuffer(values.tobytes(), dtype=np.uint8).reshape(-1, POINT_BYTES)[:, :2].astype(np.int64)
        )
        return ((head[:, 0] << 8) | head[:, 1]) * self.count >> 16

    def add(self, records: np.ndarray) -> None:
        self._pending.append(records)
        self._buffered += len(records)
        if self._buffered >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        records = np.concatenate(self._pending)
        self._pending, self._buffered = [], 0
        where = self.bucket_of(records)
        order = np.argsort(where, kind="stable")  # stable: a bucket keeps the arrival order of its rows
        records, where = records[order], where[order]
        bounds = np.searchsorted(where, np.arange(self.count + 1))
        for bucket in range(self.count):
            lo, hi = bounds[bucket], bounds[bucket + 1]
            if hi > lo:
                private_append(self.path(bucket), records[lo:hi].tobytes())

    def read(self, bucket: int) -> np.ndarray:
        path = self.path(bucket)
        if not path.exists():
            return np.empty(0, dtype=self.dtype)
        return np.fromfile(path, dtype=self.dtype)

    def drop(self, bucket: int) -> None:
        self.path(bucket).unlink(missing_ok=True)
