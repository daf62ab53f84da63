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
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedcustomer.errors import DataError

_EXPECTED = re.compile(r"Expected (\d+) fields in line \d+, saw \d+")


def _csv_records(path: Path) -> Iterator[tuple[int, int]]:
    """(first line, field count) of each data record after the header, blank lines skipped as pandas does."""
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        end, header = 0, False
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
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


def explain_csv_error(path: Path, message: str) -> str:
    """A pandas parser error restated with the line an editor shows, or the error itself."""
    expected = _EXPECTED.search(message)
    try:
        if expected:
            width = int(expected.group(1))
            for line, count in _csv_records(Path(path)):
                if count > width:
                    return (
                        f"line {line} has {count} fields but the header has {width}; quote values that "
                        'contain the delimiter (",") or remove the extra ones'
                    )
        elif "EOF inside string" in message:
            last = None
            for record in _csv_records(Path(path)):
                last = record[0]  # the unclosed quote swallows the rest of the file into the last record
            if last is not None:
                return f'line {last}: a quoted field (starting with ") is never closed'
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return f"malformed CSV: {message}"


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
