"""A partner's CSV file as chunks of raw text, every record checked against the header's width.

Read with the csv module rather than pandas: pandas pads a record with fewer fields than the
header with empty cells and, when every record has one field more than the header, takes the
first field as the row index and shifts the columns, so ``customer_id`` would be read from the
next column. Here a record with more or fewer fields than the header refuses the whole file
(its values cannot be placed in columns, so no field can be blamed, and the refusal happens
before anything is stored). Records are numbered as pandas numbered them (blank lines skipped),
so quality.json's line numbers keep their meaning. Errors name lines and counts, never a value.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from fedcustomer.common.csv_records import (
    cell_too_long,
    cell_too_long_error,
    partner_csv_reader,
    refuse_unclosed_quote,
)
from fedcustomer.data.source_lines import first_non_utf8_line, is_blank_record
from fedcustomer.errors import DataError


def column_names(header: list[str]) -> list[str]:
    """Header cells as column names: an empty name is ``Unnamed: i`` and a repeated one gets
    ``.1``, ``.2``, ... (the names earlier versions, read by pandas, gave these columns)."""
    names: list[str] = []
    seen: set[str] = set()
    for i, cell in enumerate(header):
        name = cell if cell else f"Unnamed: {i}"
        base, copy = name, 0
        while name in seen:
            copy += 1
            name = f"{base}.{copy}"
        seen.add(name)
        names.append(name)
    return names


def _frame(names: list[str], records: list[list[str]], start: int) -> pd.DataFrame:
    index = pd.RangeIndex(start, start + len(records))
    return pd.DataFrame(records, columns=names, index=index, dtype="string")


def csv_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Yield ``path`` as DataFrames of text (``string`` dtype), ``chunk_rows`` records at a time,
    indexed by the 0-based data row number. DataError for an empty file, a record whose field count
    differs from the header's, a quoted field never closed, a cell over the per-cell limit
    (:data:`~fedcustomer.common.csv_records.MAX_CELL_CHARS`), or bytes that are not UTF-8."""
    line = 0
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = partner_csv_reader(fh)
            names: list[str] | None = None
            width = 0
            records: list[list[str]] = []
            record: list[str] = []
            start = rows = 0
            for record in reader:
                first, line = line + 1, reader.line_num
                if len(record) != width or names is None:
                    if is_blank_record(record):
                        continue
                    if names is None:
                        names, width = column_names(record), len(record)
                        continue
                    if any("\n" in cell or "\r" in cell for cell in record):
                        refuse_unclosed_quote(path, first)  # an open quote took the rest of the file
                    raise DataError(
                        f"{path}: line {first} has {len(record)} fields but the header has {width}; every "
                        'row needs one value per column (quote values that contain the delimiter ",")'
                    )
                records.append(record)
                if len(records) >= chunk_rows:
                    yield _frame(names, records, rows)
                    rows += len(records)
                    records = []
                start = first
            if names is None:
                raise DataError(f"{path}: the file is empty; expected a header row and customer rows")
            if any("\n" in cell or "\r" in cell for cell in record):
                refuse_unclosed_quote(path, start)
            if records or not rows:  # a header alone still gives its columns (an empty chunk)
                yield _frame(names, records, rows)
    except UnicodeDecodeError:
        bad = first_non_utf8_line(path)
        where = f"line {bad} is" if bad is not None else "it is"
        raise DataError(f"{path}: {where} not UTF-8 text; re-save the file as UTF-8") from None
    except csv.Error as exc:
        if cell_too_long(exc):
            raise cell_too_long_error(path, line + 1) from None
        raise DataError(f"{path}: line {line + 1}: malformed CSV ({exc}); check the file") from None
