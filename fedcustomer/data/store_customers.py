"""Which customers a read reached: an exact set of pseudonyms beside the store, cited by digest.

A read that opens core fields names its customers in its audit entry (the first 1,000), but a
bulk read of public or sensitive fields names none, so "who read customer X's income" had no
answer. Every successful read therefore records the sorted pseudonyms of the rows it returned
in ``store.db`` and its audit entry cites them by digest (``details.customers``: ``set_sha256``
and ``count``). The log stays small (one digest per read, whatever its size); the set is exact.

Layout (content-addressed, so reading the same rows again stores nothing new):

* ``customer_chunks``: up to :data:`CHUNK` pseudonyms each, sorted, as fixed-width binary
  (32 bytes for the store's 64-hex-digit pseudonyms) or, for any other spelling, as
  newline-separated text; keyed by the SHA-256 of ``format`` and the bytes.
* ``customer_sets``: a set's chunk digests with each chunk's first pseudonym, in order;
  keyed by the SHA-256 of that list (:func:`set_digest`), which is what the audit entry holds.

A lookup finds the one chunk that can hold a pseudonym, checks the list against the digest the
(hash-chained, signed) audit entry holds and the chunk against its own digest, then searches it:
an edited or swapped set is reported (``IntegrityError``), never silently answered. A set that
is missing (a bare copy of the log without ``store.db``) cannot be checked: the entry is then
reported as one that *may* include the customer.

Pseudonyms are what the audit log already names for core decrypts; no raw id or value is kept.
An erased customer's pseudonym stays in the sets of reads made before the erasure, as it stays in
those reads' audit entries (docs/GOVERNANCE.md, erasure).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fedcustomer.common.sqlite_wal import connect_readonly
from fedcustomer.errors import IntegrityError

CHUNK = 65_536
_BIN = "bin32"
_TEXT = "text"
_DDL = (
    "CREATE TABLE IF NOT EXISTS customer_chunks (sha256 TEXT PRIMARY KEY, format TEXT NOT NULL, "
    "count INTEGER NOT NULL, blob BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS customer_sets (sha256 TEXT PRIMARY KEY, dataset TEXT NOT NULL, "
    "count INTEGER NOT NULL, chunks TEXT NOT NULL) WITHOUT ROWID",
)
DETAILS_KEY = "customers"


def _encode(pseudonyms: list[str]) -> tuple[str, bytes]:
    if all(len(p) == 64 for p in pseudonyms):
        text = "".join(pseudonyms)
        if text == text.lower():  # lower-case hex only, so byte order is the pseudonyms' order
            try:
                blob = bytes.fromhex(text)
            except ValueError:
                blob = b""
            if len(blob) == 32 * len(pseudonyms):  # fromhex skips whitespace: every byte accounted for
                return _BIN, blob
    return _TEXT, "\n".join(pseudonyms).encode("utf-8")


def _contains(fmt: str, blob: bytes, pseudonym: str) -> bool:
    """Binary search of one sorted chunk, without decoding it."""
    if fmt == _BIN:
        try:
            want = bytes.fromhex(pseudonym)
        except ValueError:
            return False
        if len(pseudonym) != 64 or len(want) != 32:
            return False
        lo, hi = 0, len(blob) // 32
        while lo < hi:
            mid = (lo + hi) // 2
            if blob[mid * 32 : mid * 32 + 32] < want:
                lo = mid + 1
            else:
                hi = mid
        return lo < len(blob) // 32 and blob[lo * 32 : lo * 32 + 32] == want
    items = blob.decode("utf-8").split("\n") if blob else []
    at = bisect_left(items, pseudonym)
    return at < len(items) and items[at] == pseudonym


def _chunk_digest(fmt: str, blob: bytes) -> str:
    return hashlib.sha256(fmt.encode() + b"\0" + blob).hexdigest()


def set_digest(chunks: list[list[str]]) -> str:
    """The digest an audit entry cites: over every chunk's digest and first pseudonym, in order."""
    text = "fedcustomer.customers/1\n" + "".join(f"{d} {first}\n" for d, first in chunks)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def customer_status(store_path: Path, pseudonym: str) -> str | None:
    """``held`` (the store has the customer's data key), ``erased`` (its erasures table names them)
    or ``unknown``; None when there is no ``store.db`` to ask (a bare copy of the log)."""
    if not Path(store_path).exists():
        return None
    try:
        con = connect_readonly(Path(store_path))
    except sqlite3.Error:
        return None
    try:
        if con.execute("SELECT 1 FROM data_keys WHERE pseudonym = ? LIMIT 1", (pseudonym,)).fetchall():
            return "held"
        if con.execute("SELECT 1 FROM erasures WHERE pseudonym = ?", (pseudonym,)).fetchall():
            return "erased"
        return "unknown"
    except sqlite3.Error:
        return None
    finally:
        con.close()


