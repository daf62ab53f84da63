"""A user's own file into the governed store: field names, generated ids, and a feature spec from the schema."""

from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.data.feature_draft import parse_bound, spec_from_schema
from fedcustomer.data.features import CategoricalFeature, NumericFeature
from fedcustomer.data.provision import admin
from fedcustomer.data.schema import Validation, replace_field
from fedcustomer.data.schema_draft import confirm_categories, draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError, DataError, SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.data.test_own_file import own_file


def test_draft_keeps_valid_names_and_maps_odd_ones(tmp_path: Path) -> None:
    schema = draft_schema(own_file(tmp_path / "mine.csv"), id_from_row=True)
    assert schema.names == [
        "row_id",
        "age",
        "emp_var_rate",
        "checking_status_a11",
        "job_admin_",
        "housing",
        "default",
    ]
    assert schema.id_field.name == "row_id" and schema.id_field.tier == "core"
    assert schema.field("emp_var_rate").description == "file column 'emp.var.rate'"
    assert schema.field("housing").validation.allowed == ("free", "own", "rent")


def test_draft_without_an_id_column_says_how_to_add_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no customer id column .* --id-from-row"):
        draft_schema(own_file(tmp_path / "mine.csv"))


def test_a_camel_case_customer_id_is_the_id_and_another_can_be_named(tmp_path: Path) -> None:
    # The Telco churn file names its id customerID: the draft refused the file as id-less, and with
    # --id-from-row stored the id as a sensitive feature (found trying a new public dataset).
    from fedcustomer.data.schema_draft import is_customer_id_name

    path = tmp_path / "telco.csv"
    path.write_text("customerID,tenure,Churn\n7590-VHVEG,1,0\n5575-GNVDE,34,1\n")
    schema = draft_schema(path)
    assert (schema.id_field.name, schema.id_field.tier) == ("customerid", "core")
    assert schema.field("tenure").role == "feature"
    with pytest.raises(DataError, match="'customerID' looks like the customer id"):
        draft_schema(path, id_from_row=True)
    named = tmp_path / "named.csv"
    named.write_text("subscriber,tenure\nS1,1\nS2,3\n")
    assert draft_schema(named, id_column="subscriber").id_field.name == "subscriber"
    with pytest.raises(DataError, match="no column 'subscribr' to take as the customer id"):
        draft_schema(named, id_column="subscribr")
    assert [
        n for n in ("CustID", "user_id", "ID", "account_id", "identity", "idx") if is_customer_id_name(n)
    ] == [
        "CustID",
        "user_id",
        "ID",
    ]


def _home(tmp_path: Path) -> PartnerHome:
    home = PartnerHome.create(tmp_path / "bank_a", "bank_a", budget=DatasetBudget(3.0, 1e-5))
    PartnerStore.init(home, "bank_a", actor=admin("bank_a")).close()
    return home


def test_ingest_maps_columns_and_generates_ids_that_a_reordered_copy_finds_again(tmp_path: Path) -> None:
    path = own_file(tmp_path / "mine.csv")
    schema = draft_schema(path, id_from_row=True)
    home = _home(tmp_path)
    with PartnerStore.open(home) as store:
        with pytest.raises(DataError, match="pass --id-from-row"):
            store.ingest(admin("bank_a"), schema, path)
        first = store.ingest(admin("bank_a"), schema, path, id_from_row=True)
        shuffled = tmp_path / "copy.csv"
        pd.read_csv(path).sample(frac=1.0, random_state=1).to_csv(shuffled, index=False)
        again = store.ingest(admin("bank_a"), schema, shuffled, id_from_row=True)
        rows = store.read(
            Actor("ds", "data_scientist"),
            "analytics",
            fields=["emp_var_rate", "housing"],
            dataset=schema.dataset,
        )
    assert first.inserted == 400 and first.invalid == 0
    assert again.unchanged == 400 and again.inserted == 0  # same customers, same ids
    assert sorted(rows["emp_var_rate"]) == sorted(pd.read_csv(path)["emp.var.rate"])


