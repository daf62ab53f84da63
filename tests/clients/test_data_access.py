"""A partner's own dataset, ingested without a holdout marker, splits into training and held-out rows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.data.provision import admin
from fedcustomer.data.schema_draft import draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget


def _ingested_home(tmp_path: Path, n: int = 200) -> PartnerHome:
    rng = np.random.default_rng(0)
    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "customer_id": [f"c{i:04d}" for i in range(n)],
            "age": rng.integers(18, 90, n),
            "default": rng.integers(0, 2, n),
            "income": [None if i % 9 == 4 else float(i) for i in range(n)],  # some customers have none
        }
    ).to_csv(path, index=False)
    home = PartnerHome.create(tmp_path / "bank_a", "bank_a", budget=DatasetBudget(3.0, 1e-5))
    with PartnerStore.init(home, "bank_a", actor=admin("bank_a")) as store:
        store.ingest(admin("bank_a"), draft_schema(path), path)
    return home


def test_a_dataset_without_holdout_marker_splits_by_pseudonym_into_disjoint_parts(tmp_path: Path) -> None:
    home = _ingested_home(tmp_path)
    spec = FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 90)])
    access = PartnerDataAccess(home)
    train = access.training_frame("customers", spec, "train")
    test = access.training_frame("customers", spec, "test")
    assert len(train) + len(test) == 200
    assert 0.1 * 200 < len(test) < 0.3 * 200  # about DEFAULT_HOLDOUT_SHARE, decided by the partner alone
    assert list(train.columns) == ["age", "default"]
    # the same customers land in the same part on every read
    assert access.training_frame("customers", spec, "test").equals(test)


def test_a_training_read_is_signed_at_once_and_the_store_closes_without_a_second_commit(
    tmp_path: Path, monkeypatch
) -> None:
    from fedcustomer.privacy.audit.reach import SqlReach
    from fedcustomer.privacy.audit.writer import AuditLog

    home = _ingested_home(tmp_path)
    spec = FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 90)])
    commits: list[str] = []
    for name in ("record_entry", "record_checkpoint", "record_entry_and_checkpoint"):
        real = getattr(SqlReach, name)
        monkeypatch.setattr(
            SqlReach,
            name,
            lambda self, *a, _real=real, _name=name: (commits.append(_name), _real(self, *a))[1],
        )
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir) as log:
        before = len(log.checkpoints())
    _, read = PartnerDataAccess(home).training_read("customers", spec, "train")
    assert commits == ["record_entry_and_checkpoint"]  # the entry and its checkpoint in one commit
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir) as log:
        checkpoints = log.checkpoints()
        entry = log.query(action="read")[-1]
        assert log.verify().ok
    assert read == {"audit_seq": entry.seq, "audit_hash": entry.hash}
    assert len(checkpoints) == before + 1 and checkpoints[-1].last_seq == entry.seq  # signed over the read


def _reads(home: PartnerHome) -> list[tuple]:
    with PartnerStore.open(home) as store:
        return [(e.action, e.decision, e.fields, e.purpose, e.row_count) for e in store.audit.query()]


@pytest.mark.parametrize("batch", [1, 7, 200, 65_536])
def test_the_linkage_column_in_batches_is_the_whole_read_row_for_row_with_the_same_audit(
    tmp_path: Path, batch: int
) -> None:
    home = _ingested_home(tmp_path, n=60)
    access = PartnerDataAccess(home)
    before = len(_reads(home))
    ids, cells = access.linkage_column("customers", "income")
    whole = _reads(home)[before:]
    got = list(access.linkage_column_batches("customers", "income", batch))
    assert all(len(b[0]) == batch for b in got[:-1]) and len(got) == -(-60 // batch)
    assert [i for b in got for i in b[0]] == ids and [c for b in got for c in b[1]] == cells
    assert None in cells and _reads(home)[before + len(whole) :] == whole  # two reads, one entry each
    assert [r[3] for r in whole] == ["record_linkage", "training"]


def test_a_column_the_policy_does_not_grant_is_refused_in_batches_as_whole(tmp_path: Path) -> None:
    home = _ingested_home(tmp_path, n=20)
    access = PartnerDataAccess(home)
    before = len(_reads(home))
    with pytest.raises(AccessDenied) as whole:
        access.linkage_column("customers", "customer_id")
    entries = _reads(home)[before:]
    with pytest.raises(AccessDenied) as batched:
        next(access.linkage_column_batches("customers", "customer_id", 5))
    assert str(batched.value) == str(whole.value) and _reads(home)[before + len(entries) :] == entries
    with pytest.raises(DataError, match="no column 'nope'"):
        next(access.linkage_column_batches("customers", "nope", 5))


def test_each_split_read_opens_and_cites_only_its_own_customers(tmp_path: Path) -> None:
    # Both reads cited all 200 customers, so "who read customer P for evaluation" answered everyone
    # (found by a new-user trial); the split is now made before any row is opened.
    from fedcustomer.data.store_customers import DETAILS_KEY as CUSTOMERS_KEY
    from fedcustomer.data.store_customers import CustomerSets
    from fedcustomer.partner.datasets import held_out_by_pseudonym
    from fedcustomer.privacy.audit.writer import AuditLog

    home = _ingested_home(tmp_path)
    spec = FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 90)])
    access = PartnerDataAccess(home)
    frames = {split: access.training_frame("customers", spec, split) for split in ("train", "test")}
    entries = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir).query(
        action="read", role="training_pipeline"
    )
    by_split = {e.details["split"]: e for e in entries[-2:]}
    with PartnerStore.open(home) as store:  # the same rows, in the same order, as the whole table split after
        whole = store.read(
            store.service_credential("node:bank_a", "training_pipeline"), "training", ["age", "default"]
        )
    held_out = np.array([held_out_by_pseudonym(p) for p in whole.index])
    sets = CustomerSets.for_store_file(home.store_path)
    assert sets is not None
    for split, held in (("train", False), ("test", True)):
        entry = by_split[split]
        citation = entry.details[CUSTOMERS_KEY]
        assert entry.row_count == citation["count"] == len(frames[split]) == int((held_out == held).sum())
        reached = [sets.reached(citation, p) for p in whole.index]
        assert reached == [
            bool(h == held) for h in held_out
        ]  # who read customer P for evaluation: only P's split
    pd.testing.assert_frame_equal(frames["test"], whole[held_out].reset_index(drop=True))
    pd.testing.assert_frame_equal(frames["train"], whole[~held_out].reset_index(drop=True))
