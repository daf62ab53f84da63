"""A feature spec must agree with the partner's schema: every mismatch is refused, named, and says nothing more."""

from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.data.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedcustomer.data.schema import FieldSpec, Schema
from fedcustomer.errors import DataError, SchemaError

SCHEMA = Schema(
    dataset="bank",
    fields=(
        FieldSpec("customer_id", "string", "core", "id"),
        FieldSpec("national_id", "string", "core"),
        FieldSpec("age", "integer"),
        FieldSpec("income", "float"),
        FieldSpec("member", "boolean"),
        FieldSpec("region", "category"),
        FieldSpec("nickname", "string"),
        FieldSpec("sex", "integer"),
        FieldSpec("score", "float"),
        FieldSpec("opened", "date"),
        FieldSpec("defaulted", "integer", role="label"),
        FieldSpec("segment", "string", role="label"),
    ),
    source="/secret/partner/home/schemas/bank.yaml",
)


def _spec(*features, label: str = "defaulted") -> FeatureSpec:
    return FeatureSpec("repayment", label, None, list(features))


def test_a_spec_that_fits_the_schema_passes() -> None:
    spec = _spec(
        NumericFeature("age", 18, 90),
        NumericFeature("income", 0, 14, log=True),
        NumericFeature("member", 0, 1),
        CategoricalFeature("region", ("north", "south")),
        CategoricalFeature("nickname", ("a", "b")),
        CategoricalFeature("sex", ("1", "2")),  # integer codes over an integer field
        CategoricalFeature("score", ("0.5", "1", "-2")),
        CategoricalFeature("opened", ("2020-01-01",)),
    )
    assert spec.check_against(SCHEMA, "bank_a") is None


def test_a_field_the_schema_lacks_is_a_data_error_naming_it_and_the_partner() -> None:
    with pytest.raises(DataError) as err:
        _spec(NumericFeature("age", 18, 90), NumericFeature("balance", 0, 1)).check_against(SCHEMA, "bank_a")
    assert type(err.value) is DataError
    assert str(err.value) == (
        "dataset 'bank' at partner 'bank_a' has no field(s) balance that the feature spec reads"
    )


def test_a_missing_label_is_named() -> None:
    with pytest.raises(DataError, match=r"has no field\(s\) churned that"):
        _spec(NumericFeature("age", 18, 90), label="churned").check_against(SCHEMA)


def test_a_core_tier_field_is_refused() -> None:
    with pytest.raises(
        DataError, match=r"core-tier field\(s\) national_id of dataset 'bank'; training never"
    ):
        _spec(CategoricalFeature("national_id", ("x",))).check_against(SCHEMA)


@pytest.mark.parametrize("name, ftype", [("region", "category"), ("nickname", "string"), ("opened", "date")])
def test_a_numeric_feature_over_a_non_number_field_is_a_schema_error(name: str, ftype: str) -> None:
    with pytest.raises(SchemaError) as err:
        _spec(NumericFeature(name, 0, 1)).check_against(SCHEMA, "bank_a")
    assert str(err.value) == (
        "the feature spec does not match the schema of dataset 'bank' at partner 'bank_a': "
        f"feature {name!r} is declared numeric but is a {ftype} field; declare it categorical or drop it"
    )


@pytest.mark.parametrize(
    "name, categories, ftype",
    [
        ("age", ("young", "old"), "integer"),
        ("sex", ("1", "2.0"), "integer"),  # 2.0 is read as "2": the category "2.0" never matches
        ("sex", ("1", "1.5"), "integer"),
        ("income", ("low", "high"), "float"),
        ("member", ("yes", "no"), "boolean"),
    ],
)
def test_a_categorical_whose_categories_cannot_occur_in_a_number_field_is_a_schema_error(
    name: str, categories: tuple[str, ...], ftype: str
) -> None:
    with pytest.raises(SchemaError) as err:
        _spec(CategoricalFeature(name, categories)).check_against(SCHEMA)
    message = str(err.value)
    assert f"categorical feature {name!r} declares categories that are not {ftype} values" in message
    assert "no row could match them" in message


def test_a_text_label_is_a_schema_error() -> None:
    with pytest.raises(
        SchemaError, match="label 'segment' is a string field, but a repayment label must be a number"
    ):
        _spec(NumericFeature("age", 18, 90), label="segment").check_against(SCHEMA)


def test_every_type_problem_is_reported_at_once_without_paths() -> None:
    spec = _spec(NumericFeature("region", 0, 1), CategoricalFeature("age", ("x",)), label="segment")
    with pytest.raises(SchemaError) as err:
        spec.check_against(SCHEMA)
    message = str(err.value)
    for part in ("label 'segment'", "feature 'region'", "categorical feature 'age'"):
        assert part in message
    assert message.startswith("the feature spec does not match the schema of dataset 'bank': ")
    assert "/secret" not in message and ".yaml" not in message


def test_the_node_refuses_a_spec_naming_a_field_its_store_lacks(tmp_path: Path) -> None:
    """Through the node's governed read: the refusal carries the clear message."""
    from fedcustomer.clients.data_access import PartnerDataAccess
    from fedcustomer.data.provision import admin
    from fedcustomer.data.schema_draft import draft_schema
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.dp.budget import DatasetBudget

    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "customer_id": [f"c{i:04d}" for i in range(40)],
            "age": [20 + i for i in range(40)],
            "region": ["north", "south"] * 20,
            "default": [0, 1] * 20,
        }
    ).to_csv(path, index=False)
    home = PartnerHome.create(tmp_path / "bank_a", "bank_a", budget=DatasetBudget(3.0, 1e-5))
    with PartnerStore.init(home, "bank_a", actor=admin("bank_a")) as store:
        store.ingest(admin("bank_a"), draft_schema(path), path)
    access = PartnerDataAccess(home)
    missing = FeatureSpec("repayment", "default", None, [NumericFeature("income", 0, 1)])
    with pytest.raises(DataError, match=r"^dataset 'customers' at partner 'bank_a' has no field\(s\) income"):
        access.training_frame("customers", missing, "train")
    mistyped = FeatureSpec("repayment", "default", None, [NumericFeature("region", 0, 1)])
    with pytest.raises(SchemaError, match="feature 'region' is declared numeric but is a category field"):
        access.training_frame("customers", mistyped, "train")
    fits = FeatureSpec("repayment", "default", None, [NumericFeature("age", 18, 90)])
    assert len(access.training_frame("customers", fits, "train")) > 0
