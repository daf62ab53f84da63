"""The store's database: its tables, the SQL backend, and how a row is laid out.

Everything here is shared by the store's services (ingest, reads, key administration,
erasure), none of which talks to SQLite directly; see :mod:`fedcustomer.data.store`
for what each table holds and why.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from fedcustomer.common.sqlite_wal import truncate_wal, use_wal
from fedcustomer.data.schema import FieldSpec
from fedcustomer.errors import ConfigError, IntegrityError
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import (
    RecordKey,
    RecordKeys,
    open_record,
    open_records,
    open_records_field,
)
from fedcustomer.privacy.crypto.keyring import KeyRing, WrappedKey

STORE_FORMAT = "fedcustomer.store/2"
OLD_FORMATS = ("fedcustomer.store/1",)  # kept public and sensitive values in clear
QUARANTINE_FIELD = "__quarantined_row__"
ROW_FIELD = "__sealed_row__"  # AAD field name of a row's sealed non-core values, timestamp and digest
MERGE_FIELD = "__sealed_merge__"  # AAD field name of a merge record's sealed timestamps
KEYCHECK_DATASET = "__store__"
KEYCHECK_LABEL = "__keycheck__"
#: meta key present from an erasure's commit until its -wal is cut (a crash in between is settled at the next open)
UNSETTLED_ERASURE = "erasure_wal_unsettled"
_IN_BATCH = 500

BASE_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keycheck (
    id INTEGER PRIMARY KEY CHECK (id = 1), kek_version INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, table_name TEXT NOT NULL UNIQUE, schema_yaml TEXT NOT NULL,
    registered_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS data_keys (
    dataset TEXT NOT NULL, pseudonym TEXT NOT NULL, kek_version INTEGER NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (dataset, pseudonym)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_keys_version ON data_keys (kek_version);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, ingest_id INTEGER NOT NULL,
    source_row INTEGER NOT NULL, pseudonym TEXT, key_label TEXT NOT NULL, row_digest TEXT NOT NULL,
    reasons TEXT NOT NULL, kek_version INTEGER NOT NULL, wrapped_key BLOB NOT NULL, payload BLOB NOT NULL,
    quarantined_at TEXT NOT NULL, UNIQUE (dataset, row_digest));
CREATE INDEX IF NOT EXISTS quarantine_pseudonym ON quarantine (pseudonym);
CREATE TABLE IF NOT EXISTS merges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, ingest_id INTEGER NOT NULL,
    pseudonym TEXT NOT NULL, outcome TEXT NOT NULL, sealed BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS merges_pseudonym ON merges (pseudonym);
CREATE TABLE IF NOT EXISTS ingests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL, actor TEXT NOT NULL, rows_read INTEGER NOT NULL, inserted INTEGER NOT NULL,
    updated INTEGER NOT NULL, unchanged INTEGER NOT NULL, stale INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    invalid INTEGER NOT NULL, suppressed INTEGER NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    UNIQUE (dataset, sha256));
CREATE TABLE IF NOT EXISTS erasures (pseudonym TEXT PRIMARY KEY, erased_at TEXT NOT NULL) WITHOUT ROWID;
"""


