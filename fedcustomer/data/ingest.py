"""Reading partner files in chunks and preparing them for the governed store.

This module holds everything about ingest that needs no database: streaming a CSV
or Parquet file chunk by chunk as raw text, validating each chunk against the
schema, pseudonymising ids, de-duplicating within a chunk (newest wins), and the
quality report (``quality.json``). ``PartnerStore.ingest`` drives it and owns the
transaction, so a file that fails half-way leaves the store as it was.

quality.json (``"format": "fedcustomer.quality/1"``)::

    {
      "format": "fedcustomer.quality/1",
      "dataset": "bank", "file": "bank.csv", "sha256": "<hex>", "ingest_id": 3,
      "skipped_file": false,            # true: this exact file was ingested before, nothing added
      "started_at": "...Z", "finished_at": "...Z",
      "rows": {"read": 0, "valid": 0, "invalid": 0, "duplicates": 0, "inserted": 0,
               "updated": 0, "unchanged": 0, "stale": 0, "suppressed": 0},
      "fields": {"<field>": {"tier": "core", "completeness": 1.0, "missing": 0, "invalid": 0}},
      "invalid_reasons": {"<field>": {"<reason>": <count>}},
      "invalid_rows": [{"line": 3, "reasons": {"<field>": "<reason>"}}],   # the first 100
      "ignored_columns": ["<file column not in the schema>"]
    }

``invalid_rows`` says where the first quarantined rows are: ``line`` as an editor numbers the
CSV's lines (header included), or ``row`` (from 1) in a Parquet file. Like every reason, it
names fields and rules, never a value.

Row counts: ``read`` = ``valid`` + ``invalid``; every valid row is exactly one of
``inserted`` / ``updated`` / ``unchanged`` / ``stale`` (older than the stored record) /
``duplicates`` (another row of the same file for the same customer won) /
``suppressed`` (customer was erased; erased customers are not re-imported).
``completeness`` is the share of rows read where the field is present.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.common.csv_records import partner_csv_reader
from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.csv_chunks import csv_chunks
from fedcustomer.data.schema import MAX_COLUMNS, ROW_ID_FIELD, Schema, field_name_for, require_columns
from fedcustomer.data.source_lines import check_separator, row_locations
from fedcustomer.data.validators import canonical_text, validate_frame
from fedcustomer.errors import DataError

QUALITY_FORMAT = "fedcustomer.quality/1"
INVALID_ROWS_KEPT = 100  # quarantined rows whose place quality.json gives
_SUFFIXES = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- reading ------------------------------------------------------------------


def file_kind(path: Path) -> str:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    return kind


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Streaming checksum: identifies a file already ingested without reading it into memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"input file {path} not found") from None
    except OSError as exc:
        raise DataError(f"input file {path} cannot be read: {exc}") from None
    return digest.hexdigest()


def read_chunks(path: Path, chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Yield the file as DataFrames of raw text (pandas ``string`` dtype), ``chunk_rows`` at a time.

    Parquet values are turned into the same text a CSV would hold, so one validator
    serves both formats. Each chunk's index is the 0-based row number in the file. A CSV
    row with more or fewer fields than the header refuses the file (see ``csv_chunks``).
    """
    path = Path(path)
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
    kind = file_kind(path)
    if not path.exists():
        raise DataError(f"input file {path} not found")
    check_width(path, kind)
    if kind == "csv":
        yield from csv_chunks(path, chunk_rows)
    else:
        yield from _parquet_chunks(path, chunk_rows)


def check_width(path: Path, kind: str) -> None:
    """DataError for a file with more than MAX_COLUMNS columns, from its header alone.

    Parsing a very wide file cell by cell is slow (20,000 columns took about a minute to
    draft), and no schema may hold that many fields anyway.
    """
    if kind == "csv":
        try:
            with path.open("r", encoding="utf-8", newline="") as fh:
                header = next(partner_csv_reader(fh), [])
        except (UnicodeDecodeError, csv.Error):
            return  # the CSV reader below reports these with the file's context
        check_separator(path, header)
        width = len(header)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            width = len(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError):
            return  # the Parquet reader below reports it
    if width > MAX_COLUMNS:
        raise DataError(
            f"{path}: {width} columns, more than the maximum of {MAX_COLUMNS}; "
            "keep only the columns the schema needs"
        )


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    start = 0
    for batch in pfile.iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        text = pd.DataFrame({str(c): _as_text(frame[c]) for c in frame.columns})
        text.index = pd.RangeIndex(start, start + len(text))
        start += len(text)
        yield text


