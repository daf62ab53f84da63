"""CSV exports: formula-looking cells escaped, numbers untouched, owner-only files written whole."""

from __future__ import annotations

import csv
import io
import os
import stat

import pytest

from fedcustomer.data.export import csv_text, safe_cell, write_private_csv


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-12.5", "-12.5"),
        ("+3", "+3"),
        ("-1e5", "-1e5"),
        ("north", "north"),
        ("a=b", "a=b"),
        (-7, -7),
        (None, None),
    ],
)
def test_safe_cell_escapes_formulas_and_keeps_plain_values(value, expected):
    assert safe_cell(value) == expected


def test_csv_text_escapes_header_and_cells_and_round_trips():
    text = csv_text(["pseudonym", "=evil"], [["p1", "=1+1"], ["p2", None], ["p3", -4.5]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["pseudonym", "'=evil"], ["p1", "'=1+1"], ["p2", ""], ["p3", "-4.5"]]


def test_write_private_csv_is_owner_only_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.csv"
    old = os.umask(0o022)
    try:
        write_private_csv(target, ["a"], [["1"]])
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
