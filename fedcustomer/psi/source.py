"""Customer ids read from a partner's own CSV or Parquet file in batches, for streaming PSI.

A PSI of ten million ids must not hold ten million Python strings at once, so the file is
read a batch at a time (the csv module's records, pyarrow's Parquet row batches). A CSV record
with more or fewer fields than the header is refused, not padded or shifted. Errors name the
file and the line or row, never a value: an id is the one thing a PSI must not leak.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedcustomer.common.csv_records import (
    cell_too_long,
    cell_too_long_error,
    partner_csv_reader,
    refuse_unclosed_quote,
)
from fedcustomer.errors import DataError

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_READ_BATCH = 65_536


def file_kind(path: Path) -> str:
    """``csv`` or ``parquet``, or DataError for a missing file or another suffix."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    return kind


def _no_column(path: Path, column: str, columns: list[str]) -> DataError:
    shown = ", ".join(map(str, columns[:12]))
    return DataError(f"{path}: no id column {column!r} (columns: {shown}); pass --id-column NAME")


def _csv_batches(path: Path, column: str, batch: int) -> Iterator[list[str]]:
    header = _csv_header(path)
    if column not in header:
        raise _no_column(path, column, header)
    for ids, _ in _csv_cells(path, header.index(column), None, column, batch):
        yield ids