def _as_text(series: pd.Series) -> pd.Series:
    """Parquet column -> the text a CSV export would hold (ISO dates, plain numbers)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if getattr(series.dt, "tz", None) is not None:
            out = series.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            out = series.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    elif pd.api.types.is_bool_dtype(series):
        out = series.map({True: "true", False: "false"})
    elif pd.api.types.is_float_dtype(series):
        out = series.map(lambda v: None if pd.isna(v) else repr(float(v)))
    else:
        out = series.map(lambda v: None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    return out.astype("string")


def read_sample(path: Path, rows: int = 10_000) -> pd.DataFrame:
    """The first ``rows`` rows as raw text (for drafting a schema)."""
    for chunk in read_chunks(Path(path), chunk_rows=rows):
        return chunk
    return pd.DataFrame()


# --- preparing a chunk ----------------------------------------------------------


@dataclass
class InvalidRow:
    """A row that failed validation: goes to quarantine, encrypted."""

    row: int  # 0-based data row number in the file
    id_value: str | None  # raw id if present (only ever pseudonymised or encrypted)
    reasons: dict[str, str]
    raw: dict[str, str | None]


@dataclass
class PreparedChunk:
    """Valid rows of one chunk, one per customer, ready to write; plus rejects."""

    pseudonyms: list[str]
    ids: list[str]  # canonical raw ids (encrypted as the id field's value)
    timestamps: list[str]  # canonical timestamp text ("" when the schema has none / value missing)
    digests: list[str]  # keyed digest of the record's canonical values (per-row idempotence)
    core: dict[str, list[str | None]]  # core field -> canonical text to encrypt
    plain: dict[str, list[Any]]  # public/sensitive field -> SQL-ready values
    rows: list[int]
    duplicates: list[tuple[str, str, str]]  # (pseudonym, kept timestamp, dropped timestamp)
    invalid: list[InvalidRow]

    def __len__(self) -> int:
        return len(self.pseudonyms)


def prepare_chunk(schema: Schema, raw: pd.DataFrame, pseudonymizer: Any) -> tuple[PreparedChunk, ChunkStats]:
    """Validate, pseudonymise and de-duplicate one chunk (newest timestamp wins inside it)."""
    first_row = int(raw.index[0]) if len(raw) else 0
    result = validate_frame(schema, raw)
    stats = ChunkStats.from_validation(schema, raw, result.reasons, result.missing)
    stats.invalid_rows = [(first_row + pos, result.reasons[pos]) for pos in sorted(result.reasons)][
        :INVALID_ROWS_KEPT
    ]
    id_name = schema.id_field.name
    raw_reset = raw.reset_index(drop=True)

    invalid: list[InvalidRow] = []
    for pos, reasons in result.reasons.items():
        record = {c: (None if pd.isna(v) else str(v)) for c, v in raw_reset.iloc[pos][schema.names].items()}
        id_value = record.get(id_name)
        id_value = id_value.strip() if id_value and id_value.strip() else None
        invalid.append(InvalidRow(row=first_row + pos, id_value=id_value, reasons=reasons, raw=record))

    mask = result.valid_mask
    valid = result.values.loc[mask]
    rows = (np.flatnonzero(mask) + first_row).tolist()
    canon = {f.name: canonical_text(f, valid[f.name]) for f in schema.fields}
    ids = canon[id_name]
    pseudonyms = pseudonymizer.pseudonyms(ids)  # type: ignore[arg-type]
    stamp_field = schema.timestamp_field
    timestamps = [s or "" for s in canon[stamp_field.name]] if stamp_field else [""] * len(ids)
    names = schema.names
    digests = (
        [
            pseudonymizer.pseudonym(
                "row:" + json.dumps(values, ensure_ascii=True, separators=(",", ":")).encode().hex()
            )
            for values in zip(*(canon[n] for n in names))
        ]
        if len(ids)
        else []
    )

    # Newest wins inside the chunk; ties broken by digest so the outcome never depends on row order.
    order = pd.DataFrame({"p": pseudonyms, "t": timestamps, "d": digests})
    if stamp_field is None:
        order["t"] = [f"{i:012d}" for i in range(len(order))]  # no timestamp: the later row wins
    order = order.sort_values(["p", "t", "d"], kind="stable")
    dropped_mask = order["p"].duplicated(keep="last").to_numpy()
    keep_positions = np.sort(order.index.to_numpy()[~dropped_mask])
    duplicates: list[tuple[str, str, str]] = []
    if dropped_mask.any():
        winners = order.loc[~dropped_mask].set_index("p")["t"]
        for p, t in order.loc[dropped_mask, ["p", "t"]].itertuples(index=False):
            duplicates.append((p, str(winners[p]), t))
        stats.duplicates += len(duplicates)

    def pick(values: list[Any]) -> list[Any]:
        return [values[i] for i in keep_positions]

    core = {f.name: pick(canon[f.name]) for f in schema.fields if f.is_core}
    plain = {
        f.name: pick(_sql_values(f.type, valid[f.name], canon[f.name]))
        for f in schema.fields
        if not f.is_core
    }
    prepared = PreparedChunk(
        pseudonyms=pick(pseudonyms),
        ids=pick(ids),
        timestamps=pick(timestamps),
        digests=pick(digests),
        core=core,
        plain=plain,
        rows=pick(rows),
        duplicates=duplicates if stamp_field else [(p, "", "") for p, _, _ in duplicates],
        invalid=invalid,
    )
    return prepared, stats


def _sql_values(ftype: str, parsed: pd.Series, canon: list[str | None]) -> list[Any]:
    """Values as stored: numbers as numbers, booleans 0/1, dates and text as canonical text."""
    if ftype == "integer":
        return [None if v != v else int(v) for v in parsed.tolist()]
    if ftype == "float":
        return [None if v != v else float(v) for v in parsed.tolist()]
    if ftype == "boolean":
        return [None if v is None else int(bool(v)) for v in parsed.tolist()]
    return list(canon)


# --- quality accounting ---------------------------------------------------------


@dataclass
class ChunkStats:
    """Counts from one chunk, summed into the report."""

    read: int = 0
    invalid: int = 0
    duplicates: int = 0
    missing: Counter = field(default_factory=Counter)
    invalid_fields: Counter = field(default_factory=Counter)
    reasons: dict[str, Counter] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    invalid_rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (0-based row, reasons)

    @classmethod
    def from_validation(
        cls, schema: Schema, raw: pd.DataFrame, reasons: dict[int, dict[str, str]], missing: dict[str, int]
    ) -> ChunkStats:
        stats = cls(read=len(raw), invalid=len(reasons), missing=Counter(missing))
        for per_field in reasons.values():
            for name, reason in per_field.items():
                stats.invalid_fields[name] += 1
                stats.reasons.setdefault(name, Counter())[reason] += 1
        return stats


@dataclass
class IngestReport:
    """What one ingest did; ``to_dict()`` is the documented quality.json."""

    dataset: str
    file: str
    sha256: str
    field_tiers: dict[str, str]
    ingest_id: int | None = None
    skipped_file: bool = False
    started_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    read: int = 0
    invalid: int = 0
    duplicates: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    suppressed: int = 0
    missing: Counter = field(default_factory=Counter)
    invalid_fields: Counter = field(default_factory=Counter)
    reasons: dict[str, Counter] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    invalid_rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (0-based row, reasons)
    invalid_places: dict[int, str] = field(default_factory=dict)  # row -> "line N" / "row N"

    @property
    def valid(self) -> int:
        return self.read - self.invalid

    def add(self, stats: ChunkStats) -> None:
        self.read += stats.read
        self.invalid += stats.invalid
        self.duplicates += stats.duplicates
        self.missing.update(stats.missing)
        self.invalid_fields.update(stats.invalid_fields)
        for name, counter in stats.reasons.items():
            self.reasons.setdefault(name, Counter()).update(counter)
        self.invalid_rows.extend(stats.invalid_rows[: INVALID_ROWS_KEPT - len(self.invalid_rows)])

    def locate_invalid_rows(self, path: Path) -> None:
        """Find the file line (CSV) or row (Parquet) of each kept quarantined row, for people to fix."""
        if self.invalid_rows:
            self.invalid_places = row_locations(path, file_kind(path), [r for r, _ in self.invalid_rows])

    def invalid_row_list(self) -> list[dict[str, Any]]:
        """The kept quarantined rows as ``{"line": N, "reasons": ...}`` (``row`` for Parquet)."""
        out: list[dict[str, Any]] = []
        for row, reasons in self.invalid_rows:
            unit, _, number = self.invalid_places.get(row, f"data row {row + 1}").rpartition(" ")
            out.append({unit.replace(" ", "_"): int(number), "reasons": dict(reasons)})
        return out

    def completeness(self, name: str) -> float:
        return 1.0 if self.read == 0 else round(1.0 - self.missing.get(name, 0) / self.read, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": QUALITY_FORMAT,
            "dataset": self.dataset,
            "file": self.file,
            "sha256": self.sha256,
            "ingest_id": self.ingest_id,
            "skipped_file": self.skipped_file,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rows": {
                "read": self.read,
                "valid": self.valid,
                "invalid": self.invalid,
                "duplicates": self.duplicates,
                "inserted": self.inserted,
                "updated": self.updated,
                "unchanged": self.unchanged,
                "stale": self.stale,
                "suppressed": self.suppressed,
            },
            "fields": {
                name: {
                    "tier": tier,
                    "completeness": self.completeness(name),
                    "missing": int(self.missing.get(name, 0)),
                    "invalid": int(self.invalid_fields.get(name, 0)),
                }
                for name, tier in self.field_tiers.items()
            },
            "invalid_reasons": {name: dict(sorted(c.items())) for name, c in sorted(self.reasons.items())},
            "invalid_rows": self.invalid_row_list(),
            "ignored_columns": list(self.ignored_columns),
        }

    def write_json(self, path: Path) -> None:
        """Write quality.json whole or not at all."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


