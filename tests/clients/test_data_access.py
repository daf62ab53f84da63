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
