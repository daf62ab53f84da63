"""The governed store's ingest: quarantine, no clear core values, merges, re-ingest, failures that change nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcustomer.data.store_ingest import ChunkWriter
from fedcustomer.errors import SchemaError
from fedcustomer.privacy.access.policy import Actor
from tests.data.store_fixtures import (
    ADMIN,
    CORE,
    audit_entries,
    bank,
    home,
    home_bytes,
    logical_dump,
    store,
    write_csv,
)
from tests.data.test_ingest import bank_frame, plant_bad_rows

__all__ = ["bank", "home", "store"]  # fixtures


def test_ingest_quarantines_exactly_the_planted_rows_with_reasons(tmp_path, store, bank):
    frame, expected = plant_bad_rows(bank_frame(40))
    report = store.ingest(ADMIN, bank, write_csv(tmp_path, frame), chunk_rows=16)
    assert report.read == 40 and report.invalid == 5 and report.inserted == 35
    assert store.count("bank") == 35
    quarantined = store.quarantine_summary("bank")
    pseudo = store.pseudonymizer.pseudonym
    assert {q["pseudonym"]: q["reasons"] for q in quarantined} == {
        pseudo(cid): r for cid, r in expected.items()
    }
    assert sorted(q["row"] for q in quarantined) == [0, 1, 2, 3, 4]
    # The quarantined raw rows (with their core values) are stored encrypted only.
    raw = home_bytes(store)
    assert frame.at[0, "national_id"].encode() not in raw
    assert b"a lot" not in raw


def test_raw_ids_and_core_values_never_stored_in_clear(tmp_path, store, bank):
    frame = bank_frame(30)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    raw = home_bytes(store)
    for col in CORE:
        for value in frame[col].astype(str):
            assert value.encode() not in raw, col
    # Public and sensitive values are sealed too (under each customer's data key), so every
    # column of a customer's row other than its pseudonym and ingest number is ciphertext.
    for row in store.backend.fetchall('SELECT * FROM "c_bank"'):
        assert all(isinstance(v, bytes) for v in row[2:]) and isinstance(row[1], int)


def test_duplicates_merged_newest_wins_and_recorded_by_pseudonym(tmp_path, store, bank):
    frame = bank_frame(10)
    newer = frame.iloc[[2]].assign(updated_at="2025-06-01T00:00:00Z", income=77700.0)
    older = frame.iloc[[2]].assign(updated_at="2019-06-01T00:00:00Z", income=11100.0)
    path = write_csv(tmp_path, pd.concat([older, frame, newer], ignore_index=True))
    report = store.ingest(ADMIN, bank, path, chunk_rows=4)  # duplicates land in different chunks
    assert report.inserted == 10 and report.duplicates == 2 and store.count("bank") == 10
    p = store.pseudonymizer.pseudonym(frame.at[2, "customer_id"])
    got = store.read(Actor("dana", "data_scientist"), "analytics", ["income"], dataset="bank")
    assert got.loc[p, "income"] == 77700.0
    merged = [m for m in store.merges("bank") if m["pseudonym"] == p]
    assert len(merged) == 2 and all(m["outcome"] == "duplicate_in_file" for m in merged)
    # A later file with an older record keeps the stored newer one; a newer one replaces it.
    stale = write_csv(
        tmp_path, frame.iloc[[2]].assign(updated_at="2020-01-01T00:00:00Z", income=1.0), "old.csv"
    )
    assert store.ingest(ADMIN, bank, stale).stale == 1
    fresh = write_csv(
        tmp_path, frame.iloc[[2]].assign(updated_at="2026-01-01T00:00:00Z", income=2.0), "new.csv"
    )
    assert store.ingest(ADMIN, bank, fresh).updated == 1
    got = store.read(Actor("dana", "data_scientist"), "analytics", ["income"], dataset="bank")
    assert got.loc[p, "income"] == 2.0


def test_a_later_file_with_the_same_timestamp_corrects_every_stored_row(tmp_path, store, bank):
    # found by a new-user trial: corrections with an unchanged timestamp were applied to some
    # customers and kept out as "stale" for others, by a hash of the rows
    frame = bank_frame(12)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame, "first.csv"))
    corrected = frame.assign(income=frame["income"] + 1.0)
    report = store.ingest(ADMIN, bank, write_csv(tmp_path, corrected, "corrected.csv"))
    assert (report.updated, report.stale) == (12, 0)
    got = store.read(Actor("dana", "data_scientist"), "analytics", ["income"], dataset="bank")
    wanted = dict(zip(store.pseudonymizer.pseudonyms(frame["customer_id"]), corrected["income"], strict=True))
    assert got["income"].to_dict() == pytest.approx(wanted)


def test_a_file_of_many_rows_per_customer_is_told_that_one_row_each_was_kept(tmp_path, store, bank):
    # found by a new-user trial: a transaction log ingested as it is kept 852 of 23,702 rows, exit 0,
    # with only a count of duplicates to show for it
    from rich.console import Console

    from fedcustomer.data.ingest import IngestReport, print_report

    frame = bank_frame(5)
    lines = pd.concat([frame] * 4, ignore_index=True)  # every customer four times: a log of events
    report = store.ingest(ADMIN, bank, write_csv(tmp_path, lines, "events.csv"))
    assert (report.inserted, report.duplicates) == (5, 15)
    console = Console(record=True, width=300)
    print_report(report, console)
    text = " ".join(console.export_text().split())
    assert (
        "15 of the file's 20 valid rows repeated the customer id" in text and "One row per customer" in text
    )
    few = IngestReport("bank", "b.csv", "00" * 32, {}, read=20, inserted=19, duplicates=1)
    console = Console(record=True, width=300)
    print_report(few, console)
    assert "repeated the customer id" not in console.export_text()  # one correction in a file: no advice


def test_reingest_adds_nothing(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(20))
    path = write_csv(tmp_path, frame)
    store.ingest(ADMIN, bank, path)
    before = logical_dump(store.home)
    again = store.ingest(ADMIN, bank, path)
    assert again.skipped_file and again.inserted == 0
    # Same rows in a different file: every row unchanged, quarantine not duplicated.
    copy = write_csv(tmp_path, pd.concat([frame, frame.iloc[[7]]]), "copy.csv")
    third = store.ingest(ADMIN, bank, copy)
    assert third.unchanged == 15 and third.inserted == third.updated == 0 and third.duplicates == 1
    after = logical_dump(store.home)
    for table in ("c_bank", "data_keys", "quarantine"):
        assert after[table] == before[table]
    assert len(store.ingest_history("bank")) == 2


def test_failure_half_way_leaves_store_unchanged(tmp_path, store, bank, monkeypatch):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(20), "first.csv"))
    before = logical_dump(store.home)
    counts = (store.count("bank"), len(store.ingest_history()), len(store.quarantine_summary()))
    original = ChunkWriter.write
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChunkWriter, "write", failing)
    frame, _ = plant_bad_rows(bank_frame(60, seed=9))
    frame["customer_id"] = [f"N{i:07d}" for i in range(60)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.ingest(ADMIN, bank, write_csv(tmp_path, frame, "second.csv"), chunk_rows=20)
    assert calls["n"] == 2
    assert logical_dump(store.home) == before
    assert (store.count("bank"), len(store.ingest_history()), len(store.quarantine_summary())) == counts


def test_failed_first_ingest_leaves_no_dataset(tmp_path, store, bank, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ChunkWriter, "write", boom)
    with pytest.raises(RuntimeError):
        store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(5)))
    assert store.datasets() == []


def test_missing_column_is_a_schema_error_and_changes_nothing(tmp_path, store, bank):
    path = write_csv(tmp_path, bank_frame(5).drop(columns=["phone"]))
    with pytest.raises(SchemaError, match="phone"):
        store.ingest(ADMIN, bank, path)
    assert store.datasets() == [] and store.ingest_history() == []


def test_parquet_ingest(tmp_path, store, bank):
    frame = bank_frame(15)
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    path = tmp_path / "bank.parquet"
    frame.to_parquet(path, index=False)
    assert store.ingest(ADMIN, bank, path).inserted == 15


def test_structural_schema_change_refused(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(3)))
    from fedcustomer.data.schema import replace_field

    with pytest.raises(SchemaError, match="already stored with different"):
        store.register_schema(replace_field(bank, "income", tier="public"))
    store.register_schema(replace_field(bank, "income", masking="redact"))  # non-structural: accepted
    assert store.schema("bank").field("income").masking == "redact"


def test_re_ingesting_the_same_file_under_a_changed_tier_is_refused_not_skipped(tmp_path, store, bank):
    # A user who makes a field public after the first ingest and loads the same file again must not be
    # told "already ingested, nothing added" as if the change had applied (found by a new-user trial).
    from fedcustomer.data.schema import replace_field

    path = write_csv(tmp_path, bank_frame(3))
    store.ingest(ADMIN, bank, path)
    assert store.ingest(ADMIN, bank, path).skipped_file
    with pytest.raises(
        SchemaError, match=r"\(income: tier sensitive -> public\); a structural change needs a new"
    ):
        store.ingest(ADMIN, replace_field(bank, "income", tier="public"), path)
    assert store.schema("bank").field("income").tier == "sensitive"
    failed = audit_entries(store, action="ingest", decision="denied")
    assert failed and "income: tier sensitive -> public" in failed[-1].reason
