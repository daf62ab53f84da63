"""A CSV row with more or fewer fields than its header refuses the ingest; it is never padded or shifted.

pandas, which read these files before, padded a short row with empty cells and, when every row had
one field more than the header, read the first field as the row index so ``customer_id`` came from
the next column. These tests pin the refusal (line and field counts, never a value), that a refused
ingest changes nothing, and that well-formed inputs (blank lines, a byte-order mark, UCI- and
CDNOW-shaped exports) still ingest.
"""

import json
import re

import pandas as pd
import pytest

from fedcustomer.common.csv_records import MAX_CELL_CHARS
from fedcustomer.data.ingest import read_chunks
from fedcustomer.data.schema import Schema
from fedcustomer.data.schema_draft import draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from tests.data.store_fixtures import logical_dump
from tests.data.test_loaders import uci_frame, write_cdnow, write_uci

ADMIN = Actor("alice", "partner_admin")
SCHEMA = Schema.from_yaml(
    """dataset: accounts
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: region, type: string, tier: public, role: feature}
  - {name: age, type: integer, tier: sensitive, role: feature}
"""
)


@pytest.fixture()
def store(tmp_path):
    s = PartnerStore.init(PartnerHome(tmp_path / "home"), "bank_a")
    yield s
    s.close()


def _write(tmp_path, text: str, name: str = "in.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


RAGGED = [
    # a short row: pandas filled the missing age with an empty cell
    ("customer_id,region,age\nC1,north,30\nSECRET9,south\n", "line 3 has 2 fields but the header has 3"),
    # a long row among good ones
    (
        "customer_id,region,age\nC1,north,30\nC2,south,40,SECRET9\n",
        "line 3 has 4 fields but the header has 3",
    ),
    # every row long: pandas took the first field as the index and read ids from the next column
    (
        "customer_id,region,age\nSECRET9,C1,north,30\nSECRET8,C2,south,40\n",
        "line 2 has 4 fields but the header has 3",
    ),
    # every row short
    ("customer_id,region,age\nSECRET9,north\nSECRET8,south\n", "line 2 has 2 fields but the header has 3"),
    # a quoted field never closed swallows the rest of the file
    ('customer_id,region,age\nC1,north,30\nC2,"SECRET9,40\nC3,east,50\n', "line 3: a quoted field"),
    # a cell over the per-cell limit, after rows the ingest has already prepared
    (
        "customer_id,region,age\nC1,north,30\nC2,south,40\nC3," + "SECRET9" * 600_000 + ",50\n",
        f"line 4: a cell holds more than {MAX_CELL_CHARS:,} characters",
    ),
]
TOO_LONG = "in.csv, line {line}: a cell holds more than 4,194,304 characters, the most one cell may hold"


@pytest.mark.parametrize(("text", "expected"), RAGGED)
def test_a_ragged_row_refuses_the_file_naming_line_and_counts_never_a_value(tmp_path, text, expected):
    path = _write(tmp_path, text)
    for chunk_rows in (1, 2, 50_000):
        with pytest.raises(DataError, match=re.escape(expected)) as info:
            list(read_chunks(path, chunk_rows=chunk_rows))
        assert "SECRET" not in str(info.value)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("text", "expected"), RAGGED)
def test_a_refused_ingest_leaves_store_keys_and_audit_log_as_they_were(tmp_path, store, text, expected):
    store.ingest(ADMIN, SCHEMA, _write(tmp_path, "customer_id,region,age\nA1,west,20\n", "first.csv"))
    before, keys = logical_dump(store.home), _files(store.home.keys_dir)
    audit = (store.home.audit_dir / "audit.jsonl").read_text()
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        store.ingest(ADMIN, SCHEMA, _write(tmp_path, text), chunk_rows=1)
    assert "SECRET" not in str(info.value)
    assert logical_dump(store.home) == before and _files(store.home.keys_dir) == keys
    assert len(store.ingest_history()) == 1 and store.count("accounts") == 1
    # The log keeps every earlier entry and adds only the failed attempt, which quotes no value.
    after = (store.home.audit_dir / "audit.jsonl").read_text()
    assert after.startswith(audit)
    (added,) = after[len(audit) :].splitlines()
    entry = json.loads(added)
    assert (entry["action"], entry["decision"], entry["details"]["outcome"]) == ("ingest", "denied", "failed")
    assert "SECRET" not in added


