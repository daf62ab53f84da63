"""Noise calibration over Opacus's RDP: the fast search keeps the plain bisection's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as rdp_analysis

from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import (
    ORDERS,
    GaussianSteps,
    bisect_noise,
    bisect_noise_from_above,
    calibrate_noise,
    epsilon,
)

DELTA = 1e-5
TOL = 1e-3


def _meets_contract(sigma: float, prior: list[GaussianSteps], q: float, steps: int, target: float) -> None:
    """Within the target, and a noise one tolerance lower is not: the smallest noise, to the tolerance."""
    assert epsilon(prior + [GaussianSteps(sigma, q, steps)], DELTA) <= target
    below = sigma - TOL * max(1.0, sigma)
    assert epsilon(prior + [GaussianSteps(below, q, steps)], DELTA) > target


def _plain(prior: list[GaussianSteps], q: float, steps: int, target: float) -> float:
    """The search as it was: bisection over every order from the start."""
    base = accounting.rdp_curve(prior)

    def eps_at(sigma: float) -> float:
        rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
        return accounting.epsilon_from_rdp(base + np.asarray(rdp), DELTA)

    return bisect_noise(eps_at, target, 0.3, 50.0, TOL)


@pytest.mark.parametrize(
    ("prior", "q", "steps", "target"),
    [
        ([], 0.05, 200, 3.0),
        ([], 0.0532, 90, 1.0),
        ([GaussianSteps(2.0, 0.05, 100)], 0.05, 100, 3.0),
        ([], 0.01, 3000, 8.0),
    ],
)
def test_calibration_finds_the_plain_bisections_noise_within_the_tolerance(prior, q, steps, target) -> None:
    sigma = calibrate_noise(prior, q, steps, target, DELTA)
    _meets_contract(sigma, prior, q, steps, target)
    assert sigma == pytest.approx(_plain(prior, q, steps, target), rel=2 * TOL)


def test_a_partner_one_row_apart_starts_from_its_neighbours_noise(monkeypatch) -> None:
    """IID partners differ by a row: the second search confirms the first one's answer in a few evaluations."""
    plan = ([GaussianSteps(3.0, 0.02, 7)], 123, 2.5)  # a history no other test uses: no remembered answer
    first = calibrate_noise(plan[0], 1 / 24.0, plan[1], plan[2], DELTA)
    full = []
    compute = rdp_analysis.compute_rdp

    def counted(**kwargs):
        if len(kwargs["orders"]) == len(ORDERS):
            full.append(kwargs["noise_multiplier"])
        return compute(**kwargs)

    monkeypatch.setattr(rdp_analysis, "compute_rdp", counted)
    q = 1 / 24.01  # one row more
    sigma = calibrate_noise(plan[0], q, plan[1], plan[2], DELTA)
    _meets_contract(sigma, plan[0], q, plan[1], plan[2])
    assert len(full) <= 4 and math.isclose(sigma, first, rel_tol=5 * TOL)
    full.clear()
    assert calibrate_noise(plan[0], q, plan[1], plan[2], DELTA) == sigma and not full  # the same inputs again


def _toy_eps(threshold: float):
    return lambda sigma: 2.0 * threshold / sigma  # decreasing; equals the target 2.0 at ``threshold``


@pytest.mark.parametrize("guess", [None, 0.5, 1.2345, 1.25, 3.0, 49.0])
def test_any_guess_or_a_looser_bound_ends_at_the_same_contract(guess) -> None:
    exact = _toy_eps(1.2345)
    upper = lambda sigma: exact(sigma) * 1.1  # never below the exact epsilon
    sigma = bisect_noise_from_above(exact, upper, 2.0, 0.3, 50.0, TOL, guess=guess)
    assert exact(sigma) <= 2.0 and exact(sigma - TOL * max(1.0, sigma)) > 2.0


def test_a_bound_that_is_not_one_falls_back_to_the_exact_search() -> None:
    exact = _toy_eps(1.2345)
    below = lambda sigma: exact(sigma) * 0.5  # wrongly optimistic
    sigma = bisect_noise_from_above(exact, below, 2.0, 0.3, 50.0, TOL)
    assert exact(sigma) <= 2.0 and exact(sigma - TOL * max(1.0, sigma)) > 2.0


def test_the_ends_of_the_range_are_kept() -> None:
    assert bisect_noise_from_above(_toy_eps(0.1), _toy_eps(0.1), 2.0, 0.3, 50.0, TOL) == 0.3
    assert bisect_noise_from_above(_toy_eps(80.0), _toy_eps(80.0), 2.0, 0.3, 50.0, TOL) == 50.0
    assert calibrate_noise([], 0.5, 10_000, 0.01, DELTA, sigma_max=5.0) == 5.0