class SqliteBackend:
    """The store's only contact with SQL: a connection, transactions and column types.

    Statements use ``?`` placeholders and standard SQL; a PostgreSQL backend would map
    placeholders and the types in :meth:`column_type` (BLOB -> BYTEA) and keep the rest.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        mode = "rwc" if create else "rw"
        try:
            self._con = sqlite3.connect(
                f"file:{self.path}?mode={mode}",
                uri=True,
                isolation_level=None,
                timeout=30,
                check_same_thread=False,
            )
            # Zero freed pages so erased ciphertext and wrapped keys do not linger in the file.
            self._con.execute("PRAGMA secure_delete = ON")
            self._con.execute("PRAGMA foreign_keys = ON")
            # One sync of the -wal per commit instead of four under a rollback journal; a store made
            # before WAL switches at its first open (common.sqlite_wal).
            self.wal = use_wal(self._con)
        except sqlite3.Error as exc:
            raise ConfigError(f"store database {self.path} cannot be opened: {exc}") from None
        self._depth = 0

    @staticmethod
    def column_type(spec: FieldSpec) -> str:
        if spec.is_core:
            return "BLOB"
        return {"integer": "INTEGER", "float": "REAL", "boolean": "INTEGER"}.get(spec.type, "TEXT")

    @staticmethod
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work; nested calls join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._call(self._con.execute, "BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        self._call(self._con.execute, "COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self._call(self._con.execute, sql, params)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._call(self._con.executemany, sql, rows)

    def executescript(self, sql: str) -> None:
        self._call(self._con.executescript, sql)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.execute(sql, params).fetchone()
        return row

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise ConfigError(
                    f"store database {self.path} is busy (locked by another process); retry"
                ) from None
            if isinstance(exc, (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
                raise
            raise IntegrityError(f"store database {self.path} is corrupt or was altered: {exc}") from None

    def truncate_wal(self) -> bool:
        """Leave no older page versions in ``-wal`` (after an erasure); False while a reader holds them."""
        return truncate_wal(self._con)

    def close(self) -> None:
        self._con.close()


def settle_erasures(backend: SqliteBackend) -> bool:
    """Cut ``-wal`` after an erasure, so no older page holding the erased key or row survives there.

    The erasure's transaction wrote :data:`UNSETTLED_ERASURE`; it is deleted once the ``-wal`` file
    is empty (the page that deletion writes holds no customer data). False, the mark kept, while
    another connection reads an older snapshot: the next open of the store tries again.
    """
    if not backend.truncate_wal():
        return False
    with backend.transaction():
        backend.execute("DELETE FROM meta WHERE key = ?", (UNSETTLED_ERASURE,))
    return True


def erasure_unsettled(backend: SqliteBackend) -> bool:
    """Whether an erasure committed but its ``-wal`` was not cut yet (see :func:`settle_erasures`)."""
    return backend.scalar("SELECT 1 FROM meta WHERE key = ?", (UNSETTLED_ERASURE,)) is not None


def table_name(dataset: str) -> str:
    """The table holding ``dataset``'s rows."""
    return f"c_{dataset}"


def batches(items: Sequence[str], size: int = _IN_BATCH) -> Iterator[list[str]]:
    """``items`` in slices small enough for one ``IN (...)`` clause."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def open_row_key(keyring: KeyRing, cipher: FieldCipher, pseudonym: str, version: Any, blob: Any) -> RecordKey:
    """Open a stored customer's data key from its ``data_keys`` columns (None: the row lost its key)."""
    if blob is None:
        raise IntegrityError(
            f"customer {pseudonym} of dataset {cipher.dataset!r} has no data key; the store was altered"
        )
    return open_record(keyring, cipher, pseudonym, WrappedKey(int(version), bytes(blob)))


def open_row_keys(keyring: KeyRing, cipher: FieldCipher, rows: Sequence[tuple[str, Any, Any]]) -> RecordKeys:
    """:func:`open_row_key` of many customers at once, from (pseudonym, kek_version, blob) rows."""
    for pseudonym, _, blob in rows:
        if blob is None:
            open_row_key(keyring, cipher, pseudonym, None, None)  # raises: the row lost its key
    wrapped = [WrappedKey(int(version), bytes(blob)) for _, version, blob in rows]
    return open_records(keyring, cipher, [r[0] for r in rows], wrapped)


