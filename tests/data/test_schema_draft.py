"""Categories `schema draft` reads off one partner's file are marked as observed, rare ones are warned
about, and a feature spec refuses them until the partner admin confirms the list (found by a new-user
trial: drafted categories were then treated as declared and shared with the federation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.data.feature_draft import spec_from_schema
from fedcustomer.data.schema import Schema
from fedcustomer.data.schema_draft import RARE_COUNT, confirm_categories, draft_schema
from fedcustomer.errors import ConfigError, SchemaError


def _file(tmp_path: Path) -> Path:
    n = 60
    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "customer_id": [f"c{i:03d}" for i in range(n)],
            # two common regions, one region held by 2 customers (rare: it could single them out)
            "region": ["north"] * 30 + ["south"] * 28 + ["Ynys Enlli"] * 2,
            "plan": ["basic", "gold"] * (n // 2),
            "age": [20 + i % 50 for i in range(n)],
            "default": [i % 2 for i in range(n)],
        }
    ).to_csv(path, index=False)
    return path


def test_drafted_categories_are_marked_observed_and_rare_ones_are_counted_never_named(tmp_path):
    notes: list[str] = []
    schema = draft_schema(_file(tmp_path), notes=notes)
    region = schema.field("region").validation
    assert region.allowed == ("Ynys Enlli", "north", "south") and region.observed_categories
    assert "allowed_from: observed" in schema.to_yaml()
    (note,) = [n for n in notes if n.startswith("region:")]
    assert f"1 of them appear fewer than {RARE_COUNT} times" in note and "Ynys" not in note
    (plan_note,) = [n for n in notes if n.startswith("plan:")]
    assert "fewer than" not in plan_note and "schema confirm" in plan_note
    assert Schema.load(_saved(schema, tmp_path)).field("region").validation.observed_categories  # round trip


def _saved(schema: Schema, tmp_path: Path) -> Path:
    path = tmp_path / "schema.yaml"
    schema.save(path)
    return path


def test_a_spec_refuses_an_unconfirmed_observed_list_naming_the_field_and_how_to_confirm(tmp_path):
    schema = draft_schema(_file(tmp_path))
    with pytest.raises(SchemaError) as refused:
        spec_from_schema(schema, task="repayment", label="default", bounds={"age": (18, 100)})
    message = str(refused.value)
    assert "region, plan" in message and "schema confirm --schema FILE --field region" in message
    assert "north" not in message  # the refusal names fields, never a category
    spec, _ = spec_from_schema(
        schema, task="repayment", label="default", bounds={"age": (18, 100)}, drop=["region", "plan"]
    )
    assert spec.columns() == ["age", "default"]


def test_confirmed_categories_are_declared_and_used(tmp_path):
    schema = confirm_categories(draft_schema(_file(tmp_path)), ["region", "plan"])
    assert not schema.field("region").validation.observed_categories
    assert "allowed_from" not in schema.to_yaml()
    spec, _ = spec_from_schema(schema, task="repayment", label="default", bounds={"age": (18, 100)})
    assert {f.name for f in spec.features} == {"age", "region", "plan"}


@pytest.mark.parametrize(
    ("names", "match"),
    [([], "--field NAME"), (["nope"], "no field"), (["age"], "no observed category list")],
)
def test_confirming_a_field_without_an_observed_list_is_refused(tmp_path, names, match):
    with pytest.raises(ConfigError, match=match):
        confirm_categories(draft_schema(_file(tmp_path)), names)


@pytest.mark.parametrize(
    ("validation", "match"),
    [
        ("{allowed: [a, b], allowed_from: guessed}", "may only be 'observed'"),
        ("{allowed_from: observed}", "there is none"),
    ],
)
def test_a_bad_allowed_from_in_a_schema_file_is_refused(tmp_path, validation, match):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "dataset: d\nfields:\n  - {name: customer_id, type: string, tier: core, role: id}\n"
        f"  - {{name: region, type: category, tier: public, validation: {validation}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(SchemaError, match=match):
        Schema.load(path)


def test_a_spec_takes_the_files_own_spelling_of_a_field_name(tmp_path):
    # `features draft --label Churn` was refused for a field stored as `churn` (found trying a new dataset)
    path = tmp_path / "telco.csv"
    pd.DataFrame(
        {"customerID": ["a", "b"], "TotalCharges": [1.5, 2.5], "Tenure": [1, 2], "Churn": [0, 1]}
    ).to_csv(path, index=False)
    schema = draft_schema(path)
    spec, _ = spec_from_schema(
        schema,
        task="repayment",
        label="Churn",
        bounds={"TotalCharges": (0, 9000), "Tenure": (0, 72)},
        log=["TotalCharges"],
    )
    assert spec.label == "churn" and [f.name for f in spec.features] == ["totalcharges", "tenure"]
    with pytest.raises(ConfigError, match="--label 'Churned' is not a field"):
        spec_from_schema(schema, task="repayment", label="Churned", drop=["TotalCharges", "Tenure"])
