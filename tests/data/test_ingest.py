"""Chunked reading, chunk preparation (validation, pseudonyms, in-chunk dedup) and quality.json."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from fedcustomer.data.ingest import (
    QUALITY_FORMAT,
    IngestReport,
    file_sha256,
    prepare_chunk,
    print_report,
    read_chunks,
)
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.validators import luhn_valid, prc_id_check_char
from fedcustomer.errors import DataError
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

REGIONS = ["north", "south", "east", "west", "central"]


def prc_id(rng: np.random.Generator) -> str:
    first = "110105" + f"{rng.integers(1950, 2000)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    first += f"{rng.integers(0, 1000):03d}"
    return first + prc_id_check_char(first)


def bank_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A small bank table in the bundled bank schema's columns, all rows valid."""
    rng = np.random.default_rng(seed)
    limit = rng.integers(10, 200, n) * 100.0
    util = rng.uniform(0, 1, n).round(4)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:07d}" for i in range(1, n + 1)],
            "national_id": [prc_id(rng) for _ in range(n)],
            "full_name": [f"Name {i}" for i in range(n)],
            "phone": [f"13{rng.integers(0, 10**9):09d}" for _ in range(n)],
            "region": rng.choice(REGIONS, n),
            "age": rng.integers(20, 80, n),
            "income": (rng.integers(50, 500, n) * 100.0),
            "credit_limit": limit,
            "balance": (util * limit).round(2),
            "utilisation": util,
            "num_late_payments": rng.integers(0, 5, n),
            "months_on_book": rng.integers(1, 300, n),
            "num_products": rng.integers(1, 5, n),
            "debt_to_income": rng.uniform(0, 2, n).round(3),
            "defaulted": rng.integers(0, 2, n),
            "updated_at": [f"2024-03-{1 + i % 28:02d}T10:00:00Z" for i in range(n)],
        }
    )


def plant_bad_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """Five bad rows, one per kind; returns the frame and {customer_id: expected reasons}."""
    frame = frame.astype(object).copy()
    nid = frame.at[0, "national_id"]
    frame.at[0, "national_id"] = nid[:-1] + ("0" if nid[-1] != "0" else "1")
    frame.at[1, "age"] = 7
    frame.at[2, "updated_at"] = "2024-13-45T99:00:00Z"
    frame.at[3, "full_name"] = ""
    frame.at[4, "income"] = "a lot"
    expected = {
        frame.at[0, "customer_id"]: {"national_id": "fails the prc_id checksum"},
        frame.at[1, "customer_id"]: {"age": "below minimum 18"},
        frame.at[2, "customer_id"]: {"updated_at": "not an ISO 8601 date-time"},
        frame.at[3, "customer_id"]: {"full_name": "missing required value"},
        frame.at[4, "customer_id"]: {"income": "not a number"},
    }
    return frame, expected


@pytest.fixture()
def pseudonymizer(tmp_path):
    return Pseudonymizer.create(tmp_path / "keys")