def test_blank_lines_and_a_byte_order_mark_are_still_accepted(tmp_path, store):
    text = '\ufeff\ncustomer_id,region,age\n\nC1,north,30\n  \nC2,"so\nuth",40\n\nC3,,50\n\n'
    path = _write(tmp_path, text)
    (chunk,) = read_chunks(path)
    assert list(chunk.columns) == ["customer_id", "region", "age"]
    assert chunk["customer_id"].tolist() == ["C1", "C2", "C3"]
    assert chunk["region"].tolist() == ["north", "so\nuth", ""]  # an empty cell stays "", not a pad
    assert list(chunk.index) == [0, 1, 2] and str(chunk.dtypes.iloc[0]) == "string"
    report = store.ingest(ADMIN, SCHEMA, path)
    # the empty region is a well-formed row's missing value: quarantined with its reason, like any
    assert (report.read, report.inserted, report.invalid) == (3, 2, 1)
    assert report.to_dict()["invalid_rows"] == [{"line": 9, "reasons": {"region": "missing required value"}}]


def test_chunks_match_what_pandas_reads_from_a_well_formed_file(tmp_path):
    frame = uci_frame(57)
    path = tmp_path / "uci.csv"
    frame.to_csv(path, index=False)
    expected = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[]).astype("string")
    chunks = list(read_chunks(path, chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 10, 7]
    assert pd.concat(chunks).equals(expected)


def test_repeated_and_empty_header_names_keep_the_names_pandas_gave(tmp_path):
    (chunk,) = read_chunks(_write(tmp_path, "customer_id,x,x,\nC1,1,2,3\n"))
    assert list(chunk.columns) == ["customer_id", "x", "x.1", "Unnamed: 3"]


def test_a_uci_style_export_still_ingests(tmp_path, store):
    path = write_uci(tmp_path / "uci")
    schema = draft_schema(path, dataset="uci")
    report = store.ingest(ADMIN, schema, path)
    assert (report.read, report.invalid, report.inserted) == (400, 0, 400)


def test_a_cdnow_style_customer_table_still_ingests(tmp_path, store):
    from fedcustomer.data.cdnow import load_cdnow

    frame = load_cdnow(write_cdnow(tmp_path / "cdnow"))
    path = tmp_path / "cdnow_customers.csv"
    frame.to_csv(path, index=False)
    schema = draft_schema(path, dataset="cdnow")
    report = store.ingest(ADMIN, schema, path)
    assert report.read == len(frame) > 0 and report.inserted == len(frame) and report.invalid == 0


def test_a_cell_at_the_per_cell_limit_is_read_whole_and_ingested(tmp_path, store):
    """The csv module's default limit (131,072 characters) used to refuse these files."""
    longest = "n" * MAX_CELL_CHARS
    path = _write(tmp_path, f"customer_id,region,age\nC1,{longest},30\nC2,{'s' * 200_000},40\n")
    chunks = list(read_chunks(path, chunk_rows=1))
    assert [c["region"].str.len().tolist() for c in chunks] == [[MAX_CELL_CHARS], [200_000]]
    report = store.ingest(ADMIN, SCHEMA, path)
    assert (report.read, report.inserted, report.invalid) == (2, 2, 0)


def test_a_cell_over_the_per_cell_limit_is_refused_with_its_line_never_its_value(tmp_path):
    over = "SECRET" * (MAX_CELL_CHARS // 6) + "SECRET"[: MAX_CELL_CHARS % 6 + 1]
    assert len(over) == MAX_CELL_CHARS + 1
    for text in (
        f"customer_id,region,age\nC1,north,30\n\nC2,{over},40\nC3,east,50\n",  # a blank line counts
        f'customer_id,region,age\nC1,north,30\n\nC2,"{over}",40\n',  # quoted
    ):
        path = _write(tmp_path, text)
        for chunk_rows in (1, 50_000):
            with pytest.raises(DataError, match=re.escape(TOO_LONG.format(line=4))) as info:
                list(read_chunks(path, chunk_rows=chunk_rows))
            assert "SECRET" not in str(info.value)


def test_a_quote_never_closed_before_more_than_the_limit_is_refused_by_its_line(tmp_path):
    path = _write(tmp_path, 'customer_id,region,age\nC1,north,30\nC2,"SECRET\n' + "C9,east,50\n" * 500_000)
    with pytest.raises(DataError, match=re.escape(TOO_LONG.format(line=3)) + ".*never closed") as info:
        list(read_chunks(path))
    assert "SECRET" not in str(info.value)


def test_a_header_alone_gives_one_empty_chunk_with_its_columns(tmp_path):
    path = _write(tmp_path, "customer_id,region,age\n")
    (chunk,) = read_chunks(path)
    assert (len(chunk), list(chunk.columns)) == (0, ["customer_id", "region", "age"])
    with pytest.raises(DataError, match="the file is empty"):
        list(read_chunks(_write(tmp_path, "\n\n", "blank.csv")))
