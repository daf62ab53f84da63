"""A partner's own dataset, ingested without a holdout marker, splits into training and held-out rows."""

from pathlib import Path

import numpy as np
import pandas as pd

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.data.provision import admin
from fedcustomer.data.schema_draft import draft_schema
from fedcustomer.data.store import PartnerStore
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
