"""Where a row of an input file is, in the numbering a person fixing the file uses.

pandas numbers records from 0 without the header, skips blank lines, and its parser errors
count records or lines depending on the error, so none of its numbers is reliably the line
an editor shows. This module finds that line (1-based, header included, a quoted field that
spans lines counted as the line it starts on) with a second, cheap pass over the file, run
only when something has to be reported. Parquet files have no lines: their rows are
numbered from 1. Nothing here returns a cell's value: messages name lines and columns only.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedcustomer.common.csv_records import partner_csv_reader
from fedcustomer.errors import DataError


def is_blank_record(record: list[str]) -> bool:
    """An empty or whitespace-only line, which ingest skips. A quoted empty field ``""`` or one that
    spans lines is a record."""
    if not record:
        return True
    if len(record) != 1 or not record[0] or "\n" in record[0] or "\r" in record[0]:
        return False
    return not record[0].strip()


def _csv_records(path: Path) -> Iterator[tuple[int, int]]:
    """(first line, field count) of each data record after the header, blank lines skipped as ingest
    skips them (a UTF-8 byte-order mark is not part of the first line)."""
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = partner_csv_reader(fh)
        end, header = 0, False
        for row in reader:
            start, end = end + 1, reader.line_num
            if is_blank_record(row):
                continue
            if not header:
                header = True
                continue
            yield start, len(row)


def row_locations(path: Path, kind: str, rows: Iterable[int]) -> dict[int, str]:
    """``line N`` (CSV) or ``row N`` (Parquet) for each 0-based data row number pandas gave."""
    wanted = sorted(set(rows))
    if kind != "csv":
        return {r: f"row {r + 1}" for r in wanted}
    found: dict[int, str] = {}
    pending = iter(wanted)
    target = next(pending, None)
    try:
        for index, (line, _) in enumerate(_csv_records(Path(path))):
            if target is None:
                break
            if index == target:
                found[index] = f"line {line}"
                target = next(pending, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # the file changed or is odd: fall back to the data row number, said as such
    return {r: found.get(r, f"data row {r + 1}") for r in wanted}


def first_non_utf8_line(path: Path, block: int = 1 << 20) -> int | None:
    """The line holding the file's first byte sequence that is not UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with Path(path).open("rb") as fh:
            while True:
                data = fh.read(block)
                try:
                    decoder.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    # exc.object is what the decoder held back (never a newline) plus this block.
                    return line + bytes(exc.object[: exc.start]).count(b"\n")
                if not data:
                    return None
                line += data.count(b"\n")
    except OSError:
        return None


_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "'|'"}


def check_separator(path: Path, columns: Iterable[str]) -> None:
    """DataError when a CSV's header is one column holding ';', tabs or '|': the file is not comma-separated.

    Why: a spreadsheet saved with semicolons reads as one column whose name is the whole header, and
    the errors that follow ("no customer id column", "columns ... are missing") hide the cause.
    """
    names = list(columns)
    if len(names) != 1:
        return
    for sep, what in _OTHER_SEPARATORS.items():
        if sep in str(names[0]):
            raise DataError(
                f"{path}: the header is one column containing {what}: the file looks separated by {what}, "
                "not commas; save it as comma-separated CSV (UTF-8)"
            )
