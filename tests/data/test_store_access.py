"""Policy-checked reads of the governed store: what each role sees, approvals, filters, datasets."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.schema import load_bundled
from fedcustomer.errors import AccessDenied, ConfigError, SchemaError
from fedcustomer.privacy.access.policy import Actor
from tests.data.store_fixtures import (
    ADMIN,
    COMPLIANCE,
    CORE,
    MARKETING,
    RISK,
    TRAINING,
    audit_entries,
    bank,
    home,
    loaded,
    store,
    write_csv,
)
from tests.data.test_ingest import bank_frame

__all__ = ["bank", "home", "store", "loaded"]  # fixtures


def test_training_pipeline_reads_features_with_numeric_dtypes(loaded):
    store, frame = loaded
    fields = ["age", "income", "utilisation", "num_late_payments", "region", "defaulted"]
    got = store.read(TRAINING, "training", fields, dataset="bank")
    assert list(got.columns) == fields and len(got) == 30
    assert (
        got["age"].dtype == "int64" and got["income"].dtype == "float64" and got["defaulted"].dtype == "int64"
    )
    assert (got["income"] == frame.loc[got.index, "income"]).all()
    entries = audit_entries(store, action="read")
    assert (
        entries[-1].actor == "node:bank_a"
        and entries[-1].row_count == 30
        and entries[-1].decision == "allowed"
    )


def test_training_pipeline_is_denied_ids_and_core(loaded):
    store, _ = loaded
    for fields in (["age", "customer_id"], ["updated_at"], ["national_id"]):
        with pytest.raises(AccessDenied):
            store.read(TRAINING, "training", fields)
    # fields=None: just what it may see (features and labels, public or sensitive).
    got = store.read(TRAINING, "training")
    assert not set(got.columns) & set(CORE) and "updated_at" not in got.columns and "defaulted" in got.columns
    assert len(audit_entries(store, actor="node:bank_a", decision="denied")) == 3


def test_marketing_read_masks_sensitive_hides_core_and_is_logged(loaded):
    store, frame = loaded
    got = store.read(MARKETING, "marketing")
    assert not set(got.columns) & set(CORE)
    assert (got["region"] == frame.loc[got.index, "region"]).all()  # public: clear
    assert (got["income"] % 10000 == 0).all()  # bucket:10000
    assert (got["income"] <= frame.loc[got.index, "income"]).all()
    assert set(got["defaulted"]) == {"***"}
    entry = audit_entries(store, actor="mia")[-1]
    assert entry.action == "read" and entry.decision == "allowed" and entry.purpose == "marketing"
    assert entry.tier == "sensitive" and entry.row_count == 30 and "national_id" not in entry.fields
    with pytest.raises(AccessDenied, match="national_id"):
        store.read(MARKETING, "marketing", ["region", "national_id"])
    denied = audit_entries(store, actor="mia", decision="denied")[-1]
    assert "national_id" in denied.fields and denied.tier == "core"


def test_unapproved_risk_officer_core_read_is_denied_and_logged(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied, match="two approvals"):
        store.read(RISK, "risk_review", ["full_name", "income"])
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.decision == "denied" and entry.tier == "core" and "full_name" in entry.fields
    # Without naming fields, the officer gets public and sensitive fields only.
    got = store.read(RISK, "risk_review")
    assert not set(got.columns) & set(CORE) and "income" in got.columns


def test_risk_officer_with_two_distinct_approvals_reads_core_in_clear(loaded):
    store, frame = loaded
    rid = StoreApprovals(store).request(
        RISK, "bank", ["full_name", "national_id"], "risk_review", timedelta(hours=1)
    )
    assert StoreApprovals(store).approve(ADMIN, rid) is None
    with pytest.raises(AccessDenied):  # one approval is not enough
        store.read(RISK, "risk_review", ["full_name"])
    with pytest.raises(AccessDenied):  # same approver twice
        StoreApprovals(store).approve(ADMIN, rid)
    with pytest.raises(AccessDenied):  # self-approval
        StoreApprovals(store).approve(Actor("rick", "compliance_officer"), rid)
    approval = StoreApprovals(store).approve(COMPLIANCE, rid)
    assert approval is not None and set(approval.approvers) == {"alice", "carol"}
    got = store.read(RISK, "risk_review", ["full_name", "national_id", "region"], where={"region": "north"})
    expected = frame[frame["region"] == "north"]
    assert sorted(got.index) == sorted(expected.index)
    assert (got["full_name"] == expected.loc[got.index, "full_name"]).all()
    assert (got["national_id"] == expected.loc[got.index, "national_id"]).all()
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.action == "decrypt" and entry.approvals == (rid,) and entry.tier == "core"
    assert set(entry.pseudonyms) == set(got.index)
    # The approval covers only the requested fields.
    with pytest.raises(AccessDenied):
        store.read(RISK, "risk_review", ["phone"])
    denied_approvals = audit_entries(store, action="approve", decision="denied")
    assert len(denied_approvals) == 2


def test_compliance_officer_reads_no_customer_data(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied):
        store.read(COMPLIANCE, "audit")
    assert audit_entries(store, actor="carol", decision="denied")


def test_where_only_on_public_fields(loaded):
    store, frame = loaded
    got = store.read(TRAINING, "training", ["age"], where={"region": ["north", "south"]})
    assert len(got) == frame["region"].isin(["north", "south"]).sum()
    with pytest.raises(AccessDenied, match="filters"):
        store.read(TRAINING, "training", ["age"], where={"income": 100})
    with pytest.raises(SchemaError):
        store.read(TRAINING, "training", ["age", "nope"])
    assert len(audit_entries(store, actor="node:bank_a", decision="denied")) == 2


MIXED_CASE_SCHEMA = """dataset: towns
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: town, type: string, tier: public}
  - {name: segment, type: category, tier: public, validation: {allowed: [Retail, SME]}}
  - {name: visits, type: integer, tier: public}
