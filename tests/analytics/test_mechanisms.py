"""Noise calibration, OpenDP releases and interval coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcustomer.analytics import mechanisms as m
from fedcustomer.analytics.mechanisms import Noise
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps


def test_single_laplace_halfwidth_is_the_closed_form() -> None:
    assert Noise(laplace=(2.0,)).halfwidth(0.95) == pytest.approx(2.0 * math.log(20))


def test_gaussian_halfwidth_adds_variances() -> None:
    assert Noise(gaussian=(3.0, 4.0)).halfwidth(0.95) == pytest.approx(5.0 * 1.959964, rel=1e-5)


def test_mixture_halfwidth_matches_monte_carlo() -> None:
    noise = Noise(laplace=(1.0, 2.0, 0.5), gaussian=(1.5,))
    rng = np.random.default_rng(0)  # only to check the numeric quantile, never for releases
    draws = sum(rng.laplace(0, b, 400_000) for b in noise.laplace) + rng.normal(0, 1.5, 400_000)
    assert noise.halfwidth(0.95) == pytest.approx(np.quantile(np.abs(draws), 0.95), rel=0.01)


def test_laplace_calibration_splits_epsilon_over_statistics() -> None:
    cal = m.calibrate(m.LAPLACE, 0.5, 0.0, 2)
    assert cal.normalised_scale == pytest.approx(4.0)
    assert cal.noise_for(100.0).laplace == (pytest.approx(400.0),)


def test_gaussian_calibration_costs_exactly_epsilon_in_the_ledgers_accounting() -> None:
    cal = m.calibrate(m.GAUSSIAN, 1.0, 1e-6, 1)
    assert accounting.epsilon([GaussianSteps(cal.noise_multiplier, 1.0, 1)], 1e-6) == pytest.approx(
        1.0, rel=1e-3
    )
    assert m.calibrate(m.GAUSSIAN, 1.0, 1e-6, 4).normalised_scale == pytest.approx(2 * cal.noise_multiplier)


def test_a_pld_partners_gaussian_release_is_sized_with_pld_and_needs_less_noise() -> None:
    from dp_accounting import dp_event
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    from fedcustomer.privacy.dp.accountants import Accountant

    rdp = m.calibrate(m.GAUSSIAN, 1.0, 1e-6, 4)
    tight = m.calibrate(m.GAUSSIAN, 1.0, 1e-6, 4, Accountant("pld"))
    assert (rdp.accountant, rdp.pld_interval) == ("rdp", None)
    assert (tight.accountant, tight.pld_interval) == ("pld", 1e-4)
    assert tight.normalised_scale == pytest.approx(tight.noise_multiplier * 2)  # L2 sensitivity sqrt(4)
    assert tight.noise_multiplier < rdp.noise_multiplier * 0.95
    library = PLDAccountant(value_discretization_interval=1e-4)
    library.compose(dp_event.PoissonSampledDpEvent(1.0, dp_event.GaussianDpEvent(tight.noise_multiplier)))
    assert 1.0 * (1 - 1e-3) < library.get_epsilon(1e-6) <= 1.0
    assert m.calibrate(m.LAPLACE, 1.0, 0.0, 4, Accountant("pld")).accountant is None  # Laplace needs none


@pytest.mark.parametrize(
    "mechanism, eps, delta",
    [("laplace", 1.0, 1e-6), ("gaussian", 1.0, 0.0), ("laplace", 0.0, 0.0), ("median", 1.0, 0.0)],
)
def test_bad_calibration_requests_are_refused(mechanism: str, eps: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        m.calibrate(mechanism, eps, delta, 1)


def test_release_refuses_non_finite_values() -> None:
    with pytest.raises(ConfigError, match="non-finite"):
        m.release([1.0, float("nan")], m.calibrate(m.LAPLACE, 1.0, 0.0, 1))


@pytest.mark.parametrize("mechanism, delta", [("laplace", 0.0), ("gaussian", 1e-5)])
def test_combined_intervals_of_three_partners_cover_at_the_stated_rate(mechanism: str, delta: float) -> None:
    """4,000 independent cells, 3 partners each noising its own part: coverage of the 95% interval."""
    truth = np.arange(4000, dtype=float)
    cal = m.calibrate(mechanism, 0.7, delta, 1)
    total = sum(m.release(truth / 3, cal) for _ in range(3))
    noise = cal.noise_for(1.0) + cal.noise_for(1.0) + cal.noise_for(1.0)
    hw = noise.halfwidth(0.95)
    coverage = np.mean(np.abs(total - truth) <= hw)
    assert 0.93 <= coverage <= 0.97


def test_noise_is_not_reproducible_from_any_seed() -> None:
    cal = m.calibrate(m.LAPLACE, 1.0, 0.0, 1)
    assert not np.array_equal(m.release([0.0] * 50, cal), m.release([0.0] * 50, cal))


def test_box_ratio_interval_covers_at_least_the_stated_rate() -> None:
    n_true, s_true = np.full(3000, 200.0), np.full(3000, 200.0 * 37.5)
    c_cnt = m.calibrate(m.LAPLACE, 0.5, 0.0, 2)
    n_noisy = m.release(n_true, c_cnt)
    s_noisy = m.release(s_true / 100.0, c_cnt) * 100.0
    n_hw = c_cnt.noise_for(1.0).halfwidth(0.975)
    s_hw = c_cnt.noise_for(100.0).halfwidth(0.975)
    hits = [
        lo <= 37.5 <= hi
        for _, lo, hi in (m.box_ratio(s, s_hw, n, n_hw, 0, 100) for s, n in zip(s_noisy, n_noisy))
    ]
    assert np.mean(hits) >= 0.95


def test_box_ratio_gives_the_whole_range_when_the_denominator_may_be_zero() -> None:
    est, lo, hi = m.box_ratio(5.0, 1.0, 1.0, 3.0, 0.0, 10.0)
    assert (lo, hi) == (0.0, 10.0) and est == 5.0


@pytest.mark.parametrize(
    ("num", "expected"),
    [(-40.0, 0.0), (40_000.0, 100.0)],  # a small group's noisy sum below zero; far above the bound
)
def test_box_ratio_interval_never_crosses_its_clipped_estimate(num: float, expected: float) -> None:
    est, lo, hi = m.box_ratio(num, 5.0, 20.0, 2.0, 0.0, 100.0)
    assert est == expected
    assert 0.0 <= lo <= est <= hi <= 100.0


def test_box_ratio_estimate_lies_in_its_interval_for_any_noisy_inputs() -> None:
    rng = np.random.default_rng(7)
    for num, den, n_hw, d_hw in rng.uniform([-500, 0.1, 0, 0], [5000, 60, 300, 30], size=(5000, 4)):
        est, lo, hi = m.box_ratio(num, n_hw, den, d_hw, 0.0, 100.0)
        assert 0.0 <= lo <= est <= hi <= 100.0
