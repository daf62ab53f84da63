"""`run --homes DIR --data NAME`: training over homes that already hold their data is checked before anything runs."""

from pathlib import Path

import pytest

from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.data.provision import admin
from fedcustomer.data.schema_draft import draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.existing import existing_homes
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import uses_existing_homes
from tests.data.test_own_file import own_file

SPEC = FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 100)])


def _homes(tmp_path: Path) -> Path:
    path = own_file(tmp_path / "customers.csv", n=100)
    schema = draft_schema(path, id_from_row=True)
    for name in ("bank_a", "bank_b"):
        home = PartnerHome.create(tmp_path / "homes" / name, name, budget=DatasetBudget(3.0, 1e-5))
        with PartnerStore.init(home, name, actor=admin(name)) as store:
            store.ingest(admin(name), schema, path, id_from_row=True)
    return tmp_path / "homes"


def _job(homes: Path, **kw) -> JobConfig:
    return JobConfig(
        **{"data": "customers", "homes": str(homes), "partners": 2, "out": str(homes.parent / "r"), **kw}
    )


def test_a_dataset_name_with_homes_means_the_homes_data_and_a_missing_file_stays_a_missing_file(
    tmp_path: Path,
) -> None:
    assert uses_existing_homes(_job(tmp_path))
    assert not uses_existing_homes(
        _job(tmp_path, data="customers.csv")
    )  # a typo'd file is reported as missing
    assert not uses_existing_homes(_job(tmp_path, data="synthetic"))
    assert not uses_existing_homes(JobConfig(data="customers", out=str(tmp_path / "r")))


def test_existing_homes_need_a_declared_spec_the_right_count_and_the_dataset(tmp_path: Path) -> None:
    homes = _homes(tmp_path)
    spec, found = existing_homes(_job(homes), SPEC)
    assert spec is SPEC and [h.root.name for h in found] == ["bank_a", "bank_b"]
    with pytest.raises(ConfigError, match="needs --feature-spec FILE.*features draft"):
        existing_homes(_job(homes), None)
    with pytest.raises(ConfigError, match="pass --partners 2"):
        existing_homes(_job(homes, partners=3), SPEC)
    with pytest.raises(DataError, match="holds no dataset 'clients'"):
        existing_homes(_job(homes, data="clients"), SPEC)
    with pytest.raises(DataError, match="has no field\\(s\\) income"):
        existing_homes(
            _job(homes), FeatureSpec("repayment", "default", None, [NumericFeature("income", 0, 1)])
        )
    with pytest.raises(DataError, match="core-tier field\\(s\\) row_id"):
        existing_homes(
            _job(homes), FeatureSpec("repayment", "default", None, [NumericFeature("row_id", 0, 1)])
        )


def test_a_job_asking_for_another_budget_is_told_each_home_keeps_its_own(tmp_path: Path) -> None:
    homes = _homes(tmp_path)
    told: list[str] = []
    existing_homes(_job(homes, epsilon=1.0, delta=1e-5), SPEC, told)
    assert len(told) == 2 and all("keeps its own budget epsilon 3" in n for n in told)
    assert all("requested epsilon 1, delta 1e-05 is not used" in n for n in told)
    assert [PartnerHome(homes / n).config().budget for n in ("bank_a", "bank_b")] == [
        DatasetBudget(3.0, 1e-5)
    ] * 2  # told, never changed
    same: list[str] = []
    existing_homes(_job(homes, epsilon=3.0, delta=1e-5), SPEC, same)
    assert same == []