"""


def test_where_on_text_ignores_case_and_on_numbers_matches_the_value(tmp_path, store):
    from fedcustomer.data.schema import Schema

    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "E"],
            "town": ["North", "north", "NORTH", "South", "Nörth"],
            "segment": ["Retail", "SME", "Retail", "SME", "Retail"],
            "visits": [5, 5, 7, 5, 1],
        }
    )
    store.ingest(ADMIN, Schema.from_yaml(MIXED_CASE_SCHEMA), write_csv(tmp_path, frame, "towns.csv"))
    ids = dict(zip(store.pseudonymizer.pseudonyms(frame["customer_id"]), frame["customer_id"], strict=True))

    def who(where):
        return sorted(ids[p] for p in store.read(TRAINING, "training", ["visits"], where=where).index)

    assert who({"town": "north"}) == who({"town": "NORTH"}) == ["A", "B", "C"]  # not "Nörth"
    assert who({"town": ["north", "south"]}) == ["A", "B", "C", "D"]
    assert who({"segment": "retail"}) == ["A", "C", "E"]  # a category value in the schema's own spelling
    assert who({"town": "North", "segment": "sme"}) == ["B"]
    assert who({"visits": "5.0"}) == ["A", "B", "D"]  # numbers by value


def test_read_with_an_unknown_approval_id_says_it_does_not_exist(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied) as info:
        store.read(RISK, "risk_review", ["full_name"], approval_id="no-such-id")
    message = str(info.value)
    assert "no approval request with that id exists in this home" in message
    assert "approvals list" in message and "no-such-id" in message
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.decision == "denied" and "no approval request" in entry.reason


def test_read_with_an_approval_that_does_not_apply_says_why(loaded):
    store, _ = loaded
    rid = StoreApprovals(store).request(RISK, "bank", ["full_name"], "risk_review", timedelta(hours=1))
    StoreApprovals(store).approve(ADMIN, rid)
    with pytest.raises(AccessDenied, match=f"approval {rid} has 1 of 2 approvals"):
        store.read(RISK, "risk_review", ["full_name"], approval_id=rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
    assert len(store.read(RISK, "risk_review", ["full_name"], approval_id=rid)) == 30
    with pytest.raises(AccessDenied, match=f"approval {rid} covers full_name only"):
        store.read(RISK, "risk_review", ["phone"], approval_id=rid)
    other = Actor("rita", "risk_officer")
    with pytest.raises(AccessDenied, match=f"approval {rid} was requested by someone else"):
        store.read(other, "risk_review", ["full_name"], approval_id=rid)


def test_read_names_which_of_two_complete_approvals_it_uses(loaded):
    """The id given is the approval used, even when another (expiring later) also covers the read."""
    store, _ = loaded
    ids = []
    for hours in (1, 4):
        rid = StoreApprovals(store).request(
            RISK, "bank", ["full_name"], "risk_review", timedelta(hours=hours)
        )
        StoreApprovals(store).approve(ADMIN, rid)
        StoreApprovals(store).approve(COMPLIANCE, rid)
        ids.append(rid)
    for rid in ids:
        assert len(store.read(RISK, "risk_review", ["full_name"], approval_id=rid)) == 30
        assert audit_entries(store, actor="rick")[-1].approvals == (rid,)


def test_read_for_an_unknown_purpose_names_the_known_ones(loaded):
    store, _ = loaded
    with pytest.raises(
        AccessDenied,
        match="unknown purpose 'marketting' \\(one of training, evaluation, analytics, marketing",
    ):
        store.read(MARKETING, "marketting")


def test_unknown_dataset_and_several_datasets(tmp_path, loaded):
    store, _ = loaded
    with pytest.raises(ConfigError, match="no dataset 'shop'"):
        store.read(TRAINING, "training", dataset="shop")
    from fedcustomer.data.schema import Schema

    other = Schema.from_yaml(load_bundled("bank").to_yaml().replace("dataset: bank", "dataset: bank2"))
    store.ingest(ADMIN, other, write_csv(tmp_path, bank_frame(3), "b2.csv"))
    with pytest.raises(ConfigError, match="several datasets"):
        store.read(TRAINING, "training")


def test_a_store_with_two_datasets_asks_for_the_command_lines_dataset_option(tmp_path, store, bank):
    # The message named a Python keyword (dataset=...) to a person at the command line (found by a
    # new-user trial).
    from dataclasses import replace

    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(3)))
    store.ingest(ADMIN, replace(bank, dataset="bank_v2"), write_csv(tmp_path, bank_frame(3), "v2.csv"))
    with pytest.raises(
        ConfigError, match=r"several datasets \(bank, bank_v2\); name one with --dataset NAME"
    ):
        store.read(MARKETING, "marketing", fields=["region"])
    assert len(store.read(MARKETING, "marketing", fields=["region"], dataset="bank_v2")) == 3
