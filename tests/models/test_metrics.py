"""Calibration beside ranking: ECE and the reliability sums partners send, which pool exactly
(found by a new-user trial: the DP model's poor calibration was reported nowhere)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcustomer.models.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_bins,
    reliability_sums,
)


def test_a_calibrated_model_has_zero_ece_and_an_overconfident_one_its_gap() -> None:
    y = np.array([0, 0, 0, 1] * 25)  # observed rate 0.25
    assert classification_metrics(y, np.full(100, 0.25))["ece"] == pytest.approx(0.0)
    assert classification_metrics(y, np.full(100, 0.65))["ece"] == pytest.approx(0.40)
    assert classification_metrics(y, np.full(100, 0.65))["brier"] == pytest.approx(
        0.75 * 0.65**2 + 0.25 * 0.35**2
    )


def test_reliability_sums_weighted_by_row_counts_pool_to_the_sums_of_all_rows() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 700)
    y = (rng.uniform(0, 1, 700) < p**2).astype(float)
    a, b = reliability_sums(y[:300], p[:300]), reliability_sums(y[300:], p[300:])
    pooled = {k: (300 * a[k] + 400 * b[k]) / 700 for k in a}  # what the strategy's weighted mean gives
    whole = reliability_sums(y, p)
    assert pooled == pytest.approx(whole)
    assert expected_calibration_error(pooled) == pytest.approx(classification_metrics(y, p)["ece"])
    bins = reliability_bins(whole)
    assert len(bins) == 10 and sum(b["share"] for b in bins) == pytest.approx(1.0)
    top = bins[9]
    inside = p >= 0.9
    assert top["observed_rate"] == pytest.approx(y[inside].mean())
    assert top["mean_predicted"] == pytest.approx(p[inside].mean())


def test_no_rows_give_no_calibration_rather_than_a_made_up_one() -> None:
    assert np.isnan(classification_metrics(np.array([]), np.array([]))["ece"])
    assert np.isnan(expected_calibration_error({}))
    empty = reliability_bins(reliability_sums(np.array([1.0]), np.array([0.05])))
    assert empty[5]["mean_predicted"] is None and empty[0]["observed_rate"] == 1.0
