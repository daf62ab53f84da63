"""PLD accounting: the library's own figures, tighter than RDP, calibration from below, refusals on time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from opacus.accountants import RDPAccountant

from fedcustomer.errors import BudgetExhausted, ConfigError
from fedcustomer.privacy.dp import accounting, pld
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.recompute import recompute

COARSE = 1e-3  # a coarser grid keeps these tests quick; the figures are compared at the same interval
ROUND = GaussianSteps(noise_multiplier=1.1, sample_rate=0.05, steps=20)
OTHER = GaussianSteps(noise_multiplier=2.0, sample_rate=0.02, steps=50)


def library_epsilon(groups: list[tuple[float, float, int]], delta: float, interval: float) -> float:
    """dp-accounting on its own: PoissonSampled(Gaussian) self-composed, groups composed."""
    acc = PLDAccountant(value_discretization_interval=interval)
    for sigma, q, steps in groups:
        acc.compose(
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
            )
        )
    return float(acc.get_epsilon(delta))


def test_epsilon_is_the_librarys_at_the_default_interval() -> None:
    history = [ROUND] * 5
    ours = pld.epsilon(history, 1e-5)
    assert ours == pytest.approx(library_epsilon([(1.1, 0.05, 100)], 1e-5, 1e-4), rel=1e-12)
    assert pld.VALUE_DISCRETIZATION_INTERVAL == 1e-4


def test_mixed_history_is_grouped_in_first_charge_order_as_the_library_composes_it() -> None:
    history = [ROUND, OTHER, ROUND, GaussianSteps(5.0, 1.0, 1), OTHER]
    expected = library_epsilon([(1.1, 0.05, 40), (2.0, 0.02, 100), (5.0, 1.0, 1)], 1e-5, COARSE)
    assert pld.epsilon(history, 1e-5, COARSE) == pytest.approx(expected, rel=1e-12)
    assert pld.epsilon(history, 1e-5, COARSE) == pytest.approx(expected, rel=1e-12)  # from the cache too
    event = pld.dp_event_of(history)
    acc = PLDAccountant(value_discretization_interval=COARSE)
    acc.compose(event)
    assert acc.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert pld.epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize(
    "history",
    [[ROUND] * 5, [OTHER] * 10, [GaussianSteps(0.8, 0.01, 1000)], [ROUND, OTHER, GaussianSteps(3.0, 1.0, 1)]],
)
def test_pld_is_never_above_rdp_for_the_same_history(history: list[GaussianSteps]) -> None:
    rdp = accounting.epsilon(history, 1e-5)
    tight = pld.epsilon(history, 1e-5, COARSE)
    assert 0 < tight <= rdp


def test_calibration_meets_the_target_from_below() -> None:
    prior = [OTHER]
    sigma = pld.calibrate_noise(prior, 0.05, 60, 3.0, 1e-5, interval=COARSE)
    spent = library_epsilon([(2.0, 0.02, 50), (sigma, 0.05, 60)], 1e-5, COARSE)
    assert spent <= 3.0
    assert spent > 3.0 * 0.99  # it uses the budget, not a loose share of it
    less_noise = sigma * (1 - 3e-3)
    assert library_epsilon([(2.0, 0.02, 50), (less_noise, 0.05, 60)], 1e-5, COARSE) > 3.0
    # PLD needs less noise than RDP for the same target
    assert sigma < accounting.calibrate_noise(prior, 0.05, 60, 3.0, 1e-5)


def test_calibration_on_the_default_grid_meets_the_target_from_below() -> None:
    """The coarse-then-exact search ends on the ledger's own grid."""
    prior = [GaussianSteps(3.0, 1.0, 1)]
    sigma = pld.calibrate_noise(prior, 0.1, 30, 2.0, 1e-5)
    spent = library_epsilon([(3.0, 1.0, 1), (sigma, 0.1, 30)], 1e-5, 1e-4)
    assert 2.0 * 0.99 < spent <= 2.0
    assert library_epsilon([(3.0, 1.0, 1), (sigma * (1 - 3e-3), 0.1, 30)], 1e-5, 1e-4) > 2.0


def test_calibration_edges_and_a_sigma_already_in_the_history() -> None:
    assert pld.calibrate_noise([], 0.5, 0, 1.0, 1e-5) == 50.0
    assert pld.calibrate_noise([], 0.5, 10_000, 0.01, 1e-5, interval=COARSE, sigma_max=5.0) == 5.0
    assert pld.calibrate_noise([], 0.001, 1, 50.0, 1e-5, interval=COARSE) == 0.3
    prior = [GaussianSteps(5.0, 0.05, 20)]  # a pinned sigma_max of an earlier run
    sigma = pld.calibrate_noise(prior, 0.05, 20, 30.0, 1e-5, interval=COARSE, sigma_max=5.0)
    assert library_epsilon([(5.0, 0.05, 20), (sigma, 0.05, 20)], 1e-5, COARSE) <= 30.0


def test_a_run_calibrated_for_its_rounds_is_charged_all_of_them_and_refused_the_next(tmp_path: Path) -> None:
    budget = DatasetBudget(3.0, 1e-5)
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", budget, Accountant("pld", COARSE))
    ledger.charge_gaussian("earlier", OTHER)
    sigma = ledger.calibrate_noise(sample_rate=0.05, steps=5 * 20)
    for r in range(1, 6):
        charge = ledger.charge_gaussian(f"run:a:round:{r}", GaussianSteps(sigma, 0.05, 20), round=r)
        expected = library_epsilon([(2.0, 0.02, 50), (sigma, 0.05, 20 * r)], 1e-5, COARSE)
        assert charge.epsilon_total == pytest.approx(expected, rel=1e-12)
        assert charge.accountant == "pld" and charge.pld_interval == COARSE
    assert ledger.spent().epsilon <= 3.0
    with pytest.raises(BudgetExhausted, match="past the target 3"):
        ledger.charge_gaussian("run:a:round:6", GaussianSteps(sigma, 0.05, 20))