def print_report(report: IngestReport, console: Any = None) -> None:
    """Rich tables: row outcomes, then completeness and invalid counts per field."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(emoji=False)  # names print as registered
    title = f"ingest {report.file} -> {report.dataset}"
    if report.skipped_file:
        console.print(
            f"[yellow]{report.file}[/]: already ingested (sha256 {report.sha256[:12]}...), nothing added"
        )
        return
    rows = Table(title=title)
    rows.add_column("rows")
    rows.add_column("count", justify="right")
    for key, value in report.to_dict()["rows"].items():
        rows.add_row(key, str(value))
    console.print(rows)
    fields = Table(title="field quality")
    for col in ("field", "tier", "completeness", "missing", "invalid", "top reason"):
        fields.add_column(col, justify="right" if col in ("completeness", "missing", "invalid") else "left")
    for name, info in report.to_dict()["fields"].items():
        top = report.reasons.get(name)
        fields.add_row(
            name,
            info["tier"],
            f"{info['completeness']:.1%}",
            str(info["missing"]),
            str(info["invalid"]),
            top.most_common(1)[0][0] if top else "",
        )
    console.print(fields)
    shown = report.invalid_row_list()[:10]
    if shown:
        more = f" (first {len(shown)} of {report.invalid}; quality.json lists up to {INVALID_ROWS_KEPT})"
        console.print(f"quarantined rows{more if report.invalid > len(shown) else ''}:", highlight=False)
        for item in shown:
            place = " ".join(f"{k.replace('_', ' ')} {v}" for k, v in item.items() if k != "reasons")
            why = "; ".join(f"{name}: {reason}" for name, reason in item["reasons"].items())
            console.print(f"  {place}: {escape(why)}", highlight=False)
    if report.ignored_columns:
        console.print(f"ignored columns (not in schema, not stored): {', '.join(report.ignored_columns)}")
    note = repeated_ids_note(report)
    if note:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if report.read and not report.valid:
        console.print(f"[red]refused:[/] {escape(nothing_valid_message(report))}", highlight=False)


# From this share of a file's valid rows repeating another row's customer id, ingest says that the
# store kept one row per customer: the file is most likely a transaction or event log.
REPEATED_IDS_SHARE = 0.1


def repeated_ids_note(report: IngestReport) -> str | None:
    """Advice when many rows of the file shared a customer id (None when few or none did).

    The store keeps one row per customer, so a transaction log ingested as it is keeps one
    transaction per customer and drops the rest as duplicates: counted, but easy to miss.
    """
    if not report.valid or report.duplicates < REPEATED_IDS_SHARE * report.valid:
        return None
    return (
        f"{report.duplicates} of the file's {report.valid} valid rows repeated the customer id of another row "
        f"({report.duplicates / report.valid:.0%}); the store keeps one row per customer (the newest by the "
        "schema's timestamp field), so the others were not stored. If the file holds one row per transaction "
        "or event, summarise it to one row per customer first (README, 'One row per customer')"
    )


def nothing_valid_message(report: IngestReport) -> str:
    """Why a file none of whose rows is valid was refused: the commonest reason (field and rule, no value)."""
    worst = max(report.reasons.items(), key=lambda kv: sum(kv[1].values()), default=None)
    cause = f" (most common: {worst[0]}: {worst[1].most_common(1)[0][0]})" if worst else ""
    return (
        f"{report.file}: none of the {report.read} rows was valid{cause}; nothing was stored or quarantined. "
        "A schema that does not fit the file (a text label in an integer field) is the usual cause: check "
        "its types and rules against the file, then ingest it again"
    )


class NothingValid(DataError):
    """An ingest refused because not one row of the file was valid; the store is unchanged.

    Carries the ingest's report (counts and value-free reasons, by line) so the command can
    still write quality.json and show why.
    """

    def __init__(self, report: IngestReport) -> None:
        super().__init__(nothing_valid_message(report))
        self.report = report


def check_columns(schema: Schema, chunk: pd.DataFrame, source: str) -> list[str]:
    """SchemaError if a schema field is missing from the file; the extra columns otherwise."""
    return require_columns(schema, chunk.columns, source)


class ColumnMapper:
    """Turns a file's chunks into the schema's fields: names mapped, generated ids added.

    A file column that is not itself a field but whose :func:`field_name_for` spelling
    is (``emp.var.rate`` for field ``emp_var_rate``) is read as that field, as
    ``schema draft`` named it. With ``id_from_row`` the id field is generated: a keyed
    digest (the partner's pseudonym key) of the row's other schema fields, plus the copy
    number among identical rows, so a re-exported or reordered copy of the same file
    gives every row the same id again and two identical rows stay two customers.
    """

    def __init__(
        self, schema: Schema, source: str, pseudonymizer: Any = None, id_from_row: bool = False
    ) -> None:
        self.schema = schema
        self.source = source
        self.pseudonymizer = pseudonymizer
        self.id_from_row = id_from_row
        self.copies: Counter = Counter()
        self.renames: dict[str, str] | None = None

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if self.renames is None:
            self.renames = self._renames(chunk)
        if self.renames:
            chunk = chunk.rename(columns=self.renames)
        if self.id_from_row:
            chunk = chunk.assign(**{self.schema.id_field.name: self._row_ids(chunk)})
        return chunk

    def _renames(self, chunk: pd.DataFrame) -> dict[str, str]:
        names = set(self.schema.names)
        present = [str(c) for c in chunk.columns]
        renames: dict[str, str] = {}
        for col in present:
            target = field_name_for(col)
            if col not in names and target in names and target not in present:
                if target in renames.values():
                    raise DataError(
                        f"{self.source}: two columns would both be read as field {target!r}; "
                        "rename one of them"
                    )
                renames[col] = target
        id_name = self.schema.id_field.name
        if self.id_from_row:
            if self.pseudonymizer is None:
                raise DataError("generated ids need the partner's pseudonym key")
            if id_name in present or id_name in renames.values():
                raise DataError(
                    f"{self.source}: the file has an id column {id_name!r}; drop --id-from-row to use it"
                )
        elif id_name == ROW_ID_FIELD and id_name not in present and id_name not in renames.values():
            raise DataError(
                f"{self.source}: the schema's id field {id_name!r} is not a column of the file; pass "
                "--id-from-row to generate it from each row (as the schema draft said)"
            )
        return renames

    def _row_ids(self, chunk: pd.DataFrame) -> list[str]:
        fields = sorted(n for n in self.schema.names if n != self.schema.id_field.name and n in chunk.columns)
        ids = []
        for values in chunk[fields].itertuples(index=False, name=None):
            text = json.dumps(
                [None if v is None or v is pd.NA else str(v) for v in values], ensure_ascii=True
            )
            digest = self.pseudonymizer.pseudonym("rowid:" + text.encode().hex())[:32]
            self.copies[digest] += 1
            ids.append(f"r{digest}-{self.copies[digest]}")
        return ids
