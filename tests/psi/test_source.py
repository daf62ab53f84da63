"""Ids read in batches from a partner's file: every bad file is a DataError naming the place, never a value."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcustomer.errors import DataError
from fedcustomer.psi.source import column_batches, id_batches


def _read(path, column="customer_id", **kw):
    return [v for batch in id_batches(path, column, **kw) for v in batch]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_batches_cover_the_column_in_file_order(tmp_path, suffix):
    ids = [f"ID-{k}" for k in range(1000)]
    path = tmp_path / f"f{suffix}"
    frame = pd.DataFrame({"x": range(1000), "customer_id": ids})
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    batches = list(id_batches(path, "customer_id", batch=300))
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    assert [v for b in batches for v in b] == ids


def test_parquet_integer_ids_become_text(tmp_path):
    pd.DataFrame({"customer_id": [17, 42]}).to_parquet(tmp_path / "f.parquet")
    assert _read(tmp_path / "f.parquet") == ["17", "42"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_id_column(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    frame = pd.DataFrame({"client": ["SECRET-1"]})
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match="no id column 'customer_id' \\(columns: client\\)") as err:
        _read(path)
    assert "SECRET-1" not in str(err.value)


def test_malformed_files(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(
        "customer_id,x\n" + "".join(f"SECRET-{k},{k}\n" for k in range(10)) + "SECRET-X,1,2,3\n"
    )
    with pytest.raises(DataError, match="ragged.csv, line 12: 4 fields but the header has 2") as err:
        _read(ragged, batch=4)
    assert "SECRET" not in str(err.value)
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"SECRET-1 not a parquet file")
    with pytest.raises(DataError, match="fake.parquet: cannot read it as parquet"):
        _read(fake)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"customer_id\n\xff\xfe\x00SECRET\n")
    with pytest.raises(DataError, match="binary.csv: cannot read it as csv"):
        _read(binary)


def test_empty_cells_files_and_limits(tmp_path):
    (tmp_path / "gap.csv").write_text("customer_id\nSECRET-1\n\nSECRET-2\n,\n")
    (tmp_path / "gap2.csv").write_text("customer_id,x\nSECRET-1,1\nSECRET-2,2\n,3\n")
    with pytest.raises(DataError, match="gap2.csv, line 4: column 'customer_id' is empty"):
        _read(tmp_path / "gap2.csv", batch=2)
    pd.DataFrame({"customer_id": ["a", None]}).to_parquet(tmp_path / "gap.parquet")
    with pytest.raises(DataError, match="row 1: column 'customer_id' is empty"):
        _read(tmp_path / "gap.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        _read(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("customer_id\n")
    with pytest.raises(DataError, match="no rows"):
        _read(tmp_path / "header.csv")
    with pytest.raises(DataError, match="file not found"):
        _read(tmp_path / "nope.csv")
    (tmp_path / "f.txt").write_text("customer_id\n1\n")
    with pytest.raises(DataError, match="unsupported file type"):
        _read(tmp_path / "f.txt")
    pd.DataFrame({"customer_id": [f"C{k}" for k in range(25)]}).to_csv(tmp_path / "big.csv", index=False)
    with pytest.raises(DataError, match="big.csv: 25 ids, more than --max-ids 10"):
        _read(tmp_path / "big.csv", batch=4, max_ids=10)


def _pairs(path, column="x"):
    return [pair for ids, cells in column_batches(path, "customer_id", column, "--value", batch=2)
            for pair in zip(ids, cells, strict=True)]  # fmt: skip


def test_a_row_with_fewer_fields_than_the_header_is_refused_not_padded(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("customer_id,x,y\nSECRET-1,1,2\nSECRET-2,1\nSECRET-3,1,2\n")
    for read in (_read, _pairs):
        with pytest.raises(DataError, match="short.csv, line 3: 2 fields but the header has 3") as err:
            read(short)
        assert "SECRET" not in str(err.value)
    # empty cells written out are not missing fields
    (tmp_path / "ok.csv").write_text("customer_id,x,y\nSECRET-1,,\nSECRET-2,1,\n")
    assert _pairs(tmp_path / "ok.csv") == [("SECRET-1", None), ("SECRET-2", "1")]


def test_every_row_one_field_longer_than_the_header_is_refused_not_shifted(tmp_path):
    # pandas would take the first field as an index and read the ids from the second
    shifted = tmp_path / "shifted.csv"
    shifted.write_text("customer_id,x\nSECRET-1,1,2\nSECRET-2,1,2\n")
    for read in (_read, _pairs):
        with pytest.raises(DataError, match="shifted.csv, line 2: 3 fields but the header has 2") as err:
            read(shifted)
        assert "SECRET" not in str(err.value)


def test_lines_are_counted_as_an_editor_shows_them(tmp_path):
    path = tmp_path / "lines.csv"
    path.write_text(
        '\ufeffcustomer_id,note\n\nSECRET-1,"two\nlines"\n   \nSECRET-2,ok\nSECRET-3\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match="lines.csv, line 7: 1 fields but the header has 2") as err:
        _read(path)
    assert "SECRET" not in str(err.value)
    path.write_text('customer_id,note\n\nSECRET-1,"two\nlines"\n   \nSECRET-2,ok\n', encoding="utf-8-sig")
    assert _read(path) == ["SECRET-1", "SECRET-2"]  # byte-order mark, blank lines and a quoted newline
    assert _pairs(path, "note") == [("SECRET-1", "two\nlines"), ("SECRET-2", "ok")]
    (tmp_path / "blank_id.csv").write_text("customer_id,x\nSECRET-1,1\n\n   ,2\n")
    with pytest.raises(DataError, match="blank_id.csv, line 4: column 'customer_id' is empty"):
        _read(tmp_path / "blank_id.csv")


def test_a_quote_never_closed_is_refused_not_read_to_the_end(tmp_path):
    path = tmp_path / "open.csv"
    path.write_text('customer_id,x\nSECRET-1,1\nSECRET-2,"2\nSECRET-3,3\n')
    for read in (_read, _pairs):
        with pytest.raises(
            DataError, match='open.csv, line 3: a quoted field \\(starting with "\\) is never closed'
        ) as err:
            read(path)
        assert "SECRET" not in str(err.value)
    path.write_text('customer_id,x\nSECRET-1,"1\n2"\n')
    assert _pairs(path) == [("SECRET-1", "1\n2")]  # a closed quote spanning lines is a value


def test_a_cell_up_to_the_per_cell_limit_is_read_and_one_over_is_refused_by_its_line(tmp_path):
    from fedcustomer.common.csv_records import MAX_CELL_CHARS

    path = tmp_path / "long.csv"
    path.write_text(f"customer_id,x\nSECRET-1,{'v' * MAX_CELL_CHARS}\nSECRET-2,{'w' * 200_000}\n")
    assert [(i, len(v)) for i, v in _pairs(path)] == [("SECRET-1", MAX_CELL_CHARS), ("SECRET-2", 200_000)]
    assert _read(path) == ["SECRET-1", "SECRET-2"]
    too_long = "long.csv, line 4: a cell holds more than 4,194,304 characters"
    path.write_text(f"customer_id,x\nSECRET-1,1\n\nSECRET-2,{'S' * (MAX_CELL_CHARS + 1)}\nSECRET-3,3\n")
    for read in (_read, _pairs):
        with pytest.raises(DataError, match=too_long) as err:
            read(path)
        assert "SECRET" not in str(err.value) and "SSSS" not in str(err.value)
    header = tmp_path / "header.csv"
    header.write_text("\n" + "S" * (MAX_CELL_CHARS + 1) + ",customer_id\nSECRET-1,1\n")
    with pytest.raises(DataError, match="header.csv, line 2: a cell holds more than") as err:
        _read(header)
    assert "SSSS" not in str(err.value)
