"""What both ways of running the intersection-sum in chunks share: inputs read in batches, the value
holder's ciphertexts per chunk, and the predicate holder's encrypted sum, bucket by bucket.

A partner node's session (:mod:`fedcustomer.psi.sum_chunked`) and the one-process run of both
parties (:mod:`fedcustomer.psi.sum_local`, ``fedcustomer psi --reveal sum``) use the same pieces,
so neither ever holds a whole id list, value column or set of ciphertexts in memory:

* :class:`ColumnInput` takes ``(ids, cells)`` batches (a governed store's batched read, or a
  partner file read in batches), parses each batch's cells (errors name the row, never the
  value), writes the parsed values to a private file by input row (the value holder's clipped
  fixed-point values as int64, the predicate holder's flags as bytes) and hands the ids on to
  the streaming party for blinding;
* :func:`chunk_ciphertexts` encrypts the values of one chunk's rows as the chunk is handed out;
* :func:`encrypted_sum` adds up the ciphertexts of the matches bucket by bucket, with the
  predicate holder's noise share, re-randomised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.errors import DataError
from fedcustomer.psi.bucket_files import VALUE, Buckets
from fedcustomer.psi.intersection_sum import SumParams, _phe, encrypt_all, parse_flags, parse_values, to_fixed
from fedcustomer.psi.stream import StreamingParty

ROLE_VALUE, ROLE_PREDICATE = "value", "predicate"
VALUES_FILE = "sum-values.bin"  # the value holder's fixed-point values, by input row (int64)
FLAGS_FILE = "sum-flags.bin"  # the predicate holder's flags, by input row (one byte each)
ColumnBatches = Iterable[tuple[Sequence[str], Sequence[object]]]


def input_file(role: str) -> str:
    return VALUES_FILE if role == ROLE_VALUE else FLAGS_FILE


class ColumnInput:
    """A side's ``(ids, cells)`` batches: the cells parsed and written by row, the ids handed on.

    ``what`` names the column in errors (``"column 'default'"``, or a file and column on the
    command line); the number of rows is capped by the party's own maximum set size."""

    def __init__(self, batches: ColumnBatches, role: str, path: Path, params: SumParams, what: str) -> None:
        self.batches, self.role, self.path, self.params, self.what = batches, role, Path(path), params, what
        self.rows = 0

    def ids(self) -> Iterator[Sequence[str]]:
        """The ids batch by batch (for :meth:`StreamingParty.blind`), each batch's cells on disk first."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            for ids, cells in self.batches:
                if len(ids) != len(cells):
                    raise DataError(f"{len(ids)} ids but {len(cells)} values; they must pair up")
                if self.role == ROLE_VALUE:
                    fixed = to_fixed(parse_values(cells, self.what, self.rows), self.params)
                    out.write(np.asarray(fixed, dtype="<i8").tobytes())
                else:
                    flags = parse_flags(cells, self.what, self.rows)
                    out.write(np.asarray(flags, dtype=np.uint8).tobytes())
                self.rows += len(ids)
                out.flush()
                yield ids


def selected_rows(work: Path) -> np.ndarray:
    """The predicate holder's flags by input row, mapped from its file (not read into memory)."""
    path = work / FLAGS_FILE
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=bool)
    return np.memmap(path, dtype=np.bool_, mode="r")


def chunk_ciphertexts(
    work: Path, party: StreamingParty, index: int, size: int, n: int, workers: int
) -> bytes:
    """The value holder's ciphertexts of chunk ``index``'s values, in the chunk's order."""
    rows = party.own_rows(index, size).astype(np.int64)
    values = np.memmap(work / VALUES_FILE, dtype="<i8", mode="r")
    fixed = [int(v) for v in values[rows]]
    del values
    return encrypt_all(n, fixed, workers)


def public_key_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def offer_dtype(width: int) -> np.dtype:
    """A record of the predicate holder's offers: the value holder's raised value, its ciphertext."""
    return np.dtype([("v", VALUE), ("c", f"S{width}")])


def encrypted_sum(
    party: StreamingParty, offers: Buckets, public: Any, width: int, params: SumParams
) -> tuple[bytes, int]:
    """Predicate holder: the re-randomised ciphertext of (our sum-noise share + the matches' values),
    and the exact number of matches (known to us alone; only a noisy count leaves)."""
    phe = _phe()
    total = public.encrypt(params.sum_noise(), r_value=1)  # our noise share; obfuscated below
    matched = 0
    for records in party.match_records(offers):
        packed = records["c"].tobytes()
        for k in range(len(records)):
            cipher = int.from_bytes(packed[k * width : (k + 1) * width], "big")
            total = total + phe.EncryptedNumber(public, cipher, 0)
        matched += len(records)
    total.obfuscate()  # fresh randomness: the value holder cannot tell which ciphertexts went in
    return int(total.ciphertext(be_secure=False)).to_bytes(width, "big"), matched
