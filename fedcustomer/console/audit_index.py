"""A SQLite index of the audit log, so that a filtered page of a million entries answers at once.

The log stays the record; the index (``state/console_audit_index.db``, 0600) holds, per
entry, its sequence number, the columns people search by, where its line starts and
ends in ``audit.jsonl``, and its hash. It grows incrementally: each search first reads
only the lines written since the last one (up to a size snapshot taken under the
writers' lock, so never half a line). Before trusting what it holds, it re-reads the
last indexed line and checks its offset, sequence number and hash chain still match
the log; a log that was rewritten, cut or replaced is indexed again from the start.
Searches ignore case and character width, as ``audit query`` does. Entries shown are always
read back from the log itself, by offset; that the log as a
whole is intact is for the verification page (``AuditLog.verify``) to say. The console starts
catching up in the background when it starts, so the first search over a large existing
log does not have to wait for the whole build.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.errors import ConfigError, IntegrityError
from fedcustomer.privacy.audit.files import snapshot_sizes
from fedcustomer.privacy.audit.query import fold_key
from fedcustomer.privacy.audit.records import GENESIS_HASH, LOG_NAME, AuditEntry, parse_json_line

FILE_NAME = "console_audit_index.db"
PAGE_SIZE = 50
FILTERS = ("actor", "role", "action", "decision", "purpose", "dataset", "field")
_BATCH = 20_000

# Searched columns: each kept as shown (for suggestions) and as its comparison key, NFKC
# then case folded, as ``audit query`` compares them, so "Carol" finds "carol".
_SEARCHED = ("actor", "role", "action", "decision", "purpose", "dataset")
_COLUMNS = 11 + len(_SEARCHED)
_FORMAT = "2"  # format 1 had no comparison keys; an index of another format is rebuilt from the log

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, "
    "role TEXT NOT NULL, action TEXT NOT NULL, decision TEXT NOT NULL, purpose TEXT, dataset TEXT, "
    "off INTEGER NOT NULL, len INTEGER NOT NULL, hash TEXT NOT NULL, "
    + ", ".join(f"{c}_key TEXT" for c in _SEARCHED)
    + ")",
    "CREATE TABLE IF NOT EXISTS entry_fields (field TEXT NOT NULL, seq INTEGER NOT NULL, "
    "PRIMARY KEY (field, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *(f"CREATE INDEX IF NOT EXISTS by_{c} ON entries ({c}_key, seq)" for c in _SEARCHED),
    "CREATE INDEX IF NOT EXISTS by_time ON entries (time, seq)",
)


@dataclass(frozen=True)
class Page:
    """One page of matching entries, newest first, and the cursor of the next page."""

    entries: list[AuditEntry]
    next_before: int | None
    indexed: int


class AuditIndex:
    """The index of one audit directory (see the module docstring)."""

    def __init__(self, audit_dir: Path, index_path: Path) -> None:
        self.audit_dir = Path(audit_dir)
        self.log_path = self.audit_dir / LOG_NAME
        self.path = Path(index_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        self._lock = threading.Lock()  # one update at a time in this process; pages wait for it
        with closing(connect(self.path)) as con:
            con.execute("PRAGMA journal_mode=WAL")  # searches read while an update appends
        with self._tx() as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" in tables and con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() != (
                _FORMAT,
            ):
                for table in ("entries", "entry_fields", "meta"):  # derived data: built again from the log
                    con.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (_FORMAT,))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(connect(self.path)) as con, transaction(con):
                yield con
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"audit index {self.path} cannot be used: {exc}") from None

    # ---- keeping up with the log ---------------------------------------------------------
    def _meta(self, con: sqlite3.Connection) -> tuple[int, int, str, int]:
        rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
        offset, last = int(rows.get("offset", 0)), int(rows.get("last_seq", -1))
        return offset, last, rows.get("head", GENESIS_HASH), int(rows.get("count", 0))

    def _still_matches(self, con: sqlite3.Connection, offset: int, last_seq: int, head: str) -> bool:
        """The last indexed line is still in the log, at the same place, with the same hash."""
        if last_seq < 0:
            return offset == 0
        row = con.execute("SELECT off, len, hash FROM entries WHERE seq = ?", (last_seq,)).fetchone()
        if row is None or row[0] + row[1] != offset or row[2] != head:
            return False
        try:
            with open(self.log_path, "rb") as f:
                f.seek(row[0])
                raw = f.read(row[1])
            entry = parse_json_line(raw.rstrip(b"\n"))
        except (OSError, ValueError):
            return False
        return bool(entry.get("seq") == last_seq and entry.get("hash") == head and raw.endswith(b"\n"))

    def update(self) -> int:
        """Index the lines written since the last call; returns how many entries are indexed."""
        if not self.log_path.exists():
            raise ConfigError(f"no audit log at {self.log_path}")
        with self._lock:
            return self._update()

    def _update(self) -> int:
        size, _ = snapshot_sizes(self.audit_dir)
        with self._tx() as con:
            offset, last_seq, head, count = self._meta(con)
            if offset > size or not self._still_matches(con, offset, last_seq, head):
                con.execute("DELETE FROM entries")
                con.execute("DELETE FROM entry_fields")
                offset, last_seq, head, count = 0, -1, GENESIS_HASH, 0
            if offset < size:
                before = last_seq
                offset, last_seq, head, added = self._append(con, offset, size, last_seq, head)
                count += added
                if last_seq != before:
                    con.executemany(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [
                            ("offset", str(offset)),
                            ("last_seq", str(last_seq)),
                            ("head", head),
                            ("count", str(count)),
                        ],
                    )
        return count

    def _append(
        self, con: sqlite3.Connection, offset: int, size: int, last_seq: int, head: str
    ) -> tuple[int, int, str, int]:
        added = 0
        rows: list[tuple[Any, ...]] = []
        field_rows: list[tuple[str, int]] = []
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            while offset < size:
                raw = f.readline()
                if not raw.endswith(b"\n") or offset + len(raw) > size:
                    break  # a line still being written: the next update takes it
                try:
                    d = parse_json_line(raw[:-1])
                    entry = AuditEntry.from_dict(d)
                except ValueError as exc:
                    raise IntegrityError(
                        f"audit log line at byte {offset} is not an entry ({exc}); run `fedcustomer audit verify`"
                    ) from None
                if (last_seq >= 0 and entry.seq != last_seq + 1) or entry.prev_hash != head:
                    raise IntegrityError(
                        f"audit log entry {entry.seq} does not follow entry {last_seq} (sequence or hash chain "
                        f"broken); run `fedcustomer audit verify`"
                    )
                rows.append(
                    (entry.seq, entry.time, entry.actor, entry.role, entry.action, entry.decision)
                    + (entry.purpose, entry.dataset, offset, len(raw), entry.hash)
                    + tuple(fold_key(getattr(entry, c)) for c in _SEARCHED)
                )
                field_rows.extend((key, entry.seq) for key in {fold_key(name) or "" for name in entry.fields})
                offset += len(raw)
                last_seq, head = entry.seq, entry.hash
                added += 1
                if len(rows) >= _BATCH:
                    self._flush(con, rows, field_rows)
        self._flush(con, rows, field_rows)
        return offset, last_seq, head, added

    @staticmethod
    def _flush(
        con: sqlite3.Connection, rows: list[tuple[Any, ...]], field_rows: list[tuple[str, int]]
    ) -> None:
        con.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * _COLUMNS)})", rows)
        con.executemany("INSERT OR IGNORE INTO entry_fields VALUES (?, ?)", field_rows)
        rows.clear()
        field_rows.clear()

    # ---- searching -------------------------------------------------------------------------
    def _where(self, filters: dict[str, str], since: str | None, until: str | None) -> tuple[str, list[Any]]:
        """Conditions on ``e`` (entries); a field filter is the join the query starts from."""
        clauses: list[str] = []
        args: list[Any] = []
        for name in FILTERS:
            value = filters.get(name)
            if value and name != "field":
                clauses.append(f"e.{name}_key = ?")
                args.append(fold_key(value))
        if since:
            clauses.append("e.time >= ?")
            args.append(since)
        if until:
            clauses.append("e.time <= ?")
            args.append(until)
        return " AND ".join(clauses) or "1", args

    def matching_seqs(
        self,
        filters: dict[str, str],
        *,
        since: str | None = None,
        until: str | None = None,
        before: int | None = None,
        limit: int | None = PAGE_SIZE,
    ) -> list[tuple[int, int, int]]:
        """(seq, offset, length) of matching entries, newest first, older than ``before``."""
        where, args = self._where(filters, since, until)
        if filters.get("field"):
            # walk the field's (field, seq) key backwards: a page costs the same at any depth
            source, order = "entry_fields AS f CROSS JOIN entries AS e ON e.seq = f.seq", "f.seq"
            where = f"f.field = ? AND {where}"
            args.insert(0, fold_key(filters["field"]))
        else:
            source, order = "entries AS e", "e.seq"
        if before is not None:
            where += f" AND {order} < ?"
            args.append(before)
        sql = f"SELECT e.seq, e.off, e.len FROM {source} WHERE {where} ORDER BY {order} DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with closing(connect(self.path)) as con:
            return [(int(a), int(b), int(c)) for a, b, c in con.execute(sql, args)]

    def read(self, located: Sequence[tuple[int, int, int]]) -> list[AuditEntry]:
        """The entries at these places, read back from the log and checked against the index."""
        out: list[AuditEntry] = []
        with open(self.log_path, "rb") as f:
            for seq, off, length in located:
                f.seek(off)
                try:
                    entry = AuditEntry.from_dict(json.loads(f.read(length)))
                except ValueError:
                    raise IntegrityError(f"audit entry {seq} moved in the log; reload the page") from None
                if entry.seq != seq:
                    raise IntegrityError(f"audit entry {seq} moved in the log; reload the page")
                out.append(entry)
        return out

    def page(
        self,
        filters: dict[str, str],
        *,
        since: str | None = None,
        until: str | None = None,
        before: int | None = None,
        size: int = PAGE_SIZE,
    ) -> Page:
        indexed = self.update()
        located = self.matching_seqs(filters, since=since, until=until, before=before, limit=size + 1)
        more = len(located) > size
        located = located[:size]
        return Page(self.read(located), located[-1][0] if more and located else None, indexed)

    def distinct(self, column: str, limit: int = 200) -> list[str]:
        """Values seen in a column (for the search form's suggestions)."""
        if column not in ("actor", "role", "action", "purpose", "dataset"):
            raise ConfigError(f"no such audit column {column!r}")
        with closing(connect(self.path)) as con:
            sql = f"SELECT DISTINCT {column} FROM entries WHERE {column} IS NOT NULL ORDER BY 1 LIMIT ?"
            return [r[0] for r in con.execute(sql, (limit,))]

    def analyze(self) -> None:
        """Refresh SQLite's statistics so the planner picks the right index (after a large build)."""
        with closing(connect(self.path)) as con:
            con.execute("ANALYZE")
