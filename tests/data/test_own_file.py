"""A user's own file for `run --data PATH`: odd column names, text columns, training-only bounds, declared specs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcustomer.data.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedcustomer.data.sources import load_partitions
from fedcustomer.errors import DataError


def own_file(path: Path, n: int = 400, seed: int = 0) -> Path:
    """One-hot-style and dotted names, a text column, no id column; the label follows the features."""
    rng = np.random.default_rng(seed)
    rate = rng.normal(0, 1.5, n).round(2)
    housing = rng.choice(["own", "rent", "free"], n)
    score = rate + (housing == "rent") * 1.5 + rng.normal(0, 0.5, n)
    pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "emp.var.rate": rate,
            "checking_status_A11": rng.integers(0, 2, n),
            "job_admin_": rng.integers(0, 2, n),
            "housing": housing,
            "default": (score > np.median(score)).astype(int),
        }
    ).to_csv(path, index=False)
    return path


def test_odd_names_are_read_as_valid_field_names_with_a_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    spec, _ = load_partitions(
        "repayment", str(own_file(tmp_path / "mine.csv")), 2, label="default", notices=notices
    )
    names = [f.name for f in spec.features]
    assert names == ["age", "emp_var_rate", "checking_status_a11", "job_admin_", "housing"]
    assert any(
        "'emp.var.rate' -> 'emp_var_rate'" in n and "'checking_status_A11' -> 'checking_status_a11'" in n
        for n in notices
    ), notices
    assert not any("/tmp" in n or "tmp" in n.split() for n in notices)


def test_a_text_column_becomes_a_categorical_feature_with_a_recorded_notice(tmp_path: Path) -> None:
    notices: list[str] = []
    spec, partners = load_partitions(
        "repayment", str(own_file(tmp_path / "mine.csv")), 2, notices=notices, label="default"
    )
    housing = next(f for f in spec.features if f.name == "housing")
    assert isinstance(housing, CategoricalFeature) and housing.categories == ("free", "own", "rent")
    assert any("categorical" in n and "housing (3 categories)" in n and "NOT covered" in n for n in notices)
    x, _ = spec.transform(partners[0].train)
    assert x.shape[1] == spec.input_dim


def test_bounds_and_categories_come_from_the_partners_training_rows_only(tmp_path: Path) -> None:
    path = own_file(tmp_path / "mine.csv", n=300)
    frame = pd.read_csv(path)
    _, partners = load_partitions("repayment", str(path), 2, label="default", seed=3, notices=[])
    row = partners[0].test.iloc[0]  # a held-out row, found in the file by its values
    match = frame[(frame["age"] == row["age"]) & (frame["emp.var.rate"] == row["emp_var_rate"])].index
    frame.loc[match, "emp.var.rate"] = 1000.0  # an outlier only a held-out row holds
    frame.loc[match, "housing"] = "castle"  # and a category only a held-out row holds
    frame.to_csv(path, index=False)
    notices: list[str] = []
    spec, again = load_partitions("repayment", str(path), 2, label="default", seed=3, notices=notices)
    assert (again[0].test["emp_var_rate"] == 1000.0).any()  # the same split, the outlier held out
    rate = next(f for f in spec.features if f.name == "emp_var_rate")
    trained = pd.concat([p.train for p in again])
    assert (rate.lo, rate.hi) == (
        trained["emp_var_rate"].min(),
        trained["emp_var_rate"].max(),
    ) and rate.hi < 1000
    housing = next(f for f in spec.features if f.name == "housing")
    assert "castle" not in housing.categories
    assert any("training rows (held-out rows never used)" in n for n in notices)


def test_a_declared_spec_is_used_as_given_and_may_name_the_files_own_columns(tmp_path: Path) -> None:
    declared = FeatureSpec(
        "repayment",
        "default",
        None,
        [
            NumericFeature("emp.var.rate", -5, 5),
            CategoricalFeature("housing", ("own", "rent")),
            NumericFeature("job_admin_", 0, 1),
        ],
    )
    notices: list[str] = []
    spec, partners = load_partitions(
        "repayment", str(own_file(tmp_path / "mine.csv")), 2, spec=declared, notices=notices
    )
    assert [f.name for f in spec.features] == ["emp_var_rate", "housing", "job_admin_"]
    assert spec.numeric[0].lo == -5 and spec.features[1].categories == ("own", "rent")
    assert not any("NOT covered" in n for n in notices) and not any("guessed" in n for n in notices)
    assert spec.transform(partners[1].test)[0].shape[1] == spec.input_dim


def test_too_many_distinct_text_values_is_a_clear_error(tmp_path: Path) -> None:
    path = own_file(tmp_path / "mine.csv")
    frame = pd.read_csv(path)
    frame["comment"] = [f"note {i}" for i in range(len(frame))]
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="'comment' holds .* distinct text values, too many") as info:
        load_partitions("repayment", str(path), 2, label="default", notices=[])
    assert "note 1" not in str(info.value)  # never a value


def test_two_columns_that_would_share_a_field_name_are_refused_naming_both(tmp_path: Path) -> None:
    path = own_file(tmp_path / "mine.csv")
    pd.read_csv(path).assign(emp_var_rate=1.0).to_csv(path, index=False)
    with pytest.raises(DataError, match="'emp.var.rate' and 'emp_var_rate' would both be stored as field"):
        load_partitions("repayment", str(path), 2, label="default", notices=[])


def test_a_camel_case_customer_id_column_identifies_customers_not_a_feature(tmp_path: Path) -> None:
    # `run --data telco.csv` took customerID as a text feature and refused it for its 5,634 distinct values.
    rng = np.random.default_rng(0)
    path = tmp_path / "telco.csv"
    pd.DataFrame(
        {
            "customerID": [f"{i:04d}-ABCDE" for i in range(200)],
            "tenure": rng.integers(0, 72, 200),
            "TotalCharges": [" " if i % 50 == 0 else f"{i * 3.5:.2f}" for i in range(200)],
            "default": rng.integers(0, 2, 200),
        }
    ).to_csv(path, index=False)
    spec, partners = load_partitions("repayment", str(path), 2, label="default", notices=[])
    assert spec.id_column == "customerid"
    assert sorted(f.name for f in spec.features) == [
        "tenure",
        "totalcharges",
    ]  # the blanks are missing values
    assert all("customerid" in p.train.columns for p in partners)