def open_rows(keys: RecordKeys, sealed: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`open_row` of many customers at once, ``sealed`` in the order of ``keys``.

    Each opened text is one JSON object that :func:`seal_row` wrote (authenticated by its
    token), so the texts are parsed as one JSON array (:func:`parse_json_array`): faster than
    one parse each. Anything but one object per text is parsed text by text.
    """
    for position, token in enumerate(sealed):
        if token is None:
            open_row(keys.record(position), None)  # raises: the customer has no sealed row
    return _parsed_rows(keys.open_field(ROW_FIELD, [bytes(t) for t in sealed]))


def _parsed_rows(texts: Sequence[str]) -> list[dict[str, Any]]:
    try:
        joined = parse_json_array(texts)
    except ValueError:
        joined = None
    if _one_object_each(joined, len(texts)):
        return joined  # type: ignore[no-any-return]
    return [json.loads(text) for text in texts]


def _one_object_each(parsed: Any, count: int) -> bool:
    return isinstance(parsed, list) and len(parsed) == count and all(type(d) is dict for d in parsed)


def open_sealed_rows(
    keyring: KeyRing, cipher: FieldCipher, rows: Sequence[tuple[Any, ...]]
) -> tuple[RecordKeys, list[dict[str, Any]]]:
    """:func:`open_row_keys`, then :func:`open_rows`, of ``(pseudonym, sealed, kek_version, blob, ...)``
    rows: the same keys and documents, in one pass where every row opens at once.

    Each customer's data key is unwrapped and their sealed row opened in the same loop
    (:func:`~fedcustomer.privacy.crypto.envelope.open_records_field`) and the rows' bytes are
    parsed as one JSON array without a round trip through text. Where any row does not open
    at once, or its bytes are not valid UTF-8, the two steps run instead: they raise that
    row's own error (no key, no sealed row, a key or row altered) exactly as before.
    """
    pseudonyms, sealed, versions, blobs = list(zip(*rows))[:4] if rows else ((), (), (), ())
    opened = open_records_field(keyring, cipher, pseudonyms, versions, blobs, ROW_FIELD, sealed)
    if opened is not None:
        keys, raw = opened
        docs = _parsed_row_bytes(raw)
        if docs is not None:
            return keys, docs
    keys = open_row_keys(keyring, cipher, [(r[0], r[2], r[3]) for r in rows])
    return keys, open_rows(keys, sealed)


def _parsed_row_bytes(raw: Sequence[bytes]) -> list[dict[str, Any]] | None:
    """Rows' UTF-8 bytes parsed as :func:`_parsed_rows` parses their text; None if one is not UTF-8."""
    data = b"[" + b",".join(raw) + b"]"
    if _LONG_INTEGER not in data.translate(_DIGIT_RUNS, _DROPPED):
        try:
            joined = orjson.loads(data)  # refuses invalid UTF-8, as decoding would
        except orjson.JSONDecodeError:
            joined = None
        if _one_object_each(joined, len(raw)):
            return joined  # type: ignore[no-any-return]
    try:
        texts = [text.decode("utf-8") for text in raw]
    except UnicodeDecodeError:
        return None
    return _parsed_rows(texts)


# Bytes of a JSON text mapped so that an integer literal of 19 digits or more shows as ":" and
# 19 "0"s once whitespace and minus signs are dropped (inside strings too: a false alarm only).
_DIGIT_RUNS = bytes.maketrans(b"0123456789,[", b"0000000000::")
_DROPPED = b" \t\n\r-"
_LONG_INTEGER = b":" + b"0" * 19


def parse_json_array(texts: Sequence[str]) -> Any:
    """``json.loads("[" + ",".join(texts) + "]")``, the same objects, parsed by orjson where it agrees.

    orjson parses the rows :func:`seal_row` writes two to three times faster than ``json`` and
    gives the same objects (floats to the bit, text, key order), except in three cases, all sent
    to ``json``: ``NaN`` and ``Infinity`` and a lone surrogate escape, which orjson refuses, and
    an integer past 64 bits, which orjson reads as a float (found before parsing: any integer
    of 19 digits or more). ValueError when the text is not JSON.
    """
    joined = "[" + ",".join(texts) + "]"
    data = joined.encode("utf-8", "surrogatepass")  # a lone surrogate is invalid UTF-8: orjson refuses it
    if _LONG_INTEGER not in data.translate(_DIGIT_RUNS, _DROPPED):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(joined)


def seal_row(key: RecordKey, ts: str, digest: str, values: Mapping[str, Any]) -> bytes:
    """One token holding a row's non-core values, timestamp and digest, under the customer's data key."""
    doc = {"ts": ts, "digest": digest, "values": dict(values)}
    return key.seal_value(ROW_FIELD, json.dumps(doc, separators=(",", ":")))


def open_row(key: RecordKey, sealed: Any) -> dict[str, Any]:
    """The row sealed by :func:`seal_row` (IntegrityError if it is missing or was altered)."""
    if sealed is None:
        raise IntegrityError(
            f"customer {key.pseudonym} of dataset {key.dataset!r} has no sealed row; the store was altered"
        )
    doc: dict[str, Any] = json.loads(key.open_value(ROW_FIELD, bytes(sealed)))
    return doc
