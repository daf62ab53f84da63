"""The CSV reader every partner file goes through: its per-cell limit holds whatever else set the csv module's."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from fedcustomer.common.csv_records import MAX_CELL_CHARS, partner_csv_reader, refuse_unclosed_quote
from fedcustomer.errors import DataError


@pytest.fixture
def lowered_limit():
    """Another part of the process left the csv module's process-wide limit low."""
    before = csv.field_size_limit(1_000)
    yield
    csv.field_size_limit(before)


def test_the_reader_sets_the_products_limit_whatever_the_process_had(lowered_limit) -> None:
    rows = list(partner_csv_reader(io.StringIO(f"id,note\nC1,{'n' * MAX_CELL_CHARS}\n")))
    assert len(rows[1][1]) == MAX_CELL_CHARS
    with pytest.raises(csv.Error, match="field larger than field limit"):
        list(partner_csv_reader(io.StringIO(f"id,note\nC1,{'n' * (MAX_CELL_CHARS + 1)}\n")))


def test_an_unclosed_quote_is_named_by_its_line_and_a_huge_one_as_over_the_limit(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text('id,x\nSECRET-1,"1\nSECRET-2,2\n')
    with pytest.raises(
        DataError, match='short.csv, line 2: a quoted field \\(starting with "\\) is never closed'
    ):
        refuse_unclosed_quote(short, 2)
    huge = tmp_path / "huge.csv"
    huge.write_text('id,x\nSECRET-1,"1\n' + "SECRET-2,2\n" * (MAX_CELL_CHARS // 10))
    with pytest.raises(
        DataError, match="huge.csv, line 2: a cell holds more than 4,194,304 characters"
    ) as err:
        refuse_unclosed_quote(huge, 2)
    assert "SECRET" not in str(err.value)
