"""Streaming PSI: the protocol of :mod:`fedcustomer.psi.core` in bounded memory, for millions of ids.

The in-memory party holds every id, blinded value and label of a session in Python lists,
about 1 KiB per id across both sides: fine at 100,000 ids, not at 10,000,000. A
:class:`StreamingParty` runs the same maths (same hash to group, same secrets, same digest)
but keeps its values on disk in a private work directory, in fixed-width records spread over
hash buckets by the value's first two bytes:

1. ``blind``: ids arrive in batches (:mod:`fedcustomer.psi.source`); worker processes
   normalise, hash and blind them; ``(H(id)^s, row)`` records go to the *own* buckets.
2. ``outgoing``: each own bucket is sorted and de-duplicated (a repeated id has the same
   blinded value, so its copies meet in one bucket; the first row wins) and appended to the
   *send* file. Values go out sorted by value, bucket after bucket: the order is a function of
   the values alone, so like the core's secret shuffle it says nothing about the file's order.
3. ``answer``: the peer's values, raised to our secret in worker processes, go back in the
   order received; the results (the peer's doubly-blinded values) go to the *peer* buckets.
4. ``accept``: our own doubly-blinded values come back in our send order; paired with the
   send file's rows they go to the *mine* buckets.
5. ``finish``: bucket by bucket (the same value lands in the same bucket on both sides),
   intersect *mine* with *peer*; shared rows leave through a sink in the agreed order
   (sorted by doubly-blinded value, the core's order), the digest is the core's.

Memory is one batch of ids, a few worker tasks in flight and one bucket at a time
(``n / buckets`` records), whatever ``n``. The work directory holds blinded values and the
party's own row numbers, never an id; it is created 0700 with 0600 files and the caller
removes it (:func:`run_psi_stream` does, after success and after failure). The bucket files are
:mod:`fedcustomer.psi.bucket_files`; what worker processes run is :mod:`fedcustomer.psi.blinding_kernels`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.errors import AccessDenied, ConfigError, DataError, IntegrityError
from fedcustomer.psi.blinding_kernels import exponentiate_packed, hash_blind_packed, ordered_map
from fedcustomer.psi.bucket_files import RECORD, VALUE, Buckets, read_slice
from fedcustomer.psi.core import (
    DEFAULT_CHUNK,
    DEFAULT_MAX_SET_SIZE,
    POINT_BYTES,
    ROLES,
    _sodium,
    check_max_set_size,
    make_executor,
    new_secret,
)

DEFAULT_BUCKETS = 256
SEND_BATCH = 1 << 16  # values per outgoing blob
# progress(side, step, done, total): a count of values through one step; total None when unknown
ProgressFn = Callable[[str, str, int, "int | None"], None]


@dataclass
class StreamResult:
    """What one side learns (like :class:`~fedcustomer.psi.core.PSIResult`, without the id list:
    the shared rows went to the sink, in the agreed order)."""

    size: int
    digest: str
    rows: int  # ids read, duplicates included
    set_size: int
    peer_set_size: int
    duplicates_removed: int


class StreamingParty:
    """One side of one streaming PSI session; all its values live in ``workdir`` (see module doc)."""

    def __init__(
        self,
        role: str,
        workdir: Path,
        *,
        workers: int = 1,
        executor: Executor | None = None,
        chunk: int = DEFAULT_CHUNK,
        buckets: int = DEFAULT_BUCKETS,
        max_set_size: int = DEFAULT_MAX_SET_SIZE,
        progress: ProgressFn | None = None,
        side: str | None = None,
        _secret: bytes | None = None,
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"PSI role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 65536:
            raise ConfigError(f"PSI buckets must be a whole number from 1 to 65536, got {buckets!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"PSI chunk must be a whole number >= 1, got {chunk!r}")
        self.role, self.side = role, side or role
        self.workers, self.chunk, self.buckets = workers, chunk, buckets
        self.max_set_size = check_max_set_size(max_set_size)
        self._executor, self._progress = executor, progress
        self._secret = new_secret() if _secret is None else _secret
        self.dir = Path(workdir) / self.side
        if _secret is None:
            self.dir.mkdir(mode=0o700)
        elif not self.dir.is_dir():
            raise IntegrityError("PSI session work directory is missing; run a new session")
        self._own = Buckets(self.dir, "own", buckets, RECORD)
        self._mine = Buckets(self.dir, "mine", buckets, RECORD)
        self._peer = Buckets(self.dir, "peer", buckets, VALUE)
        self.rows = self.set_size = self.duplicates_removed = self.peer_set_size = 0
        self._sealed = False
        self._last_report = 0.0

    def to_state(self) -> dict[str, Any]:
        """What resumes this party in another process (:meth:`resume`): counters and the SECRET
        scalar. Keep it beside the work directory (0600) and delete both when the session ends."""
        return {
            "role": self.role,
            "side": self.side,
            "secret": self._secret.hex(),
            "chunk": self.chunk,
            "buckets": self.buckets,
            "max_set_size": self.max_set_size,
            "rows": self.rows,
            "set_size": self.set_size,
            "duplicates_removed": self.duplicates_removed,
            "peer_set_size": self.peer_set_size,
            "sealed": self._sealed,
        }

    @classmethod
    def resume(
        cls,
        state: dict[str, Any],
        workdir: Path,
        *,
        workers: int = 1,
        executor: Executor | None = None,
        progress: ProgressFn | None = None,
    ) -> StreamingParty:
        """The party saved by :meth:`to_state`, on the same work directory."""
        try:
            party = cls(
                str(state["role"]),
                workdir,
                workers=workers,
                executor=executor,
                chunk=int(state["chunk"]),
                buckets=int(state["buckets"]),
                max_set_size=int(state["max_set_size"]),
                progress=progress,
                side=str(state["side"]),
                _secret=bytes.fromhex(str(state["secret"])),
            )
            for key in ("rows", "set_size", "duplicates_removed", "peer_set_size"):
                setattr(party, key, int(state[key]))
            party._sealed = bool(state["sealed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"PSI session state is damaged ({type(exc).__name__}); run a new session"
            ) from None
        return party

    def _report(self, step: str, done: int, total: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is not None and (force or now - self._last_report >= 2.0):
            self._last_report = now
            self._progress(self.side, step, done, total)

    def _depth(self) -> int:
        return 2 * max(self.workers, 1)

    def blind(self, batches: Iterable[Sequence[str]], total: int | None = None) -> None:
        """Hash and blind this side's ids (any number of batches) into the own buckets."""
        if self._sealed:
            raise ConfigError("this PSI party has already sent its values; ids cannot be added")

        def tasks() -> Iterator[tuple[Sequence[str], int]]:
            for batch in batches:
                if self.rows + len(batch) > self.max_set_size:
                    raise DataError(
                        f"PSI input has more than this party's maximum of {self.max_set_size} ids; "
                        "raise the PSI maximum set size or split the dataset"
                    )
                for i in range(0, len(batch), self.chunk):
                    yield batch[i : i + self.chunk], self.rows + i
                self.rows += len(batch)

        done = 0
        for blob in ordered_map(self._executor, hash_blind_packed, tasks(), self._secret, self._depth()):
            values = np.frombuffer(blob, dtype=VALUE)
            records = np.empty(len(values), dtype=RECORD)
            records["v"], records["r"] = values, np.arange(done, done + len(values), dtype=np.uint64)
            self._own.add(records)
            done += len(values)
            self._report("hashing and blinding its ids", done, total)
        self._own.flush()
        self._report("hashing and blinding its ids", done, total, force=True)

    def _seal(self) -> None:
        """De-duplicate each own bucket into the send file (values) and its rows, in sorted order."""
        if self.rows == 0:
            raise DataError("PSI input has no ids")
        with (self.dir / "send.bin").open("wb") as values, (self.dir / "send-rows.bin").open("wb") as rows:
            os.chmod(values.fileno(), 0o600)
            os.chmod(rows.fileno(), 0o600)
            for bucket in range(self.buckets):
                records = self._own.read(bucket)
                if len(records):
                    records = records[np.argsort(records["v"], kind="stable")]  # first row first
                    keep = np.ones(len(records), dtype=bool)
                    keep[1:] = records["v"][1:] != records["v"][:-1]
                    self.duplicates_removed += int(len(records) - keep.sum())
                    values.write(records["v"][keep].tobytes())
                    rows.write(records["r"][keep].tobytes())
                    self.set_size += int(keep.sum())
                self._own.drop(bucket)
        self._sealed = True

    def outgoing(self) -> Iterator[bytes]:
        """This side's blinded values, packed, sorted by value, ``SEND_BATCH`` at a time."""
        if not self._sealed:
            self._seal()
        with (self.dir / "send.bin").open("rb") as values:
            while blob := values.read(SEND_BATCH * POINT_BYTES):
                yield blob

    def sealed_chunks(self, size: int) -> Iterator[bytes]:
        """This side's outgoing values in chunks of ``size`` (seals first): what a relay sends one by one."""
        if not self._sealed:
            self._seal()
        with (self.dir / "send.bin").open("rb") as values:
            while blob := values.read(size * POINT_BYTES):
                yield blob

    def own_chunk(self, index: int, size: int) -> bytes:
        """Chunk ``index`` (``size`` values each) of this side's outgoing values."""
        return read_slice(self.dir / "send.bin", index * size, size)

    def own_rows(self, index: int, size: int) -> np.ndarray:
        """The input rows of chunk ``index``'s values (what a value travelling beside each is read by)."""
        try:
            with (self.dir / "send-rows.bin").open("rb") as rows:
                rows.seek(index * size * 8)
                return np.frombuffer(rows.read(size * 8), dtype="<u8")
        except FileNotFoundError:
            raise IntegrityError("PSI session work files are missing; run a new session") from None

    def mask(self, selected: np.ndarray) -> int:
        """Replace the values of rows ``selected`` rejects by random group elements and re-seal, sorted.

        The set keeps its size (the peer learns how many distinct ids we have, not how many are
        selected) and its order stays a function of the values alone, so nothing tells a random
        element from a real one. Returns how many values are real."""
        if not self._sealed:
            self._seal()
        if len(selected) != self.rows:
            raise DataError(f"PSI input has {self.rows} rows but {len(selected)} selection flags")
        random = _sodium().crypto_core_ristretto255_random
        pad, real = Buckets(self.dir, "pad", self.buckets, RECORD), 0
        with (self.dir / "send.bin").open("rb") as values, (self.dir / "send-rows.bin").open("rb") as rows:
            while blob := values.read(SEND_BATCH * POINT_BYTES):
                records = np.empty(len(blob) // POINT_BYTES, dtype=RECORD)
                records["v"] = np.frombuffer(blob, dtype=VALUE)
                records["r"] = np.frombuffer(rows.read(len(records) * 8), dtype="<u8")
                drop = ~selected[records["r"].astype(np.int64)]
                if drop.any():
                    fresh = b"".join(random() for _ in range(int(drop.sum())))
                    records["v"][drop] = np.frombuffer(fresh, dtype=VALUE)
                real += int(len(records) - drop.sum())
                pad.add(records)
        pad.flush()
        with (self.dir / "send.bin").open("wb") as values, (self.dir / "send-rows.bin").open("wb") as rows:
            for bucket in range(self.buckets):
                records = pad.read(bucket)
                records = records[np.argsort(records["v"], kind="stable")]
                values.write(records["v"].tobytes())
                rows.write(records["r"].tobytes())
                pad.drop(bucket)
        return real

    def _returned(self, blob: bytes, start: int) -> np.ndarray:
        """Records (row numbers zero) of our values the peer returned from value ``start`` on."""
        count = len(blob) // POINT_BYTES
        if len(blob) % POINT_BYTES or start + count > self.set_size:
            raise IntegrityError(
                f"the other party returned more than the {self.set_size} doubly-blinded values we sent, "
                "or a ragged message; the session is inconsistent, run it again"
            )
        records = np.zeros(count, dtype=RECORD)
        records["v"] = np.frombuffer(blob, dtype=VALUE)
        return records

    def accept_part(self, blob: bytes, start: int, *, ordered: bool = True) -> None:
        """Part of our own values as the peer returned them, starting at value ``start`` of our send
        order (``ordered``), or in an order unlinkable to ours (count-only: no rows kept)."""
        records = self._returned(blob, start)
        count = len(records)
        if ordered:
            with (self.dir / "send-rows.bin").open("rb") as rows:
                rows.seek(start * 8)
                records["r"] = np.frombuffer(rows.read(count * 8), dtype="<u8")
        self._mine.add(records)
        self._mine.flush()
        self._report("taking back its own values", start + count, self.set_size, force=True)

    def write_sorted_answers(self) -> None:
        """Our answers to the peer's values, sorted by value, to ``answers.bin`` (count-only): the
        order is a function of values the peer cannot compute, so it cannot tell which matched."""
        with (self.dir / "answers.bin").open("wb") as out:
            os.chmod(out.fileno(), 0o600)
            for bucket in range(self.buckets):
                out.write(np.sort(self._peer.read(bucket)).tobytes())

    def answer_chunk(self, index: int, size: int) -> bytes:
        """Chunk ``index`` of :meth:`write_sorted_answers`' file."""
        return read_slice(self.dir / "answers.bin", index * size, size)

    def answer(self, peer_blobs: Iterable[bytes], *, keep: bool = True) -> Iterator[bytes]:
        """Raise the peer's values to our secret, in the order received; keep them for matching
        (unless the caller keeps them itself, with data beside them: ``keep=False``)."""

        def tasks() -> Iterator[tuple[bytes, int]]:
            for blob in peer_blobs:
                if len(blob) % POINT_BYTES:
                    raise IntegrityError(
                        f"PSI message of {len(blob)} bytes is not a whole number of {POINT_BYTES}-byte "
                        "group elements; the message was truncated or corrupted"
                    )
                count = len(blob) // POINT_BYTES
                if self.peer_set_size + count > self.max_set_size:
                    raise AccessDenied(
                        f"the other party sent more than this party's maximum of {self.max_set_size} "
                        "PSI values; refused"
                    )
                step = self.chunk * POINT_BYTES
                for i in range(0, len(blob), step):
                    yield blob[i : i + step], self.peer_set_size + i // POINT_BYTES
                self.peer_set_size += count

        done = 0
        for out in ordered_map(self._executor, exponentiate_packed, tasks(), self._secret, self._depth()):
            if keep:
                self._peer.add(np.frombuffer(out, dtype=VALUE))
            done += len(out) // POINT_BYTES
            self._report("answering the other side's values", done, None)
            yield out
        self._peer.flush()

    def accept(self, answer_blobs: Iterable[bytes]) -> None:
        """Our own values as the peer returned them (doubly blinded, in our send order)."""
        if not self._sealed:
            self._seal()
        received = 0
        with (self.dir / "send-rows.bin").open("rb") as rows:
            for blob in answer_blobs:
                records = self._returned(blob, received)
                count = len(records)
                records["r"] = np.frombuffer(rows.read(count * 8), dtype="<u8")
                self._mine.add(records)
                received += count
                self._report("taking back its own values", received, self.set_size)
        self._mine.flush()
        if received != self.set_size:
            raise IntegrityError(
                f"the other party returned {received} doubly-blinded values for the {self.set_size} "
                "we sent; the session is inconsistent, run it again"
            )

    def match_records(self, theirs: Buckets) -> Iterator[np.ndarray]:
        """Bucket by bucket, the records of ``theirs`` (the peer's values raised to our secret, with
        data beside each, routed like ours) whose value is among our own values as the peer
        returned them; both sides' files go bucket by bucket. Repeats on either side abort."""
        for bucket in range(self.buckets):
            records = theirs.read(bucket)
            records = records[np.argsort(records["v"])]
            mine = np.sort(self._mine.read(bucket)["v"])
            for values in (records["v"], mine):
                if len(values) > 1 and bool((values[1:] == values[:-1]).any()):
                    raise IntegrityError(
                        "the blinded values of a PSI session contain repeats, which honest de-duplicated "
                        "input never produces; abort this session"
                    )
            yield records[np.isin(records["v"], mine, assume_unique=True)]
            theirs.drop(bucket)
            self._mine.drop(bucket)
            self._report("matching buckets", bucket + 1, self.buckets, force=bucket + 1 == self.buckets)

    def finish(self, sink: Callable[[np.ndarray], None] | None = None) -> StreamResult:
        """Match bucket by bucket; ``sink`` gets the shared rows (uint64 arrays) in the agreed order."""
        digest, size = hashlib.sha256(), 0
        for bucket in range(self.buckets):
            theirs = np.sort(self._peer.read(bucket))
            if len(theirs) > 1 and bool((theirs[1:] == theirs[:-1]).any()):
                raise IntegrityError(
                    "the other party's blinded values contain repeats, which honest de-duplicated "
                    "input never produces; abort this session"
                )
            mine = self._mine.read(bucket)
            mine = mine[np.argsort(mine["v"])]
            shared = mine[np.isin(mine["v"], theirs, assume_unique=True)]
            digest.update(shared["v"].tobytes())
            size += len(shared)
            if sink is not None and len(shared):
                sink(shared["r"].copy())
            self._mine.drop(bucket)
            self._peer.drop(bucket)
            self._report("matching buckets", bucket + 1, self.buckets, force=bucket + 1 == self.buckets)
        return StreamResult(
            size=size,
            digest=digest.hexdigest(),
            rows=self.rows,
            set_size=self.set_size,
            peer_set_size=self.peer_set_size,
            duplicates_removed=self.duplicates_removed,
        )


def run_psi_stream(
    batches_a: Iterable[Sequence[str]],
    batches_b: Iterable[Sequence[str]],
    *,
    workers: int = 1,
    chunk: int = DEFAULT_CHUNK,
    buckets: int = DEFAULT_BUCKETS,
    max_set_size: int = DEFAULT_MAX_SET_SIZE,
    workdir: Path | None = None,
    sink_a: Callable[[np.ndarray], None] | None = None,
    sink_b: Callable[[np.ndarray], None] | None = None,
    progress: ProgressFn | None = None,
    totals: tuple[int | None, int | None] = (None, None),
) -> tuple[StreamResult, StreamResult]:
    """Both sides of one streaming session in this process (CLI, benchmark); the core's maths and digest.

    The values live in a private directory made inside ``workdir`` (the system temp directory
    by default) and removed on return, whether the session succeeded or failed.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers!r}")
    if workdir is not None and not Path(workdir).is_dir():
        raise ConfigError(f"{workdir}: PSI work directory not found")
    tmp = Path(tempfile.mkdtemp(prefix="psi-", dir=workdir))
    pool = make_executor(workers) if workers > 1 else None
    try:
        opts = dict(workers=workers, executor=pool, chunk=chunk, buckets=buckets, max_set_size=max_set_size)
        a = StreamingParty("initiator", tmp, side="a", progress=progress, **opts)  # type: ignore[arg-type]
        b = StreamingParty("responder", tmp, side="b", progress=progress, **opts)  # type: ignore[arg-type]
        a.blind(batches_a, totals[0])
        b.blind(batches_b, totals[1])
        a.accept(b.answer(a.outgoing()))
        b.accept(a.answer(b.outgoing()))
        return a.finish(sink_a), b.finish(sink_b)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
