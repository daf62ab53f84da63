"""A read in batches: the frames add up to the whole read's frame (one batch or many), with the same
one audit entry and the same refusals, audited the same way; nothing is read before the checks."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcustomer.data.store_db import table_name
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, SchemaError
from tests.data.store_fixtures import (
    CORE,
    MARKETING,
    RISK,
    TRAINING,
    _approve_core,
    audit_entries,
    bank,
    home,
    store,
)
from tests.data.test_store_read import _a_customer, _alter, _flip_last_byte, loaded

READS = [
    (TRAINING, "training", ["age", "income", "region", "defaulted"]),
    (TRAINING, "record_linkage", ["customer_id"]),
    (MARKETING, "marketing", None),  # masked views, the fields the policy allows
    (RISK, "risk_review", CORE + ["income"]),  # core fields in clear: a decrypt entry naming pseudonyms
]


def _entry(store) -> dict:
    body = audit_entries(store)[-1].body()
    return {k: v for k, v in body.items() if k not in ("seq", "time")}


def _batched(store, actor, purpose, fields, size) -> pd.DataFrame:
    frames = list(store.read_batches(actor, purpose, fields, dataset="bank", batch_size=size))
    assert all(len(f) == size for f in frames[:-1]) and 0 < len(frames[-1]) <= size
    return pd.concat(frames)


@pytest.mark.parametrize("size", [1, 4, 23, 1000])
@pytest.mark.parametrize(("actor", "purpose", "fields"), READS)
def test_the_batches_add_up_to_the_whole_read_with_the_same_one_audit_entry(
    loaded, size, actor, purpose, fields
):
    _approve_core(loaded)
    whole = loaded.read(actor, purpose, fields, dataset="bank")
    entry, before = _entry(loaded), len(audit_entries(loaded))
    got = _batched(loaded, actor, purpose, fields, size)
    # a batch may hold no missing cell (int, not float); pandas concatenates the pseudonyms as strings
    pd.testing.assert_frame_equal(got, whole, check_dtype=False, check_index_type=False)
    assert len(audit_entries(loaded)) == before + 1 and _entry(loaded) == entry
    assert len(whole) == 23


def test_the_entry_is_written_before_any_batch_and_a_stopped_read_stays_logged(loaded):
    before = len(audit_entries(loaded))
    batches = loaded.read_batches(TRAINING, "training", ["age"], dataset="bank", batch_size=5)
    assert len(audit_entries(loaded)) == before + 1  # logged before a row is handed over
    assert len(next(batches)) == 5
    batches.close()
    entry = audit_entries(loaded)[-1]
    assert (entry.action, entry.row_count, len(audit_entries(loaded))) == ("read", 23, before + 1)


@pytest.mark.parametrize(
    ("actor", "purpose", "fields", "error", "message"),
    [
        (TRAINING, "training", ["age", "national_id"], AccessDenied, "may not read national_id"),
        (TRAINING, "training", ["no_such_field"], SchemaError, "has no field"),
        (RISK, "risk_review", ["full_name"], AccessDenied, "national_id|full_name"),  # no approval
    ],
)
def test_a_refusal_is_raised_before_any_batch_and_audited_as_a_whole_read_is(
    loaded, actor, purpose, fields, error, message
):
    with pytest.raises(error, match=message) as whole:
        loaded.read(actor, purpose, fields, dataset="bank")
    entry = _entry(loaded)
    with pytest.raises(error) as batched:
        loaded.read_batches(actor, purpose, fields, dataset="bank", batch_size=4)
    assert str(batched.value) == str(whole.value) and _entry(loaded) == entry
    assert entry["decision"] == "denied"


@pytest.mark.parametrize("size", [0, -1, True, "10", 10**9])
def test_a_bad_batch_size_is_a_config_error_and_reads_nothing(loaded, size):
    before = len(audit_entries(loaded))
    with pytest.raises(ConfigError, match="batch size"):
        loaded.read_batches(TRAINING, "training", ["age"], dataset="bank", batch_size=size)
    assert len(audit_entries(loaded)) == before


def test_a_damaged_row_stops_the_batches_and_the_failure_is_logged(loaded):
    _approve_core(loaded)
    pseudonym, sealed, _ = _a_customer(loaded)  # the 8th customer: in the second batch of 5
    _alter(
        loaded,
        f"UPDATE {table_name('bank')} SET sealed = ? WHERE pseudonym = ?",
        (_flip_last_byte(sealed), pseudonym),
    )
    batches = loaded.read_batches(RISK, "risk_review", ["full_name", "age"], dataset="bank", batch_size=5)
    assert len(next(batches)) == 5
    with pytest.raises(IntegrityError, match=pseudonym):
        next(batches)
    entries = audit_entries(loaded)
    assert [e.decision for e in entries[-2:]] == ["allowed", "denied"]
    assert "read failed" in str(entries[-1].reason)


def test_an_empty_dataset_gives_no_batch_and_one_entry(tmp_path):
    from fedcustomer.data.schema import load_bundled
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.partner.home import PartnerHome
    from tests.data.store_fixtures import ADMIN, write_csv
    from tests.data.test_ingest import bank_frame

    with PartnerStore.init(PartnerHome(tmp_path / "h"), "bank_a") as store:
        store.ingest(ADMIN, load_bundled("bank"), write_csv(tmp_path, bank_frame(0)))
        before = len(audit_entries(store))
        batches = store.read_batches(TRAINING, "training", ["age"], dataset="bank", batch_size=3)
        assert list(batches) == [] and len(audit_entries(store)) == before + 1
