"""Every read records exactly which customers it reached, so "who read customer X's income" has an
answer even for bulk reads that decrypt no core field (found by a new-user trial)."""

from __future__ import annotations

import json

import pytest

from fedcustomer.data import store_customers
from fedcustomer.data.store_customers import CustomerSets, record_customers, set_digest
from fedcustomer.data.store_db import table_name
from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.query import IN_READ_SET, MAY_INCLUDE, NAMED, customer_match
from fedcustomer.privacy.audit.writer import AuditLog
from tests.data.store_fixtures import (
    MARKETING,
    RISK,
    TRAINING,
    _approve_core,
    audit_entries,
    bank,
    home,
    store,
)
from tests.data.test_store_read import _alter, loaded

__all__ = ["bank", "home", "store", "loaded"]  # fixtures


def _pseudonyms(store) -> list[str]:
    return [r[0] for r in store.backend.fetchall(f"SELECT pseudonym FROM {table_name('bank')} ORDER BY 1")]


def test_a_bulk_read_of_general_fields_is_found_by_each_customer_it_reached_and_no_other(loaded):
    everyone = _pseudonyms(loaded)
    north = loaded.read(MARKETING, "marketing", ["region", "income"], {"region": "north"}, dataset="bank")
    entry = audit_entries(loaded)[-1]
    assert entry.action == "read" and entry.pseudonyms == ()  # no core field: the entry names no one
    assert entry.details["customers"]["count"] == len(north) > 0
    reached = set(north.index)
    for p in everyone:
        found = [e.seq for e in loaded.audit.query(pseudonym=p)]
        assert (entry.seq in found) == (p in reached)
    assert customer_match(entry, next(iter(reached)), loaded.audit.customer_sets) == IN_READ_SET
    assert not any(p in json.dumps(entry.to_dict()) for p in everyone)  # the log holds a digest, no list


def test_a_batched_read_cites_the_same_set_as_the_whole_read_of_the_same_rows(loaded):
    loaded.read(TRAINING, "training", ["age"], dataset="bank")
    whole = audit_entries(loaded)[-1].details["customers"]
    for _ in loaded.read_batches(TRAINING, "training", ["age"], dataset="bank", batch_size=4):
        pass
    assert audit_entries(loaded)[-1].details["customers"] == whole
    assert whole["count"] == 23
    # content-addressed: reading the same customers again stored nothing new
    assert loaded.backend.scalar("SELECT COUNT(*) FROM customer_sets") == 1


def test_a_decrypt_names_its_customers_and_cites_its_set(loaded):
    _approve_core(loaded)
    loaded.read(RISK, "risk_review", ["full_name"], dataset="bank")
    entry = audit_entries(loaded)[-1]
    assert entry.action == "decrypt" and customer_match(entry, entry.pseudonyms[0]) == NAMED


def test_an_edited_customer_set_is_reported_not_answered(loaded):
    loaded.read(TRAINING, "training", ["age"], dataset="bank")
    first = _pseudonyms(loaded)[0]
    _alter(loaded, "UPDATE customer_chunks SET blob = substr(blob, 33)")  # drop the first customer
    with pytest.raises(IntegrityError, match="does not match"):
        loaded.audit.query(pseudonym=_pseudonyms(loaded)[5])
    _alter(loaded, "UPDATE customer_sets SET chunks = '[]'")
    with pytest.raises(IntegrityError, match="was edited"):
        CustomerSets.for_store_file(loaded.home.store_path).reached(
            audit_entries(loaded)[-1].details["customers"], first
        )


def test_without_the_store_a_read_may_include_the_customer_and_is_returned_as_such(loaded):
    loaded.read(TRAINING, "training", ["age"], dataset="bank")
    entry = audit_entries(loaded)[-1]
    bare = AuditLog(loaded.home.audit_dir)  # a copy of the log without store.db: no set to check
    assert entry.seq in [e.seq for e in bare.query(pseudonym="ab" * 32)]
    assert customer_match(entry, "ab" * 32) == MAY_INCLUDE
    assert CustomerSets.for_store_file(loaded.home.root / "missing.db") is None


def test_a_read_logged_before_reads_recorded_their_customers_may_include_anyone(tmp_path):
    log = AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    old = log.append(actor="mia", role="marketing_analyst", action="read", fields=["income"], row_count=5)
    empty = log.append(actor="mia", role="marketing_analyst", action="read", fields=["income"], row_count=0)
    denied = log.append(actor="mia", role="marketing_analyst", action="read", decision="denied", row_count=3)
    assert [e.seq for e in log.query(pseudonym="cd" * 32)] == [old.seq]
    assert empty.seq and denied.seq


def test_the_set_is_exact_across_chunks_and_spellings(loaded, monkeypatch):
    monkeypatch.setattr(store_customers, "CHUNK", 3)  # 23 customers in 8 chunks
    everyone = _pseudonyms(loaded)
    kept = everyone[::2]
    citation = record_customers(loaded.backend, "bank", kept)
    sets = CustomerSets(lambda sql, params: loaded.backend.fetchone(sql, params))
    assert [sets.reached(citation, p) for p in everyone] == [i % 2 == 0 for i in range(len(everyone))]
    assert sets.reached(citation, "zz") is False and sets.reached({"set_sha256": "0" * 64}, kept[0]) is None
    spaced = "ab " * 21 + "a"  # 64 characters that fromhex would read as 22 bytes: kept as text
    assert sets.reached(record_customers(loaded.backend, "bank", [spaced]), spaced) is True
    assert sets.reached(citation, kept[0].upper()) is False  # pseudonyms are lower-case hex
    assert sets.reached(citation, " ".join([kept[0][:2], kept[0][2:]])) is False
    text = record_customers(loaded.backend, "bank", ["a-1", "b-2", "c-3", "d-4"])  # not hex: kept as text
    assert sets.reached(text, "c-3") is True and sets.reached(text, "c-4") is False
    empty = record_customers(loaded.backend, "bank", [])
    assert empty["count"] == 0 and sets.reached(empty, kept[0]) is False
    assert empty["set_sha256"] == set_digest([[store_customers._chunk_digest("bin32", b""), ""]])


def test_customers_out_of_order_are_refused_and_nothing_is_kept(loaded):
    before = loaded.backend.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'customer_sets'")
    with pytest.raises(ValueError, match="ascending pseudonym order"):
        record_customers(loaded.backend, "bank", ["b", "a"])
    after = loaded.backend.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'customer_sets'")
    assert before == after  # the transaction rolled back
