"""Train/test splits and IID / feature-skew / label-skew partitioning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.data.partition import (
    MAX_SIZE_RATIO,
    partition_by_column,
    partition_dirichlet,
    partition_iid,
    split_train_test,
)
from fedcustomer.errors import ConfigError, DataError


def pooled(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    edu = rng.choice(["grad", "uni", "high", "other"], size=n, p=[0.35, 0.45, 0.17, 0.03])
    return pd.DataFrame(
        {
            "rid": np.arange(n),
            "edu": edu,
            "age": rng.integers(20, 75, n),
            "y": (rng.random(n) < np.where(edu == "high", 0.35, 0.15)).astype(int),
            "spend": np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2.0, 50.0, n)),
        }
    )


def all_rows(partners) -> np.ndarray:
    return np.concatenate([np.concatenate([p.train["rid"], p.test["rid"]]) for p in partners])


def test_split_sizes_disjoint_and_reproducible():
    df = pooled(1000)
    train, test = split_train_test(df, 0.25, seed=3)
    assert len(test) == 250 and len(train) == 750
    assert set(train.rid).isdisjoint(test.rid) and len(set(train.rid) | set(test.rid)) == 1000
    again, _ = split_train_test(df, 0.25, seed=3)
    pd.testing.assert_frame_equal(train, again)
    other, _ = split_train_test(df, 0.25, seed=4)
    assert not train.rid.equals(other.rid)


def test_stratified_split_keeps_label_rate_in_both_parts():
    df = pooled(1000)
    train, test = split_train_test(df, 0.2, seed=1, stratify="y")
    assert abs(train.y.mean() - df.y.mean()) < 0.005
    assert abs(test.y.mean() - df.y.mean()) < 0.01


def test_split_rejects_bad_fraction_and_unknown_stratify_column():
    with pytest.raises(ConfigError, match="test_fraction"):
        split_train_test(pooled(10), 1.0, seed=0)
    with pytest.raises(DataError, match="'nope'"):
        split_train_test(pooled(10), 0.2, seed=0, stratify="nope")


def test_iid_partners_are_equal_disjoint_and_cover_everything():
    partners = partition_iid(pooled(1001), 4, seed=0, kind="bank", prefix="bank")
    assert [p.name for p in partners] == ["bank_1", "bank_2", "bank_3", "bank_4"]
    assert {p.kind for p in partners} == {"bank"}
    sizes = [p.size for p in partners]
    assert max(sizes) - min(sizes) <= 1
    rows = all_rows(partners)
    assert len(rows) == 1001 and len(set(rows)) == 1001


def test_partner_count_is_validated():
    with pytest.raises(ConfigError, match="at least 1"):
        partition_iid(pooled(10), 0, seed=0)
    with pytest.raises(DataError, match="empty"):
        partition_iid(pooled(3), 5, seed=0)


def test_by_column_keeps_groups_together_when_sizes_allow():
    partners = partition_by_column(pooled(), 2, "edu", seed=0)
    groups = [set(pd.concat([p.train, p.test]).edu) for p in partners]
    assert groups[0].isdisjoint(groups[1])  # each education level lives at one partner only
    rows = all_rows(partners)
    assert len(set(rows)) == len(rows) == 2000


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_by_column_sizes_stay_within_ratio(n):
    partners = partition_by_column(pooled(), n, "edu", seed=1)
    sizes = [p.size for p in partners]
    assert min(sizes) > 0 and max(sizes) <= MAX_SIZE_RATIO * min(sizes)
    assert sum(sizes) == 2000


def test_by_column_is_non_iid_in_feature_and_label():
    partners = partition_by_column(pooled(), 3, "edu", seed=0)
    shares = [(pd.concat([p.train, p.test]).edu == "uni").mean() for p in partners]
    rates = [pd.concat([p.train, p.test]).y.mean() for p in partners]
    assert max(shares) - min(shares) > 0.5
    assert max(rates) - min(rates) > 0.05


def test_by_numeric_column_makes_contiguous_bands():
    partners = partition_by_column(pooled(), 3, "age", seed=0)
    bands = [pd.concat([p.train, p.test]).age for p in partners]
    for low, high in zip(bands, bands[1:]):
        assert low.max() <= high.min()


def test_by_column_unknown_column_is_a_data_error():
    with pytest.raises(DataError, match="'nope'"):
        partition_by_column(pooled(), 2, "nope", seed=0)


def test_dirichlet_skews_label_rates_and_covers_all_rows():
    partners = partition_dirichlet(pooled(), 4, "y", alpha=0.3, seed=0)
    rates = [pd.concat([p.train, p.test]).y.mean() for p in partners]
    assert max(rates) - min(rates) > 0.1
    rows = all_rows(partners)
    assert len(rows) == len(set(rows)) == 2000
    assert min(p.size for p in partners) >= 0.25 * 2000 / 4


def test_dirichlet_with_large_alpha_is_close_to_iid():
    partners = partition_dirichlet(pooled(), 3, "y", alpha=1000.0, seed=0)
    rates = [pd.concat([p.train, p.test]).y.mean() for p in partners]
    assert max(rates) - min(rates) < 0.05


def test_dirichlet_on_continuous_label_bins_it():
    partners = partition_dirichlet(pooled(), 3, "spend", alpha=0.2, seed=2)
    zero_share = [(pd.concat([p.train, p.test]).spend == 0).mean() for p in partners]
    assert max(zero_share) - min(zero_share) > 0.1


def test_dirichlet_rejects_bad_alpha_and_impossible_draws():
    with pytest.raises(ConfigError, match="alpha"):
        partition_dirichlet(pooled(), 3, "y", alpha=0.0, seed=0)
    with pytest.raises(ConfigError, match="larger alpha"):
        partition_dirichlet(pooled(), 8, "y", alpha=0.001, seed=0, max_tries=5)


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(5, 200), n=st.integers(1, 5), seed=st.integers(0, 1000))
def test_every_strategy_is_a_partition_of_the_rows(n_rows, n, seed):
    df = pooled(n_rows, seed)
    for partners in (
        partition_iid(df, n, seed),
        partition_by_column(df, n, "edu", seed),
    ):
        rows = all_rows(partners)
        assert sorted(rows) == list(range(n_rows))
        assert all(len(p.train) > 0 for p in partners)
