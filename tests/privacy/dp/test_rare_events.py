"""A release that differs from its accounted mechanism on a rare event: the event's reserve inside delta."""

from __future__ import annotations

import math

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.privacy.dp.accounting import GaussianSteps, epsilon
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import EVENT_PROBABILITY, BudgetLedger
from fedcustomer.privacy.dp.rare_events import epsilon_with_event, event_reserve
from fedcustomer.privacy.dp.recompute import recompute

SCALE = 2.0  # the classical Gaussian bound with sensitivity / sigma = 1 / SCALE


def gaussian_bound(delta: float) -> float:
    """epsilon(delta) = sqrt(2 ln(1.25 / delta)) / SCALE, with its exact inverse below."""
    return math.inf if delta <= 0 else math.sqrt(2 * math.log(1.25 / delta)) / SCALE


def delta_of(eps: float) -> float:
    return 1.25 * math.exp(-((eps * SCALE) ** 2) / 2)


def test_without_an_event_it_is_the_mechanisms_own_epsilon() -> None:
    assert epsilon_with_event(gaussian_bound, 1e-5, 0.0) == gaussian_bound(1e-5)
    assert event_reserve(3.0, 0.0) == 0.0


@pytest.mark.parametrize("probability", [1e-15, 1e-12, 1e-9, 1e-7, 4e-7, 5e-7])
def test_the_answer_holds_the_event_and_the_mechanism_inside_delta(probability: float) -> None:
    delta = 1e-5
    eps = epsilon_with_event(gaussian_bound, delta, probability)
    # the mechanism's own delta at that epsilon plus the event's (1 + e^eps) p fit in delta ...
    assert delta_of(eps) + (1 + math.exp(eps)) * probability <= delta * (1 + 1e-12)
    # ... and the answer is not needlessly loose: the reserve is barely above (1 + e^eps) p
    assert eps > gaussian_bound(delta)
    assert (
        delta_of(eps) + (1 + math.exp(eps)) * probability >= delta - 1e-5 * (1 + math.exp(eps)) * probability
    )


def test_an_event_no_delta_can_hold_gives_infinity() -> None:
    assert epsilon_with_event(gaussian_bound, 1e-5, 1e-5) == math.inf
    assert epsilon_with_event(gaussian_bound, 1e-5, 4e-6) == math.inf  # (1 + e^eps) p > delta for any eps
    # no epsilon has the mechanism's delta and the event's reserve fit: the least of their sums is above 1e-5
    assert epsilon_with_event(gaussian_bound, 1e-5, 6e-7) == math.inf
    assert event_reserve(800.0, 1e-15) == math.inf


def test_a_ledger_reserves_its_rows_events_and_a_compliance_check_recomputes_them(tmp_path) -> None:
    budget = DatasetBudget(10.0, 1e-5)
    plain = BudgetLedger(tmp_path / "plain.db", "d", budget)
    withev = BudgetLedger(tmp_path / "events.db", "d", budget)
    steps = GaussianSteps(1.1, 0.05, 40)
    plain.charge_gaussian("a", steps)
    charge = withev.charge_gaussian("a", steps, event_probability=1e-8)
    assert charge.details[EVENT_PROBABILITY] == 1e-8
    assert withev.spent().epsilon == pytest.approx(
        epsilon_with_event(lambda d: epsilon([steps], d), 1e-5, 1e-8), rel=1e-12
    )
    assert withev.spent().epsilon > plain.spent().epsilon
    assert withev.accounting_state()["event_probability_total"] == 1e-8
    withev.charge_approx("count", 0.2, 1e-6, mechanism="laplace")
    withev.charge_gaussian("b", steps, event_probability=2e-8)
    assert all(c.ok for c in recompute(withev.all_charges()))
    # a row whose event was made smaller after the fact no longer verifies
    with withev._transaction() as conn:
        conn.execute(
            f"UPDATE charges SET details = json_set(details, '$.{EVENT_PROBABILITY}', 1e-12) WHERE charge_key='b'"
        )
    assert [c.charge_key for c in recompute(withev.all_charges()) if not c.ok] == ["b"]


