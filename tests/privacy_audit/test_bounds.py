"""The statistics of the audit against values derived by hand."""

import math

import numpy as np
import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.privacy_audit.bounds import (
    attack_metrics,
    best_guesses,
    clopper_pearson,
    one_run_epsilon,
    one_run_p_value,
    threshold_epsilon,
)


def test_all_guesses_right_with_pure_dp_gives_the_closed_form_bound() -> None:
    # delta = 0 and r of r right: p = q^r with q = e^eps / (1 + e^eps); p = 0.05 gives
    # q = 0.05^(1/r) and eps = ln(q / (1 - q)). For r = 100: 3.4930 (the paper's Figure 1 shape).
    for r in (10, 100, 500):
        q = 0.05 ** (1 / r)
        assert one_run_epsilon(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert one_run_epsilon(1000, 100, 100, 0.0) == pytest.approx(3.4930, abs=1e-3)


def test_p_value_is_the_binomial_tail_without_delta_and_grows_with_delta() -> None:
    # eps = 0: every guess is a fair coin; P[Bin(10, 1/2) >= 8] = 56 / 1024.
    assert one_run_p_value(100, 10, 8, 0.0, 0.0) == pytest.approx(56 / 1024)
    assert one_run_p_value(100, 10, 8, 1.0, 1e-3) > one_run_p_value(100, 10, 8, 1.0, 0.0)
    # the delta term: 2 m delta max_i P[v - i <= Bin < v] / i, here i = 1 wins at eps = 0
    extra = (
        2 * 100 * 1e-3 * max(sum(math.comb(10, j) for j in range(8 - i, 8)) / 1024 / i for i in range(1, 9))
    )
    assert one_run_p_value(100, 10, 8, 0.0, 1e-3) == pytest.approx(56 / 1024 + extra)


def test_bound_shrinks_with_delta_and_vanishes_for_chance_accuracy() -> None:
    assert one_run_epsilon(1000, 100, 100, 1e-5) < one_run_epsilon(1000, 100, 100, 0.0)
    assert one_run_epsilon(1000, 100, 50, 1e-5) == 0.0
    assert one_run_epsilon(1000, 100, 0, 0.0) == 0.0


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigError):
        one_run_p_value(10, 20, 5, 1.0, 0.0)
    with pytest.raises(ConfigError):
        one_run_epsilon(10, 5, 5, 0.0, confidence=1.5)
    with pytest.raises(ConfigError):
        best_guesses(np.zeros(1), np.zeros(1, dtype=bool), 1e-5)


def test_best_guesses_on_perfect_and_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    perfect = best_guesses(included.astype(float) + rng.random(1000) * 0.1, included, 1e-5)
    assert perfect.correct == perfect.guesses and perfect.epsilon_lower_bound > 3
    random = best_guesses(rng.random(1000), included, 1e-5)
    assert random.epsilon_lower_bound < 0.5


def test_clopper_pearson_brackets_the_rate() -> None:
    lo, hi = clopper_pearson(50, 100, 0.95)
    assert lo < 0.5 < hi and lo > 0.4 and hi < 0.6
    assert clopper_pearson(0, 100, 0.95)[0] == 0.0
    # zero of n: the one-sided upper bound solves (1 - p)^n = alpha
    assert clopper_pearson(0, 100, 0.95)[1] == pytest.approx(1 - 0.05 ** (1 / 100))


def test_threshold_bound_on_laplace_samples_is_below_the_true_epsilon_and_positive() -> None:
    rng = np.random.default_rng(1)
    eps = 2.0
    a = rng.laplace(0.0, 1 / eps, 20000)
    b = 1.0 + rng.laplace(0.0, 1 / eps, 20000)
    result = threshold_epsilon(a, b, 0.0)
    assert 0.8 < result["epsilon_lower_bound"] <= eps
    same = threshold_epsilon(a, rng.laplace(0.0, 1 / eps, 20000), 0.0)
    assert same["epsilon_lower_bound"] < 0.2


def test_attack_metrics_perfect_and_chance() -> None:
    perfect = attack_metrics(np.arange(100) + 1000.0, np.arange(100))
    assert perfect["auc"] == 1.0 and perfect["tpr_at_0.1pct_fpr"] == 1.0
    rng = np.random.default_rng(2)
    chance = attack_metrics(rng.random(5000), rng.random(5000))
    assert abs(chance["auc"] - 0.5) < 0.03 and chance["tpr_at_1pct_fpr"] < 0.03