def record_customers(backend: Any, dataset: str, pseudonyms: Iterable[str]) -> dict[str, Any]:
    """Store the set of ``pseudonyms`` (ascending, as a read returns them); return the entry's citation.

    Streams: at most one chunk is held. Joins the caller's transaction when one is open."""
    chunks: list[list[str]] = []
    count = 0
    pending: list[str] = []
    last: str | None = None
    with backend.transaction():
        for ddl in _DDL:
            backend.execute(ddl)
        for p in pseudonyms:
            p = str(p)
            if last is not None and p <= last:
                raise ValueError("a read's customers must come in ascending pseudonym order, once each")
            last = p
            pending.append(p)
            if len(pending) == CHUNK:
                chunks.append(_store_chunk(backend, pending))
                count += len(pending)
                pending = []
        if pending or not chunks:
            chunks.append(_store_chunk(backend, pending))
            count += len(pending)
        digest = set_digest(chunks)
        backend.execute(
            "INSERT OR IGNORE INTO customer_sets VALUES (?, ?, ?, ?)",
            (digest, dataset, count, json.dumps(chunks)),
        )
    return {"set_sha256": digest, "count": count}


def _store_chunk(backend: Any, pseudonyms: list[str]) -> list[str]:
    fmt, blob = _encode(pseudonyms)
    digest = _chunk_digest(fmt, blob)
    backend.execute(
        "INSERT OR IGNORE INTO customer_chunks VALUES (?, ?, ?, ?)", (digest, fmt, len(pseudonyms), blob)
    )
    return [digest, pseudonyms[0] if pseudonyms else ""]


class CustomerSets:
    """Answers "did the read citing this set reach pseudonym P?" from a store database.

    ``fetch(sql, params)`` returns one row or None (a store's own connection, or a read-only
    one opened by :meth:`for_store_file`). Verified lists and chunks are kept for the lookup's life.
    """

    def __init__(self, fetch: Callable[[str, tuple[Any, ...]], tuple[Any, ...] | None]) -> None:
        self._fetch = fetch
        self._lists: dict[str, list[list[str]] | None] = {}
        self._chunks: dict[str, tuple[str, bytes]] = {}

    @classmethod
    def for_store_file(cls, path: Path) -> CustomerSets | None:
        """Sets read from ``path`` opened read-only; None when there is no such store."""
        if not Path(path).exists():
            return None
        try:
            con = connect_readonly(Path(path), timeout=5)
        except sqlite3.Error:
            return None
        return cls(lambda sql, params: con.execute(sql, params).fetchone())

    def reached(self, citation: Any, pseudonym: str) -> bool | None:
        """True or False exactly; None when the cited set is not here to check."""
        if not isinstance(citation, dict) or not isinstance(citation.get("set_sha256"), str):
            return None
        digest = citation["set_sha256"]
        chunks = self._list(digest)
        if chunks is None:
            return None
        firsts = [first for _, first in chunks]
        at = bisect_left(firsts, pseudonym)
        if at < len(firsts) and firsts[at] == pseudonym:
            return True
        if at == 0:
            return False
        fmt, blob = self._chunk(digest, chunks[at - 1][0])
        return _contains(fmt, blob, pseudonym)

    def _list(self, digest: str) -> list[list[str]] | None:
        if digest not in self._lists:
            row = self._row("SELECT chunks FROM customer_sets WHERE sha256 = ?", (digest,))
            chunks = None if row is None else json.loads(row[0])
            if chunks is not None and set_digest(chunks) != digest:
                raise IntegrityError(
                    f"the customer set {digest[:16]}... in store.db does not match the digest its audit "
                    "entry holds: the set was edited; restore store.db from a backup"
                )
            self._lists[digest] = chunks
        return self._lists[digest]

    def _chunk(self, set_sha: str, digest: str) -> tuple[str, bytes]:
        if digest in self._chunks:
            return self._chunks[digest]
        row = self._row("SELECT format, blob FROM customer_chunks WHERE sha256 = ?", (digest,))
        if row is None or _chunk_digest(str(row[0]), bytes(row[1])) != digest:
            raise IntegrityError(
                f"a chunk of the customer set {set_sha[:16]}... in store.db is missing or altered "
                "(its digest does not match); restore store.db from a backup"
            )
        if len(self._chunks) >= 16:  # a few verified chunks (2 MiB each) kept for the entries that share them
            self._chunks.pop(next(iter(self._chunks)))
        self._chunks[digest] = (str(row[0]), bytes(row[1]))
        return self._chunks[digest]

    def _row(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            return self._fetch(sql, params)
        except sqlite3.OperationalError:  # no such table: a store from before customer sets
            return None