def test_a_charge_the_event_pushes_past_the_target_is_refused_and_nothing_is_written(tmp_path) -> None:
    steps = GaussianSteps(1.1, 0.05, 40)
    target = epsilon([steps], 1e-5) * (1 + 1e-7)  # room for the steps alone, not for a large event
    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(target, 1e-5))
    from fedcustomer.errors import BudgetExhausted

    with pytest.raises(BudgetExhausted):
        ledger.charge_gaussian("a", steps, event_probability=1e-7)
    assert ledger.all_charges() == [] and len(ledger.refusals()) == 1
    assert ledger.project([steps], extra_events=1e-7).epsilon > target
    ledger.charge_gaussian("a", steps)  # without the event it fits
    for bad in (-1e-9, 1.0):
        with pytest.raises(ConfigError):
            ledger.charge_gaussian("c", steps, event_probability=bad)


def test_local_noise_calibrated_after_distributed_rounds_leaves_their_reserve(tmp_path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(3.0, 1e-5))
    ledger.charge_gaussian("r1", GaussianSteps(4.0, 0.05, 1), event_probability=1e-9)
    sigma = ledger.calibrate_noise(0.05, 100)
    ledger.charge_gaussian("job", GaussianSteps(sigma, 0.05, 100))  # fits: the reserve was left
    assert ledger.spent().epsilon <= 3.0


def test_the_coordinator_calibrates_with_the_clip_events_reserved() -> None:
    q, rounds, partners = 0.05, 200, 10
    sigma = dd.calibrate_sigma(q, rounds, 3.0, 1e-5, sigma_max=50.0, contributions=partners)
    step = dd.DistributedStep(sigma, q, 1.0, 3, trust_secagg=True, shares=partners)
    assert step.clip_event_probability() == pytest.approx(partners * 2 * dd.TAIL_PROBABILITY)
    eps_a, _ = dd.run_epsilons(step, rounds, 1e-5)
    assert eps_a <= 3.0
    # a fresh trusting partner's ledger is charged within the target, round by round
    report = dd.privacy_report(step, rounds=rounds, delta=1e-5, partners=partners, clip_range=1.0, levels=4)
    assert report["delta_coordinator"] == 1e-5 and report["epsilon_coordinator"] == eps_a
    quant = report["quantisation"]
    assert quant["clip_probability_total"] == pytest.approx(rounds * partners * 2 * dd.TAIL_PROBABILITY)
    assert quant["clip_event_delta_reserved"] == pytest.approx(
        (1 + math.exp(eps_a)) * quant["clip_probability_total"]
    )
    with pytest.raises(ConfigError, match="clip events"):
        dd.calibrate_sigma(q, rounds, 30.0, 1e-10, sigma_max=50.0, contributions=1000)


def test_a_step_never_sums_fewer_shares_than_it_needs() -> None:
    with pytest.raises(ConfigError, match="at most 2"):
        dd.DistributedStep(1.0, 0.05, 1.0, 3, shares=2)
    assert dd.DistributedStep(1.0, 0.05, 1.0, 3).contributions == 3
    assert dd.DistributedStep(1.0, 0.05, 1.0, 3, shares=5).charged_event_probability() == 0.0  # (b): none


def test_a_large_budget_after_distributed_rounds_aims_at_the_largest_epsilon_the_events_allow(
    tmp_path,
) -> None:
    """A partner whose budget is far above what the events' reserve allows still gets useful noise."""
    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(100.0, 1e-5))
    ledger.charge_gaussian("r1", GaussianSteps(4.0, 0.05, 1), event_probability=1e-12)
    sigma = ledger.calibrate_noise(0.05, 100)
    assert sigma < 1.0  # not the maximum noise: the target is capped, not abandoned
    ledger.charge_gaussian("job", GaussianSteps(sigma, 0.05, 100))
    spent = ledger.spent().epsilon
    assert math.isfinite(spent) and spent <= math.log(1e-5 / 2e-12)