def test_read_chunks_streams_csv_in_chunks_with_file_row_numbers(tmp_path):
    path = tmp_path / "bank.csv"
    bank_frame(25).to_csv(path, index=False)
    chunks = list(read_chunks(path, chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert chunks[2].index.tolist() == list(range(20, 25))
    assert all(str(dtype) == "string" for dtype in chunks[0].dtypes)


def test_parquet_and_csv_give_the_same_prepared_rows(tmp_path, pseudonymizer):
    frame = bank_frame(12)
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    frame.loc[3, "income"] = np.nan
    frame.to_csv(tmp_path / "b.csv", index=False)
    frame.to_parquet(tmp_path / "b.parquet", index=False)
    schema = load_bundled("bank")
    (csv_chunk,) = read_chunks(tmp_path / "b.csv")
    (pq_chunk,) = read_chunks(tmp_path / "b.parquet")
    a, _ = prepare_chunk(schema, csv_chunk, pseudonymizer)
    b, _ = prepare_chunk(schema, pq_chunk, pseudonymizer)
    assert a.invalid == b.invalid == []
    assert a.pseudonyms == b.pseudonyms and a.digests == b.digests
    assert a.plain["income"][3] is None


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_chunks(tmp_path / "x.xlsx"))
    with pytest.raises(DataError, match="not found"):
        list(read_chunks(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="not found"):
        file_sha256(tmp_path / "x.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        list(read_chunks(tmp_path / "empty.csv"))


def test_prepare_chunk_rejects_exactly_the_planted_rows(tmp_path, pseudonymizer):
    frame, expected = plant_bad_rows(bank_frame(30))
    frame.to_csv(tmp_path / "b.csv", index=False)
    (chunk,) = read_chunks(tmp_path / "b.csv")
    prepared, stats = prepare_chunk(load_bundled("bank"), chunk, pseudonymizer)
    got = {bad.id_value: bad.reasons for bad in prepared.invalid}
    assert got == expected
    assert [bad.row for bad in prepared.invalid] == [0, 1, 2, 3, 4]
    assert len(prepared) == 25 and stats.invalid == 5 and stats.read == 30
    # Valid rows are keyed by pseudonym, never by raw id.
    assert prepared.pseudonyms[0] == pseudonymizer.pseudonym(frame.at[5, "customer_id"])
    assert not any(p.startswith("C0") for p in prepared.pseudonyms)


def test_prepare_chunk_keeps_newest_duplicate(tmp_path, pseudonymizer):
    frame = bank_frame(5)
    newer = frame.iloc[[1]].copy()
    newer["updated_at"] = "2025-01-01T00:00:00Z"
    newer["income"] = 99900.0
    older = frame.iloc[[1]].copy()
    older["updated_at"] = "2020-01-01T00:00:00Z"
    mixed = pd.concat([frame.iloc[:1], newer, frame.iloc[1:], older], ignore_index=True)
    mixed.to_csv(tmp_path / "d.csv", index=False)
    (chunk,) = read_chunks(tmp_path / "d.csv")
    prepared, stats = prepare_chunk(load_bundled("bank"), chunk, pseudonymizer)
    assert len(prepared) == 5 and stats.duplicates == 2
    p = pseudonymizer.pseudonym(frame.at[1, "customer_id"])
    i = prepared.pseudonyms.index(p)
    assert prepared.plain["income"][i] == 99900.0
    assert {(d[0], d[1]) for d in prepared.duplicates} == {(p, "2025-01-01T00:00:00.000000Z")}


def test_quality_report_json_schema_is_stable(tmp_path, pseudonymizer):
    frame, _ = plant_bad_rows(bank_frame(20))
    frame.to_csv(tmp_path / "b.csv", index=False)
    schema = load_bundled("bank")
    report = IngestReport("bank", "b.csv", "ab" * 32, {f.name: f.tier for f in schema.fields})
    for chunk in read_chunks(tmp_path / "b.csv", chunk_rows=7):
        report.add(prepare_chunk(schema, chunk, pseudonymizer)[1])
    out = tmp_path / "quality.json"
    report.write_json(out)
    doc = json.loads(out.read_text())
    assert doc["format"] == QUALITY_FORMAT
    assert set(doc) == {
        "format",
        "dataset",
        "file",
        "sha256",
        "ingest_id",
        "skipped_file",
        "started_at",
        "finished_at",
        "rows",
        "fields",
        "invalid_reasons",
        "invalid_rows",
        "ignored_columns",
    }
    assert doc["rows"]["read"] == 20 and doc["rows"]["invalid"] == 5 and doc["rows"]["valid"] == 15
    assert doc["fields"]["full_name"] == {"tier": "core", "completeness": 0.95, "missing": 1, "invalid": 1}
    assert doc["invalid_reasons"]["age"] == {"below minimum 18": 1}
    # No raw value of any kind reaches the report.
    text = out.read_text()
    assert frame.at[0, "national_id"] not in text and "a lot" not in text


def test_print_report_shows_counts(tmp_path):
    from rich.console import Console

    report = IngestReport("bank", "b.csv", "00" * 32, {"age": "sensitive"}, read=3, inserted=3)
    console = Console(record=True, width=120)
    print_report(report, console)
    text = console.export_text()
    assert "inserted" in text and "age" in text and "100.0%" in text


def test_generated_bank_rows_are_valid_ids():
    frame = bank_frame(50, seed=4)
    from fedcustomer.data.validators import prc_id_valid

    assert all(prc_id_valid(v) for v in frame["national_id"])
    assert not luhn_valid(frame.at[0, "customer_id"])


ADMIN = Actor("alice", "partner_admin")
TRAINING = Actor("node:bank_a", "training_pipeline")


@pytest.fixture()
def gov_store(tmp_path):
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.partner.home import PartnerHome

    s = PartnerStore.init(PartnerHome(tmp_path / "home"), "bank_a")
    yield s
    s.close()


def _csv(tmp_path, frame):
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    return path


WIDE_INT_SCHEMA = """dataset: accounts
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: account_no, type: integer, tier: sensitive, role: feature}
"""


def test_integers_beyond_exact_range_are_invalid_rows_not_crashes_or_rounding(tmp_path, gov_store):
    from fedcustomer.data.schema import Schema
    from fedcustomer.data.validators import INTEGER_REASON, MAX_EXACT_INTEGER

    values = {
        "C1": str(MAX_EXACT_INTEGER),
        "C2": str(-MAX_EXACT_INTEGER),
        "C3": str(2**53 + 1),
        "C4": str(2**63 + 5),
        "C5": "1e20",
        "C6": "-" + str(2**64),
    }
    path = _csv(tmp_path, pd.DataFrame({"customer_id": list(values), "account_no": list(values.values())}))
    report = gov_store.ingest(ADMIN, Schema.from_yaml(WIDE_INT_SCHEMA), path)
    assert (report.inserted, report.invalid) == (2, 4)
    stored = gov_store.read(TRAINING, "training", fields=["account_no"], dataset="accounts")["account_no"]
    assert sorted(int(v) for v in stored) == [-MAX_EXACT_INTEGER, MAX_EXACT_INTEGER]  # exact, not rounded
    reasons = [q["reasons"] for q in gov_store.quarantine_summary("accounts")]
    assert reasons == [{"account_no": INTEGER_REASON}] * 4


def test_very_wide_file_is_refused_quickly_and_changes_nothing(tmp_path, gov_store):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["customer_id", *(f"c{i}" for i in range(20_000))]) + "\n")
    with pytest.raises(DataError, match="20001 columns, more than the maximum of 1000"):
        gov_store.ingest(ADMIN, load_bundled("bank"), path)
    assert gov_store.datasets() == []


# --- where a bad row is: the line an editor shows -----------------------------------------------

EDITOR_SCHEMA = """dataset: edits
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: national_id, type: string, tier: core, validation: {checksum: prc_id}}
  - {name: income, type: float, tier: sensitive}
  - {name: region, type: string, tier: public}
"""


def _editor_file(tmp_path):
    """A CSV with blank lines and a quoted field over two lines: record numbers and lines differ."""
    rng = np.random.default_rng(3)
    good = [prc_id(rng) for _ in range(4)]
    bad_nid = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    lines = [
        "customer_id,national_id,income,region",  # line 1
        "",  # line 2: blank, skipped by the reader
        f'C1,{good[0]},100,"North',  # line 3: a quoted region over two lines
        'East"',  # line 4
        f"C2,{good[1]},SECRET-INCOME,north",  # line 5: bad sensitive value
        "",  # line 6
        f"C3,{bad_nid},300,south",  # line 7: bad core value
        f"C4,{good[3]},400,west",  # line 8
    ]
    path = tmp_path / "edits.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, bad_nid


@pytest.mark.parametrize("chunk_rows", [1, 2, 50_000])
def test_quarantined_rows_are_named_by_the_line_an_editor_shows_and_never_by_value(
    tmp_path, gov_store, chunk_rows
):
    from rich.console import Console

    from fedcustomer.data.schema import Schema

    path, bad_nid = _editor_file(tmp_path)
    report = gov_store.ingest(ADMIN, Schema.from_yaml(EDITOR_SCHEMA), path, chunk_rows=chunk_rows)
    assert (report.read, report.invalid) == (4, 2)
    assert report.to_dict()["invalid_rows"] == [
        {"line": 5, "reasons": {"income": "not a number"}},
        {"line": 7, "reasons": {"national_id": "fails the prc_id checksum"}},
    ]
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "line 5: income: not a number" in text and "line 7: national_id: fails the prc_id checksum" in text
    shown = text + json.dumps(report.to_dict())
    assert "SECRET-INCOME" not in shown and bad_nid not in shown  # sensitive and core values never


def test_quarantined_parquet_rows_are_numbered_from_one(tmp_path, gov_store):
    from fedcustomer.data.schema import Schema

    frame = pd.DataFrame({"customer_id": ["A", "B", "C"], "account_no": ["1", "x", "3"]})
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    report = gov_store.ingest(ADMIN, Schema.from_yaml(WIDE_INT_SCHEMA), tmp_path / "a.parquet")
    assert [r["row"] for r in report.to_dict()["invalid_rows"]] == [2]


def test_only_the_first_hundred_quarantined_rows_are_placed(tmp_path, gov_store):
    from fedcustomer.data.ingest import INVALID_ROWS_KEPT
    from fedcustomer.data.schema import Schema

    n = INVALID_ROWS_KEPT + 20
    ids, values = [f"C{i}" for i in range(n)] + ["OK"], ["x"] * n + ["7"]  # one valid row: the file is taken
    frame = pd.DataFrame({"customer_id": ids, "account_no": values})
    report = gov_store.ingest(ADMIN, Schema.from_yaml(WIDE_INT_SCHEMA), _csv(tmp_path, frame), chunk_rows=30)
    rows = report.to_dict()["invalid_rows"]
    assert report.invalid == n and [r["line"] for r in rows] == list(range(2, INVALID_ROWS_KEPT + 2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the extra field is on line 4: the quoted value over lines 2-3 is one record
        ('a,b\n"x\ny",2\n3,4,5\n', "line 4 has 3 fields but the header has 2"),
        ("a,b\n1,2\n\n3,4\n5,6,SECRET\n", "line 5 has 3 fields but the header has 2"),
        ('a,b\n1,2\n"3,4\n5,6\n', 'line 3: a quoted field (starting with ") is never closed'),
    ],
)
def test_malformed_csv_names_the_line_an_editor_shows(tmp_path, text, expected):
    from fedcustomer.data.schema_draft import draft_schema

    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    for chunk_rows in (1, 50_000):
        with pytest.raises(DataError) as info:
            list(read_chunks(path, chunk_rows=chunk_rows))
        assert expected in str(info.value) and "SECRET" not in str(info.value)
    with pytest.raises(DataError, match=re.escape(expected)):  # `schema draft` reads the file the same way
        draft_schema(path, dataset="x")


def test_non_utf8_byte_names_its_line_not_a_byte_offset(tmp_path):
    path = tmp_path / "latin.csv"
    rows = b"".join(b"C%d,north\n" % i for i in range(3000))  # past the reader's first buffer
    path.write_bytes(b"customer_id,region\n" + rows + b"C9,N\xe9rth\n")
    for chunk_rows in (7, 50_000):
        with pytest.raises(DataError, match="line 3002 is not UTF-8 text; re-save the file as UTF-8"):
            list(read_chunks(path, chunk_rows=chunk_rows))


def test_a_file_with_no_valid_row_is_refused_storing_nothing_and_can_be_ingested_again_once_fixed(
    tmp_path, gov_store
):
    # A 0/1 label given as good/bad made every row invalid; the ingest used to succeed (exit 0) with all rows
    # quarantined, and the same file under a fixed schema was then skipped as "already ingested" (found by
    # new-user trials).
    from rich.console import Console

    from fedcustomer.data.ingest import NothingValid
    from fedcustomer.data.schema import Schema

    frame = pd.DataFrame({"customer_id": ["A", "B", "C"], "account_no": ["good", "bad", "good"]})
    path = _csv(tmp_path, frame)
    counts = "SELECT (SELECT COUNT(*) FROM ingests), (SELECT COUNT(*) FROM quarantine)"
    before = gov_store.backend.fetchone(counts)
    with pytest.raises(NothingValid) as info:
        gov_store.ingest(ADMIN, Schema.from_yaml(WIDE_INT_SCHEMA), path)
    message = str(info.value)
    assert "none of the 3 rows was valid (most common: account_no: not a number)" in message
    assert "nothing was stored" in message and "good" not in message and "bad" not in message
    assert gov_store.backend.fetchone(counts) == before  # rolled back: no ingest, no quarantine
    report = info.value.report
    assert report.ingest_id is None and report.invalid == 3 and len(report.invalid_row_list()) == 3
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "refused:" in text and "good" not in text and "bad" not in text
    fixed = WIDE_INT_SCHEMA.replace("account_no, type: integer", "account_no, type: string")
    again = gov_store.ingest(ADMIN, Schema.from_yaml(fixed), path)
    assert again.inserted == 3 and not again.skipped_file
    ok = IngestReport("bank", "b.csv", "00" * 32, {"age": "sensitive"}, read=3, inserted=3)
    console = Console(record=True, width=200)
    print_report(ok, console)
    assert "none of the" not in console.export_text()


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_file_separated_by_something_else_than_commas_is_named_as_such(tmp_path, sep):
    # A semicolon CSV from a spreadsheet gave "no customer id column" from the draft, and suggested
    # --id-from-row, which would store the whole line as one field (found by a new-user trial).
    from fedcustomer.data.schema_draft import draft_schema
    from fedcustomer.data.sources import read_table

    path = tmp_path / "customers.csv"
    path.write_text(sep.join(["customer_id", "age", "default"]) + "\n" + sep.join(["C1", "30", "0"]) + "\n")
    for action in (lambda: draft_schema(path), lambda: list(read_chunks(path)), lambda: read_table(path)):
        with pytest.raises(DataError, match="the header is one column containing .* not commas; save it as"):
            action()
    path.write_text("customer_id\nC1;x\n")  # a one-column file whose values hold ';' is fine
    assert list(read_chunks(path))[0]["customer_id"].tolist() == ["C1;x"]
