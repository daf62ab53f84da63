"""CSV files that leave the store: owner-only, written whole, safe to open in a spreadsheet.

Every CSV export (``read --output``, ``audit query --format csv``, ``psi --out``) goes
through here so the rules are the same everywhere:

* A cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
  is prefixed with ``'``: spreadsheets would otherwise run it as a formula (CSV
  injection). Plain numbers such as ``-12.5`` or ``+3`` cannot be formulas and are
  left as they are, so numeric exports stay numeric.
* The file is created with mode 0600 (it may hold decrypted core values) next to its
  destination and renamed into place, so a failed export leaves no partial file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` unless it is text a spreadsheet would evaluate; then the text with a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with every cell (header included) passed through :func:`safe_cell`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([safe_cell(c) for c in header])
    for row in rows:
        writer.writerow([safe_cell("" if c is None else c) for c in row])
    return buf.getvalue()


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as an owner-only (0600) file, whole or not at all."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: directory {path.parent} not found")
    # exact: a umask cannot widen 0600, but an existing ACL default might
    atomic_write_text(path, text, mode=0o600, exact=True)


def write_private_csv(path: Path, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> None:
    """An escaped CSV export at ``path``, mode 0600, written atomically."""
    write_private_text(path, csv_text(header, rows))