def test_refusal_comes_at_the_step_the_library_says_and_later_than_under_rdp(tmp_path: Path) -> None:
    step, target = GaussianSteps(1.5, 0.05, 10), 1.5
    fits = next(k for k in range(1, 50) if library_epsilon([(1.5, 0.05, 10 * k)], 1e-5, COARSE) > target) - 1
    rdp_fits = next(k for k in range(1, 50) if accounting.epsilon([step] * k, 1e-5) > target) - 1
    assert fits > rdp_fits  # the tighter accountant lets more rounds through
    ledger = BudgetLedger(
        tmp_path / "ledger.db", "loans", DatasetBudget(target, 1e-5), Accountant("pld", COARSE)
    )
    for r in range(1, fits + 1):
        ledger.charge_gaussian(f"r{r}", step)
    with pytest.raises(BudgetExhausted):
        ledger.charge_gaussian(f"r{fits + 1}", step)
    (refusal,) = ledger.refusals()
    assert refusal["charge_key"] == f"r{fits + 1}" and refusal["accountant"] == "pld"
    assert refusal["epsilon_would_be"] == pytest.approx(
        library_epsilon([(1.5, 0.05, 10 * (fits + 1))], 1e-5, COARSE), rel=1e-12
    )


def test_every_row_recomputes_with_the_libraries_and_a_changed_row_does_not(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    budget = DatasetBudget(20.0, 1e-5)
    rdp = BudgetLedger(path, "loans", budget)
    rdp.charge_gaussian("a1", ROUND)
    rdp.charge_approx("q1", 0.5, 0.0, mechanism="laplace")
    switched = BudgetLedger(path, "loans", budget, Accountant("pld", COARSE))
    switched.charge_gaussian("a2", ROUND)
    switched.charge_gaussian("b1", OTHER)
    charges = switched.all_charges()
    assert [c.accountant for c in charges] == ["rdp", "rdp", "pld", "pld"]
    checks = recompute(charges)
    assert all(c.ok for c in checks), checks
    # the switch recomposes the whole history with PLD (rows before it included)
    whole = pld.epsilon([ROUND, ROUND, OTHER], 1e-5, COARSE) + 0.5
    assert switched.spent().epsilon == pytest.approx(whole, rel=1e-12)
    assert rdp.spent().epsilon > switched.spent().epsilon  # the same history under RDP
    first = RDPAccountant()
    first.history = [ROUND.as_tuple()]
    assert checks[0].recomputed_total == pytest.approx(first.get_epsilon(1e-5), rel=1e-12)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE charges SET epsilon_total = epsilon_total * 0.9 WHERE charge_key = 'a2'")
    bad = [c for c in recompute(switched.all_charges()) if not c.ok]
    assert [c.charge_key for c in bad] == ["a2"]


def test_a_ledger_written_before_accountants_opens_as_rdp(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """CREATE TABLE charges (seq INTEGER PRIMARY KEY AUTOINCREMENT, charge_key TEXT NOT NULL UNIQUE,
            dataset TEXT NOT NULL, time TEXT NOT NULL, family TEXT NOT NULL, mechanism TEXT NOT NULL,
            run_id TEXT, round INTEGER, query_id TEXT, noise_multiplier REAL, sample_rate REAL, steps INTEGER,
            epsilon REAL, delta REAL, epsilon_total REAL NOT NULL, delta_total REAL NOT NULL,
            epsilon_target REAL NOT NULL, delta_target REAL NOT NULL, details TEXT NOT NULL DEFAULT '{}');
            CREATE TABLE refusals (seq INTEGER PRIMARY KEY AUTOINCREMENT, charge_key TEXT NOT NULL,
            dataset TEXT NOT NULL, time TEXT NOT NULL, mechanism TEXT NOT NULL, epsilon_would_be REAL NOT NULL,
            epsilon_target REAL NOT NULL, reason TEXT NOT NULL);"""
        )
        eps = accounting.epsilon([ROUND], 1e-5)
        conn.execute(
            "INSERT INTO charges (charge_key, dataset, time, family, mechanism, noise_multiplier, sample_rate,"
            " steps, epsilon, epsilon_total, delta_total, epsilon_target, delta_target)"
            " VALUES ('old', 'loans', '2025', 'gaussian_rdp', 'dpsgd', 1.1, 0.05, 20, ?, ?, 1e-5, 3.0, 1e-5)",
            (eps, eps),
        )
    ledger = BudgetLedger(path, "loans", DatasetBudget(3.0, 1e-5))
    (old,) = ledger.all_charges()
    assert old.accountant == "rdp" and old.pld_interval is None
    assert ledger.spent().epsilon == pytest.approx(eps, rel=1e-12)
    assert all(c.ok for c in recompute(ledger.all_charges()))
    ledger.charge_gaussian("new", ROUND)  # and it takes new charges
    assert len(ledger.all_charges()) == 2


def test_an_unknown_accountant_or_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="accountant must be one of rdp, pld"):
        Accountant("moments")
    with pytest.raises(ConfigError, match="discretisation interval"):
        Accountant("pld", 0.0)
    assert Accountant().describe()["accountant"] == "rdp"
    assert Accountant("pld").describe()["value_discretization_interval"] == 1e-4
