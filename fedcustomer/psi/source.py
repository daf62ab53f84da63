"""Customer ids read from a partner's own CSV or Parquet file in batches, for streaming PSI.

A PSI of ten million ids must not hold ten million Python strings at once, so the file is
read a batch at a time (pandas' chunked CSV parser, pyarrow's Parquet row batches). Errors
name the file and the line or row, never a value: an id is the one thing a PSI must not
leak.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    import pandas as pd

    try:
        header = pd.read_csv(path, dtype=str, nrows=0)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: file is empty; it needs a header row with {column!r} and at least one row"
        ) from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as csv ({type(exc).__name__}); check the file") from None
    if column not in header.columns:
        raise _no_column(path, column, list(header.columns))
    start = 0
    try:
        # every column parsed (not usecols), so a ragged row is an error, not silently cut
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=batch)
        for frame in reader:
            values = frame[column]
            missing = values.isna()
            if missing.any():
                line = start + int(missing.to_numpy().nonzero()[0][0]) + 2
                raise DataError(
                    f"{path}, line {line}: column {column!r} is empty; every row needs a customer id"
                )
            start += len(values)
            yield values.tolist()
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(
            f"{path}: cannot read it as csv after line {start + 1} ({type(exc).__name__}); check the file"
        ) from None


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
    for ids, cells in (_csv_pairs if kind == "csv" else _parquet_pairs)(path, id_column, column, batch):
        for k, value in enumerate(ids):
            if value is None or value == "":
                where = f"line {start + k + 2}" if kind == "csv" else f"row {start + k}"
                raise DataError(
                    f"{path}, {where}: column {id_column!r} is empty; every row needs a customer id"
                )
        start += len(ids)
        yield [v if isinstance(v, str) else str(v) for v in ids], cells
    if start == 0:
        raise DataError(f"{path}: no rows; the file has a header but no customers")


def _csv_header(path: Path) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(path, dtype=str, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; it needs a header row and at least one row") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as csv ({type(exc).__name__}); check the file") from None


def _parquet_names(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read it as parquet ({type(exc).__name__}); check the file") from None


def _csv_pairs(
    path: Path, id_column: str, column: str, batch: int
) -> Iterator[tuple[list[Any], list[object]]]:
    import pandas as pd

    done = 0
    try:
        # every column parsed (not usecols), so a ragged row is an error, not silently cut
        for frame in pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], chunksize=batch):
            ids = [None if pd.isna(v) else v for v in frame[id_column].tolist()]
            cells = [None if pd.isna(v) else v for v in frame[column].tolist()]
            done += len(ids)
            yield ids, cells
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(
            f"{path}: cannot read it as csv after line {done + 1} ({type(exc).__name__}); check the file"
        ) from None


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
