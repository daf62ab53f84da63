"""Feature specs: declared-bounds encoding, missing values, label checks, persistence, inference."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.data.features import (
    CategoricalFeature,
    DataDerivedBoundsWarning,
    FeatureSpec,
    NumericFeature,
)
from fedcustomer.errors import ConfigError, DataError, SchemaError


def make_spec(task: str = "repayment", label: str = "y") -> FeatureSpec:
    return FeatureSpec(
        task=task,
        label=label,
        id_column="cid",
        features=[
            NumericFeature("age", 20.0, 70.0),
            NumericFeature("amount", 0.0, np.log1p(1000.0), log=True),
            CategoricalFeature("region", ("north", "south", "2")),
        ],
    )


def frame(**overrides) -> pd.DataFrame:
    base = {
        "cid": ["a", "b", "c"],
        "age": [20.0, 45.0, 70.0],
        "amount": [0.0, np.expm1(np.log1p(1000.0) / 2), 1000.0],
        "region": ["north", "south", "2"],
        "y": [0, 1, 0],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_layout_counts_numeric_onehot_and_one_indicator_per_numeric():
    spec = make_spec()
    assert spec.input_dim == 2 + 3 + 2
    assert spec.encoded_names() == [
        "age",
        "amount",
        "region=north",
        "region=south",
        "region=2",
        "age__missing",
        "amount__missing",
    ]
    assert spec.columns() == ["age", "amount", "region", "y"]


def test_transform_scales_declared_bounds_to_unit_interval():
    x, y = make_spec().transform(frame())
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (3, 7)
    np.testing.assert_allclose(x[:, 0], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(x[:, 1], [0.0, 0.5, 1.0], atol=1e-5)  # log scale: midpoint in log space
    np.testing.assert_array_equal(x[:, 2:5], np.eye(3))
    np.testing.assert_array_equal(x[:, 5:], 0.0)
    np.testing.assert_array_equal(y, [0, 1, 0])


def test_values_outside_declared_bounds_are_clipped():
    x, _ = make_spec().transform(frame(age=[-5.0, 200.0, 45.0], amount=[-50.0, 1e9, 0.0]))
    np.testing.assert_allclose(x[:, 0], [0.0, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(x[:2, 1], [0.0, 1.0], atol=1e-6)


def test_missing_numeric_gets_midpoint_and_indicator():
    x, _ = make_spec().transform(frame(age=[np.nan, 30.0, None], amount=[1.0, np.nan, 2.0]))
    assert x[0, 0] == pytest.approx(0.5) and x[2, 0] == pytest.approx(0.5)
    np.testing.assert_array_equal(x[:, 5], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(x[:, 6], [0.0, 1.0, 0.0])
    assert x[1, 1] == pytest.approx(0.5)


def test_unknown_or_missing_category_encodes_as_all_zeros_and_numbers_match_text():
    x, _ = make_spec().transform(frame(region=["mars", None, 2.0]))
    np.testing.assert_array_equal(x[0, 2:5], 0.0)
    np.testing.assert_array_equal(x[1, 2:5], 0.0)
    np.testing.assert_array_equal(x[2, 2:5], [0.0, 0.0, 1.0])


def test_clv_label_is_log1p_of_spend():
    spec = make_spec(task="clv", label="spend")
    _, y = spec.transform(frame(spend=[0.0, 9.0, 99.0]).drop(columns="y"))
    np.testing.assert_allclose(y, np.log1p([0.0, 9.0, 99.0]), rtol=1e-6)


def test_missing_label_column_is_a_data_error():
    with pytest.raises(DataError, match="label column 'y' is missing"):
        make_spec().transform(frame().drop(columns="y"))


def test_missing_feature_column_is_named():
    with pytest.raises(DataError, match="missing from the data: amount"):
        make_spec().transform(frame().drop(columns="amount"))


def test_blank_and_na_like_cells_of_a_text_read_numeric_column_are_missing_as_ingest_counts_them():
    # The Telco churn file's TotalCharges holds " " for new customers: ingest counted it missing, but
    # training on the file refused it as non-numeric (found trying a new public dataset).
    text = frame(age=["30", " ", "N/A"], amount=["1", "", "  2  "])
    x, _ = make_spec().transform(text)
    same, _ = make_spec().transform(frame(age=[30.0, np.nan, np.nan], amount=[1.0, np.nan, 2.0]))
    np.testing.assert_array_equal(x, same)
    trains = [frame(age=["30", " ", "50"]).drop(columns=["region"])]
    from fedcustomer.data.features import infer_from_partners

    inferred, _ = infer_from_partners(trains, "repayment", "y", "cid")
    age = next(f for f in inferred.features if f.name == "age")
    assert isinstance(age, NumericFeature) and (age.lo, age.hi) == (30.0, 50.0)


def test_non_numeric_feature_names_column_and_row_but_not_the_value():
    secret = "Zhang Wei"  # a core-tier value that slipped into a feature column
    with pytest.raises(DataError) as info:
        make_spec().transform(frame(age=[30, secret, 40]))
    message = str(info.value)
    assert "'age'" in message and "row 2" in message
    assert secret not in message


def test_repayment_label_must_be_zero_or_one():
    with pytest.raises(DataError, match="0/1 default flag.*row 3"):
        make_spec().transform(frame(y=[0, 1, 2]))


def test_missing_label_value_is_reported_with_row():
    with pytest.raises(DataError, match="missing value.*row 2"):
        make_spec().transform(frame(y=[0, None, 1]))


def test_negative_spend_is_rejected():
    spec = make_spec(task="clv", label="spend")
    with pytest.raises(DataError, match="non-negative.*row 1"):
        spec.transform(frame(spend=[-1.0, 2.0, 3.0]))


def test_empty_frame_is_rejected():
    with pytest.raises(DataError, match="empty"):
        make_spec().transform(frame().iloc[:0])


def test_spec_declaration_errors():
    with pytest.raises(SchemaError, match="lo < hi"):
        NumericFeature("x", 1.0, 1.0)
    with pytest.raises(SchemaError, match="twice"):
        CategoricalFeature("c", ("a", "a"))
    with pytest.raises(ConfigError, match="unknown task"):
        FeatureSpec("churn", "y", None, [NumericFeature("x", 0, 1)])
    with pytest.raises(SchemaError, match="also declared as a feature"):
        FeatureSpec("repayment", "x", None, [NumericFeature("x", 0, 1)])


def test_transform_is_row_wise_so_partners_encode_identically():
    df = frame()
    x_all, _ = make_spec().transform(df)
    x_part, _ = make_spec().transform(df.iloc[[2, 0]])
    np.testing.assert_array_equal(x_part, x_all[[2, 0]])


names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@st.composite
def specs(draw) -> FeatureSpec:
    feature_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    feats = []
    for n in feature_names:
        if draw(st.booleans()):
            lo = draw(st.floats(-1e6, 1e6))
            width = draw(st.floats(1e-3, 1e6))
            feats.append(NumericFeature(n, lo, lo + width, draw(st.booleans())))
        else:
            cats = draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4, unique=True))
            feats.append(CategoricalFeature(n, tuple(cats)))
    return FeatureSpec(
        draw(st.sampled_from(["repayment", "clv"])), "LABEL", draw(st.none() | st.just("ID")), feats
    )


@settings(max_examples=60, deadline=None)
@given(specs())
def test_to_dict_from_dict_round_trip(spec):
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.input_dim == spec.input_dim


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=20))
def test_encoded_values_always_in_unit_interval(values):
    spec = FeatureSpec("repayment", "y", None, [NumericFeature("v", -3.0, 5.0, log=True)])
    x, _ = spec.transform(pd.DataFrame({"v": values, "y": [0] * len(values)}))
    assert np.all((x >= 0) & (x <= 1))
    np.testing.assert_array_equal(x[:, 1], np.isnan(np.asarray(values, dtype=float)).astype(np.float32))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"task": "repayment", "label": "y"}, "missing field 'features'"),
        (
            {"task": "repayment", "label": "y", "features": [{"type": "numeric", "name": "a", "lo": 0}]},
            "'hi'",
        ),
        (
            {"task": "repayment", "label": "y", "features": [{"type": "ordinal", "name": "a"}]},
            "features\\[0\\].type",
        ),
        (
            {
                "task": "repayment",
                "label": "y",
                "features": [{"type": "numeric", "name": "a", "lo": "x", "hi": 1}],
            },
            "malformed",
        ),
        ({"version": 9, "task": "repayment", "label": "y", "features": []}, "version"),
    ],
)
def test_from_dict_rejects_malformed_specs(bad, match):
    with pytest.raises(SchemaError, match=match):
        FeatureSpec.from_dict(bad)


def test_infer_uses_numeric_columns_with_data_bounds_and_warns():
    df = pd.DataFrame({"ID": [1, 2, 3], "a": [1.0, 5.0, 3.0], "b": [7, 7, 7], "target": [0, 1, 0]})
    with pytest.warns(DataDerivedBoundsWarning, match="declared public bounds"):
        spec = FeatureSpec.infer(df, "repayment", "target", "ID")
    assert [f.name for f in spec.features] == ["a", "b"]
    assert (spec.features[0].lo, spec.features[0].hi) == (1.0, 5.0)
    assert spec.features[1].lo < 7 < spec.features[1].hi  # constant column still gets a usable range
    x, _ = spec.transform(df)
    np.testing.assert_allclose(x[:, 0], [0.0, 1.0, 0.5])


def test_infer_rejects_text_column_and_suggests_categorical():
    df = pd.DataFrame({"a": [1.0, 2.0], "city": ["x", "y"], "target": [0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="'city'.*categorical"):
            FeatureSpec.infer(df, "repayment", "target", None)


def _one_call_per_row(feature: CategoricalFeature, values: pd.Series) -> np.ndarray:
    """The one-hot matrix as encoded before numeric columns were keyed once per distinct value."""
    from fedcustomer.data.features import category_key

    keys = values.map(category_key)
    return np.stack([(keys == cat).to_numpy(dtype=bool) for cat in feature.categories], axis=1).astype(
        np.float32
    )


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1, 2, 2, 3, 0, -1, 2], dtype="int64"),
        pd.Series([1.0, 2.0, np.nan, 2.5, -0.0, 0.0, 3.0], dtype="float64"),
        pd.Series([1, None, 2, 2], dtype="Int64"),
        pd.Series([1.0, None, 2.5], dtype="Float64"),
        pd.Series([True, False, True], dtype=bool),
        pd.Series([True, None, False], dtype="boolean"),
        pd.Series(np.array([3, 1, 2], dtype=np.uint8)),
        pd.Series(["1", "2", None, "x"], dtype=object),
        pd.Series([1, True, "1", 1.0, None], dtype=object),  # mixed objects: one call per row, as before
        pd.Series([], dtype="int64"),  # no rows
        pd.Series([7, 8, np.nan], dtype="float64"),  # no value declared: all-zero rows
        pd.Series(np.random.default_rng(0).integers(-2, 5, 500), dtype="int64"),
    ],
)
def test_categorical_encoding_of_numbers_matches_one_key_per_row(values: pd.Series) -> None:
    feature = CategoricalFeature("c", ("0", "1", "2", "2.5", "3", "True", "False", "x"))
    got = feature.encode(values)
    assert got.shape == (len(values), 8) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _one_call_per_row(feature, values))
    assert got.sum(axis=1).max(initial=0.0) <= 1.0


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([20, 45, 70, 33], dtype="int64"),
        pd.Series([20.0, np.nan, 70.0, -1.5], dtype="float64"),
        pd.Series([20, None, 70, 33], dtype="Int64"),  # nullable: not a plain numpy dtype
        pd.Series([20, 45, 70, 33], dtype="uint8"),
        pd.Series([True, False, True, True]),
    ],
)
def test_numeric_columns_encode_as_their_values_read_as_text(column: pd.Series) -> None:
    """A column already numeric skips parsing: the matrix and label equal those of the same values as text."""
    spec = make_spec()
    as_text = column.astype(object).map(
        lambda v: None if pd.isna(v) else str(int(v) if v is True or v is False else v)
    )
    rows = {"region": ["north"] * 4, "amount": [1.0] * 4, "cid": list("abcd")}
    x_numeric, y_numeric = spec.transform(pd.DataFrame({**rows, "age": column, "y": [0, 1, 1, 0]}))
    x_text, y_text = spec.transform(pd.DataFrame({**rows, "age": as_text, "y": ["0", "1", "1", "0"]}))
    np.testing.assert_array_equal(x_numeric, x_text)
    np.testing.assert_array_equal(y_numeric, y_text)


def test_a_numeric_label_column_is_not_changed_by_encoding() -> None:
    """The numeric fast path hands back a copy: the caller's frame keeps its values."""
    data = frame(y=pd.Series([0, 1, 0], dtype="int64"), age=pd.Series([20.0, np.nan, 70.0]))
    before = data.copy()
    make_spec().transform(data)
    pd.testing.assert_frame_equal(data, before)