def test_feature_spec_from_the_schema_uses_declared_bounds_and_categories_only(tmp_path: Path) -> None:
    schema = draft_schema(own_file(tmp_path / "mine.csv"), id_from_row=True)
    schema = replace_field(schema, "age", validation=Validation(min=18, max=100))
    with pytest.raises(SchemaError, match="housing: the category list was observed"):
        spec_from_schema(schema, task="repayment", label="default")
    schema = confirm_categories(schema, ["housing"])  # the admin reviewed the drafted categories
    with pytest.raises(
        SchemaError, match="without declared bounds: emp_var_rate, checking_status_a11, job_admin_"
    ):
        spec_from_schema(schema, task="repayment", label="default")
    spec, notes = spec_from_schema(
        schema,
        task="repayment",
        label="default",
        drop=["job_admin_"],
        bounds=dict(map(parse_bound, ["emp_var_rate=-5:5", "checking_status_a11=0:1"])),
    )
    assert spec.features == [
        NumericFeature("age", 18, 100),
        NumericFeature("emp_var_rate", -5, 5),
        NumericFeature("checking_status_a11", 0, 1),
        CategoricalFeature("housing", ("free", "own", "rent")),
    ]
    assert spec.label == "default" and spec.id_column is None and notes == []


def test_feature_spec_leaves_core_fields_out_and_refuses_undeclared_text_or_a_bad_label(
    tmp_path: Path,
) -> None:
    schema = draft_schema(own_file(tmp_path / "mine.csv"), id_from_row=True)
    schema = replace_field(schema, "age", tier="core")
    schema = replace_field(schema, "housing", type="string", validation=Validation())
    with pytest.raises(SchemaError, match="text field.* housing"):
        spec_from_schema(
            schema,
            task="repayment",
            label="default",
            bounds={"emp_var_rate": (-5, 5)},
            drop=["checking_status_a11", "job_admin_"],
        )
    spec, notes = spec_from_schema(
        schema,
        task="repayment",
        label="default",
        bounds={"emp_var_rate": (-5, 5)},
        drop=["checking_status_a11", "job_admin_", "housing"],
    )
    assert [f.name for f in spec.features] == ["emp_var_rate"] and any(
        "age: left out (core tier" in n for n in notes
    )
    with pytest.raises(SchemaError, match="label 'housing' has type string"):
        spec_from_schema(schema, task="repayment", label="housing", drop=["age"])
    with pytest.raises(ConfigError, match="expected FIELD=LO:HI"):
        parse_bound("age=18")


def test_log_scale_keeps_declared_bounds_in_the_fields_own_units(tmp_path: Path) -> None:
    # A heavy-tailed amount declared 0..1,000,000 must not squash every customer near 0: --log puts it on
    # the encoder's signed log scale with the bounds mapped there (found by a new-user trial).
    import math

    import numpy as np

    schema = draft_schema(own_file(tmp_path / "mine.csv"), id_from_row=True)
    schema = replace_field(schema, "age", validation=Validation(min=18, max=100))
    spec, _ = spec_from_schema(
        schema,
        task="repayment",
        label="default",
        bounds={"emp_var_rate": (-1_000_000, 1_000_000)},
        drop=["checking_status_a11", "job_admin_", "housing"],
        log=["emp_var_rate"],
    )
    assert spec.features[0] == NumericFeature("age", 18, 100)
    scaled = spec.features[1]
    assert scaled.log and scaled.lo == -math.log1p(1e6) and scaled.hi == math.log1p(1e6)
    encoded = scaled.encode(np.array([-1e6, -1.0, 0.0, 3000.0, 1e6, 5e6]))
    assert encoded[0] == 0.0 and encoded[2] == 0.5 and encoded[-2] == encoded[-1] == 1.0
    assert 0.75 < encoded[3] < 0.85  # not crushed to 0.5015 as on the linear scale
    with pytest.raises(ConfigError, match="--log applies to integer or float fields; housing"):
        spec_from_schema(schema, task="repayment", label="default", log=["housing"])
    with pytest.raises(ConfigError, match="has no field"):
        spec_from_schema(schema, task="repayment", label="default", log=["income"])