def _parquet_batches(path: Path, column: str, batch: int) -> Iterator[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read it as parquet ({type(exc).__name__}); check the file") from None
    if column not in handle.schema_arrow.names:
        raise _no_column(path, column, list(handle.schema_arrow.names))
    start = 0
    try:
        for record_batch in handle.iter_batches(batch_size=batch, columns=[column]):
            values = record_batch.column(0).to_pylist()
            for k, value in enumerate(values):
                if value is None or value == "":
                    raise DataError(
                        f"{path}, row {start + k}: column {column!r} is empty; every row needs a customer id"
                    )
            start += len(values)
            yield [v if isinstance(v, str) else str(v) for v in values]
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(
            f"{path}: cannot read it as parquet after row {start} ({type(exc).__name__}); check the file"
        ) from None


def id_batches(
    path: Path, column: str, *, batch: int = DEFAULT_READ_BATCH, max_ids: int | None = None
) -> Iterator[list[str]]:
    """The id column of ``path`` as lists of at most ``batch`` strings, in file order.

    DataError for a missing, unreadable or empty file, a missing column, an empty id, or
    (``max_ids``) more ids than allowed; the last is raised after counting the whole file
    (without hashing it), so the message gives the file's true size.
    """
    path = Path(path)
    kind = file_kind(path)
    reader = _csv_batches if kind == "csv" else _parquet_batches
    total = 0
    for values in reader(path, column, batch):
        total += len(values)
        if max_ids is not None and total > max_ids:
            total = sum(len(rest) for rest in reader(path, column, batch))
            raise DataError(f"{path}: {total} ids, more than --max-ids {max_ids}")
        yield values
    if total == 0:
        raise DataError(f"{path}: no rows; the file has a header but no customers")


def column_batches(
    path: Path, id_column: str, column: str, option: str, *, batch: int = DEFAULT_READ_BATCH
) -> Iterator[tuple[list[str], list[object]]]:
    """The id column and one other column of ``path``, row for row, ``batch`` rows at a time (an
    intersection-sum's input: ``option`` names the column's command-line option in errors).

    Cells come as read (CSV: strings; Parquet: its types), a missing cell as None; the same
    DataErrors as :func:`id_batches`, naming the file, line or row and column, never a value."""
    path = Path(path)
    kind = file_kind(path)
    names = _csv_header(path) if kind == "csv" else _parquet_names(path)
    if id_column not in names:
        raise _no_column(path, id_column, names)
    if column not in names:
        shown = ", ".join(map(str, names[:12]))
        raise DataError(f"{path}: no column {column!r} for {option} (columns: {shown})")
    start = 0
    if kind == "csv":
        pairs = _csv_cells(path, names.index(id_column), names.index(column), id_column, batch)
        for ids, texts in pairs:
            start += len(ids)
            yield ids, [text if text else None for text in texts]
    else:
        for ids, cells in _parquet_pairs(path, id_column, column, batch):
            for k, value in enumerate(ids):
                if value is None or value == "":
                    raise DataError(
                        f"{path}, row {start + k}: column {id_column!r} is empty; every row needs a customer id"
                    )
            start += len(ids)
            yield [v if isinstance(v, str) else str(v) for v in ids], cells
    if start == 0:
        raise DataError(f"{path}: no rows; the file has a header but no customers")


def _parquet_names(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read it as parquet ({type(exc).__name__}); check the file") from None


def _parquet_pairs(
    path: Path, id_column: str, column: str, batch: int
) -> Iterator[tuple[list[Any], list[object]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = 0
    try:
        handle = pq.ParquetFile(path)
        for record_batch in handle.iter_batches(batch_size=batch, columns=[id_column, column]):
            ids = record_batch.column(id_column).to_pylist()
            cells = record_batch.column(column).to_pylist()
            done += len(ids)
            yield ids, [None if v != v else v for v in cells]  # NaN is a missing cell
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(
            f"{path}: cannot read it as parquet after row {done} ({type(exc).__name__}); check the file"
        ) from None


# --- CSV -------------------------------------------------------------------------------------
# Read with the csv module, one record at a time, rather than pandas: pandas pads a record with
# fewer fields than the header with empty cells and, when every record has one field more than
# the header, takes the first field as an index and shifts the columns, so a ragged file would
# pass with ids from the wrong cells. Records are numbered as pandas numbers them (blank lines
# skipped), so an alignment's ``source_row`` keeps its meaning.


def _is_blank(record: list[str]) -> bool:
    """An empty or whitespace-only line, which pandas skips. A quoted empty field ``""`` or one that
    spans lines is a record; a quoted field of spaces alone reads as a blank line here."""
    if not record:
        return True
    if len(record) != 1 or not record[0] or "\n" in record[0] or "\r" in record[0]:
        return False
    return not record[0].strip()


def _csv_header(path: Path) -> list[str]:
    """The header: the first record that is not blank (a UTF-8 byte-order mark dropped)."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = partner_csv_reader(fh)
            line = 0
            for record in reader:
                if not _is_blank(record):
                    return record
                line = reader.line_num
    except csv.Error as exc:
        if cell_too_long(exc):
            raise cell_too_long_error(path, line + 1) from None
        raise DataError(f"{path}: cannot read it as csv ({type(exc).__name__}); check the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as csv ({type(exc).__name__}); check the file") from None
    raise DataError(f"{path}: file is empty; it needs a header row naming the id column and at least one row")


def _csv_cells(
    path: Path, id_index: int, other: int | None, id_column: str, batch: int
) -> Iterator[tuple[list[str], list[str]]]:
    """Batches of (ids, cells of column ``other``; empty when None), every record checked to hold
    exactly the header's fields and an id that is not empty or only spaces (empty once
    normalised). Errors name the file and the line a record starts on, never a cell."""
    ids: list[str] = []
    cells: list[str] = []
    line = start = 0
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = partner_csv_reader(fh)
            width = 0
            record: list[str] = []
            for record in reader:
                start, line = line + 1, reader.line_num
                if width == 0:  # the header, read again
                    width = 0 if _is_blank(record) else len(record)
                    continue
                if len(record) != width or not record[id_index].strip():
                    if _is_blank(record):
                        continue
                    if len(record) != width:
                        raise DataError(
                            f"{path}, line {start}: {len(record)} fields but the header has {width}; every "
                            'row needs one value per column (quote values that contain ",")'
                        )
                    raise DataError(
                        f"{path}, line {start}: column {id_column!r} is empty; every row needs a customer id"
                    )
                ids.append(record[id_index])
                if other is not None:
                    cells.append(record[other])
                if len(ids) >= batch:
                    yield ids, cells
                    ids, cells = [], []
            if any("\n" in field or "\r" in field for field in record):
                refuse_unclosed_quote(path, start)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, csv.Error) and cell_too_long(exc):
            raise cell_too_long_error(path, line + 1) from None
        raise DataError(
            f"{path}: cannot read it as csv after line {line} ({type(exc).__name__}); check the file"
        ) from None
    if ids:
        yield ids, cells
