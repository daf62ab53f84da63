"""CSV reading shared by every reader of a partner's files (the store's ingest and the PSI's id reader).

Both read with the csv module's lenient mode, which takes the rest of a file as the value of a quoted
field never closed; :func:`refuse_unclosed_quote` finds that case so the reader can refuse the file.

One cell may hold at most :data:`MAX_CELL_CHARS` characters. The csv module's own default (131,072)
refused files with a long free-text note or an exported JSON blob in one column, which are ordinary
customer data; a cell of millions of characters is not an attribute of a customer, and usually means
a quote that opened and never closed swallowed the rest of the file. The limit also bounds what one
record can make a reader hold in memory. The csv module keeps its limit for the whole process, so
every reader of a partner's file comes from :func:`partner_csv_reader`, which sets this one value.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from fedcustomer.errors import DataError

if TYPE_CHECKING:
    import _csv

MAX_CELL_CHARS = 4 * 1024 * 1024
"""The most characters one CSV cell of a partner's file may hold (4,194,304)."""

_OVER_LIMIT = "field larger than field limit"


def partner_csv_reader(lines: Iterable[str], *, strict: bool = False) -> _csv.Reader:
    """A ``csv.reader`` over a partner's file whose cells may hold up to :data:`MAX_CELL_CHARS`."""
    csv.field_size_limit(MAX_CELL_CHARS)
    return csv.reader(lines, strict=strict)


def cell_too_long(exc: csv.Error) -> bool:
    """Whether the csv module stopped because a cell passed :data:`MAX_CELL_CHARS`."""
    return _OVER_LIMIT in str(exc)


def cell_too_long_error(path: Path, line: int) -> DataError:
    """The refusal for a cell over the limit in the record starting on ``line``; it names no value."""
    return DataError(
        f"{path}, line {line}: a cell holds more than {MAX_CELL_CHARS:,} characters, the most one cell "
        "may hold (or a quoted field starting on that line is never closed); shorten the cell, or leave "
        "that column out of the file"
    )


def refuse_unclosed_quote(path: Path, start: int) -> None:
    """DataError when the record starting on line ``start`` (1-based) is a quoted field never closed.

    Called when the last record read spans lines; the message names the line, never a value.
    """
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        for _ in itertools.islice(fh, start - 1):
            pass
        try:
            for _ in partner_csv_reader(fh, strict=True):
                pass
        except csv.Error as exc:
            if cell_too_long(exc):
                raise cell_too_long_error(path, start) from None
            if "unexpected end of data" in str(exc):
                raise DataError(
                    f'{path}, line {start}: a quoted field (starting with ") is never closed; check the file'
                ) from None
