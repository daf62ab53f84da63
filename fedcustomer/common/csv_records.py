"""CSV checks shared by every reader of a partner's files (the store's ingest and the PSI's id reader).

Both read with the csv module's lenient mode, which takes the rest of a file as the value of a quoted
field never closed; this finds that case so the reader can refuse the file instead.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from fedcustomer.errors import DataError


def refuse_unclosed_quote(path: Path, start: int) -> None:
    """DataError when the record starting on line ``start`` (1-based) is a quoted field never closed.

    Called when the last record read spans lines; the message names the line, never a value.
    """
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        for _ in itertools.islice(fh, start - 1):
            pass
        try:
            for _ in csv.reader(fh, strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise DataError(
                    f'{path}, line {start}: a quoted field (starting with ") is never closed; check the file'
                ) from None
