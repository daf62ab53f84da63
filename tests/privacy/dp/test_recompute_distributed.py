"""A compliance check of distributed-DP ledger rows: totals recompute AND the row's parameters agree.

Every row below is written through the ledger, so its totals are composed from whatever triple and
event it was given and recompute exactly; only the parameter check can tell a row that charged the
coordinator's noise without the partner's trust, or dropped its clip event.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.recompute import distributed_row_problems, recompute, row_problems


def _step(trust: bool) -> dd.DistributedStep:
    return dd.DistributedStep(1.3, 0.05, 0.7, 4, trust_secagg=trust, shares=6)


def _charge(
    ledger: BudgetLedger,
    key: str,
    step: dd.DistributedStep,
    *,
    steps: GaussianSteps | None = None,
    event: float | None = None,
    **changed: Any,
) -> None:
    """A distributed round's row as a partner writes it (both totals included), with ``changed`` details."""
    details = step.details() | changed
    eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), ledger.budget.delta, extra=step)
    details |= {"epsilon_total_coordinator": eps_a, "epsilon_total_single_update": eps_b}
    ledger.charge_gaussian(
        key,
        steps or step.charged_steps(),
        mechanism=dd.MECHANISM,
        details=details,
        event_probability=step.charged_event_probability() if event is None else event,
    )


@pytest.fixture
def ledger(tmp_path) -> BudgetLedger:
    return BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(100.0, 1e-5))


def test_rows_as_partners_write_them_verify(ledger: BudgetLedger) -> None:
    ledger.charge_gaussian("local job", GaussianSteps(2.0, 0.1, 30))
    for r in range(3):
        _charge(ledger, f"trusting r{r}", _step(True))
    _charge(ledger, "untrusting r3", _step(False))
    rows = recompute(ledger.all_charges())
    assert all(r.ok for r in rows) and all(r.problems == () for r in rows)


def test_the_coordinators_noise_charged_without_trust_is_caught(ledger: BudgetLedger) -> None:
    untrusted = _step(False)
    _charge(ledger, "r0", untrusted, steps=untrusted.coordinator_steps())
    (row,) = recompute(ledger.all_charges())
    assert not row.ok
    assert row.recorded_total == pytest.approx(row.recomputed_total, rel=1e-9)  # the totals alone agree
    assert row.problems == ("charged noise multiplier 1.3 is not the single_update view's 0.65",)


def test_a_claimed_trust_must_name_the_coordinator_as_charged(ledger: BudgetLedger) -> None:
    _charge(ledger, "r0", _step(True), charged="single_update")
    (row,) = recompute(ledger.all_charges())
    assert not row.ok and "charged 'single_update' does not match trust_secagg True" in row.problems


def test_a_trusting_row_without_its_clip_event_is_caught(ledger: BudgetLedger) -> None:
    _charge(ledger, "r0", _step(True), event=0.0)
    (row,) = recompute(ledger.all_charges())
    assert not row.ok and row.problems == ("charged event 0 is below the round's clip event 1.2e-14",)


def test_a_clip_event_below_its_contributions_floor_is_caught(ledger: BudgetLedger) -> None:
    _charge(ledger, "r0", _step(True), event=1e-20, clip_event_probability=1e-20)
    _charge(ledger, "r1", _step(False), contributions_max=2)
    problems = [r.problems for r in recompute(ledger.all_charges())]
    assert problems == [
        ("clip event 1e-20 is below 1.2e-14 for 6 contributions",),
        ("contributions_max 2 is below min_survivors 4",),
    ]


def test_single_update_noise_must_be_the_coordinators_share(ledger: BudgetLedger) -> None:
    step = _step(False)
    looser = GaussianSteps(1.0, 0.05, 1)  # claimed single-update noise 1.0 instead of 1.3 / sqrt(4)
    _charge(ledger, "r0", step, steps=looser, noise_multiplier_single_update=1.0)
    (row,) = recompute(ledger.all_charges())
    assert row.problems == ("single-update noise 1 is not the coordinator's 1.3 / sqrt(4)",)


def test_rows_from_before_clip_events_were_kept_still_verify(ledger: BudgetLedger) -> None:
    step = _step(True)
    legacy = {
        k: v for k, v in step.details().items() if k not in ("clip_event_probability", "contributions_max")
    }
    eps_a, eps_b = dd.both_epsilons([], 1e-5, extra=dd.DistributedStep(1.3, 0.05, 0.7, 4, trust_secagg=True))
    ledger.charge_gaussian(
        "old r0",
        step.charged_steps(),
        mechanism=dd.MECHANISM,
        details=legacy | {"epsilon_total_coordinator": eps_a, "epsilon_total_single_update": eps_b},
    )
    assert distributed_row_problems(ledger.all_charges()[0]) == []


def test_unreadable_parameters_are_a_problem_not_a_crash(ledger: BudgetLedger) -> None:
    ledger.charge_gaussian("r0", GaussianSteps(1.3, 0.05, 1), details={"dp_mode": "distributed"})
    (row,) = recompute(ledger.all_charges())
    assert not row.ok and row.problems[0].startswith("distributed row lacks a readable")


def test_other_rows_have_no_parameter_check(ledger: BudgetLedger) -> None:
    ledger.charge_gaussian("local", GaussianSteps(1.1, 0.05, 10))
    ledger.charge_approx("count", 0.5, 0.0, mechanism="laplace")
    assert [r.problems for r in recompute(ledger.all_charges())] == [(), ()]
    assert math.isfinite(ledger.spent().epsilon)


@pytest.mark.parametrize("bad", ["lots", -1e-9, 1.5])
def test_an_event_that_is_not_a_probability_is_a_problem(ledger: BudgetLedger, bad: object) -> None:
    ledger.charge_gaussian("local", GaussianSteps(1.1, 0.05, 10))
    with ledger._transaction() as conn:  # written by hand: the ledger refuses such an event itself
        conn.execute("UPDATE charges SET details = json_set(details, '$.event_probability', ?)", (bad,))
    (charge,) = ledger.all_charges()
    assert row_problems(charge) == [f"event_probability {bad!r} is not a probability"]
    (row,) = recompute([charge])
    assert not row.ok