@pytest.mark.parametrize("target", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-7])
@pytest.mark.parametrize(("q", "steps"), [(0.0076, 1000), (0.05, 100), (0.3, 10), (1.0, 3)])
def test_the_first_search_of_a_process_matches_the_plain_bisection(
    target, delta, q, steps, monkeypatch
) -> None:
    """No neighbour to start from: the closed-form guess, confirmed exactly, gives the plain search's answer."""
    monkeypatch.setattr(accounting, "_NEARBY", accounting._Nearby())
    prior = [GaussianSteps(4.0, 0.01, 50)]
    sigma = calibrate_noise(prior, q, steps, target, delta)
    base = accounting.rdp_curve(prior)

    def plain_eps(s: float) -> float:
        rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=s, steps=steps, orders=list(ORDERS))
        return accounting.epsilon_from_rdp(base + np.asarray(rdp), delta)

    old = bisect_noise(plain_eps, target, 0.3, 50.0, TOL)
    if old >= 50.0:
        assert sigma == 50.0
        return
    # never less noise than the old search beyond its tolerance, never more than one tolerance above it
    assert old - TOL * max(1.0, old) < sigma <= old + TOL * max(1.0, old)
    assert plain_eps(sigma) <= target  # the accountant's own figure for the noise returned
    assert sigma <= 0.3 or plain_eps(sigma - TOL * max(1.0, sigma)) > target


@pytest.mark.parametrize(("q", "sigma"), [(0.0076, 0.8), (0.05, 1.3), (0.3, 0.6), (0.9, 3.0), (1.0, 2.0)])
def test_the_closed_form_integer_orders_agree_with_opacus(q: float, sigma: float) -> None:
    ints = accounting._INTEGER_ORDERS
    ref = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ints))
    assert np.allclose(accounting.integer_order_rdp(q, sigma, ints), ref, rtol=1e-9, atol=0)


def test_a_search_costs_two_full_evaluations_and_the_charge_reuses_one(monkeypatch) -> None:
    monkeypatch.setattr(accounting, "_NEARBY", accounting._Nearby())
    full = []
    compute = rdp_analysis.compute_rdp

    def counted(**kwargs):
        if len(kwargs["orders"]) == len(ORDERS):
            full.append(kwargs["noise_multiplier"])
        return compute(**kwargs)

    monkeypatch.setattr(rdp_analysis, "compute_rdp", counted)
    prior, q, steps = [GaussianSteps(5.0, 0.03, 11)], 1 / 33.0, 77  # inputs no other test uses
    accounting.rdp_curve(prior)  # the ledger's history: composed (and cached) before any search
    full.clear()
    sigma = calibrate_noise(prior, q, steps, 2.0, DELTA)
    assert len(full) <= 2
    full.clear()
    epsilon(prior + [GaussianSteps(sigma, q, steps)], DELTA)  # what the ledger's projection computes
    assert not full


def test_epsilon_is_remembered_per_exact_history_and_equals_the_direct_conversion(monkeypatch) -> None:
    """A round's check, charge and round-alone figure ask the same history's epsilon: converted once,
    bit for bit what the RDP curve gives; another order or delta of the triples is converted afresh."""
    conversions = []
    spent = rdp_analysis.get_privacy_spent

    def counted(**kwargs):
        conversions.append(1)
        return spent(**kwargs)

    monkeypatch.setattr(rdp_analysis, "get_privacy_spent", counted)
    history = [GaussianSteps(1.37, 0.021, 47), GaussianSteps(2.11, 0.013, 3)]  # inputs no other test uses
    first = epsilon(history, 1.3e-5)
    assert len(conversions) == 1
    assert epsilon([GaussianSteps(*h.as_tuple()) for h in history], 1.3e-5) == first
    assert len(conversions) == 1
    assert first == accounting.epsilon_from_rdp(accounting.rdp_curve(history), 1.3e-5)
    conversions.clear()
    assert epsilon(history[::-1], 1.3e-5) == pytest.approx(first)
    assert epsilon(history, 1.4e-5) < first
    assert len(conversions) == 2  # each a new key


def test_the_orders_are_opacus_defaults() -> None:
    """ORDERS is written out (so a ledger opens without importing Opacus); it must stay Opacus's list."""
    from opacus.accountants import RDPAccountant

    from fedcustomer.privacy.dp.accounting import ORDERS

    assert list(ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


def test_opening_a_ledger_imports_neither_opacus_nor_dp_accounting() -> None:
    # found by a new-user trial: `budget show` took about 5 s on an empty ledger, importing torch for Opacus
    import subprocess
    import sys

    code = (
        "import sys, fedcustomer.privacy.dp.ledger, fedcustomer.privacy.dp.accountants; "
        "print(sorted(m for m in ('opacus', 'torch', 'dp_accounting') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
