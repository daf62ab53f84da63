"""The partner's accountant sizes single Gaussian releases and both distributed-DP guarantees (PLD vs library)."""

from __future__ import annotations

import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from opacus.accountants import RDPAccountant

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.privacy.dp import pld
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.rare_events import epsilon_with_event, event_reserve
from fedcustomer.privacy.dp.recompute import recompute

COARSE = 1e-3  # a coarser grid keeps these tests quick; the library is asked at the same interval
PLD = Accountant("pld", COARSE)


def library_pld(groups: list[tuple[float, float, int]], delta: float, interval: float = COARSE) -> float:
    """dp-accounting alone: each (sigma, q, steps) group a self-composed Poisson-sampled Gaussian."""
    acc = PLDAccountant(value_discretization_interval=interval)
    for sigma, q, steps in groups:
        acc.compose(
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
            )
        )
    return float(acc.get_epsilon(delta))


def library_rdp(groups: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    acc.history = list(groups)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_a_pld_release_is_sized_to_the_librarys_epsilon_with_less_noise_than_rdp(epsilon: float) -> None:
    sigma = PLD.calibrate_release(epsilon, 1e-6)
    spent = library_pld([(sigma, 1.0, 1)], 1e-6)
    assert spent <= epsilon and spent > epsilon * (1 - 1e-3)  # the target, met from below
    # the exact Gaussian mechanism needs at least this much noise; PLD's pessimistic grid is just above it
    exact = pld.exact_gaussian_noise(epsilon, 1e-6)
    assert exact <= sigma < exact * 1.01
    rdp_sigma = Accountant().calibrate_release(epsilon, 1e-6)
    assert library_rdp([(rdp_sigma, 1.0, 1)], 1e-6) <= epsilon * (1 + 1e-6)
    assert sigma < rdp_sigma * 0.95  # the tighter accounting buys at least 5% less noise here


def test_a_pld_release_too_large_to_size_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="smaller epsilon or the Laplace mechanism"):
        PLD.calibrate_release(40.0, 1e-6)


def test_the_exact_gaussian_noise_is_where_the_librarys_epsilon_crosses_the_target() -> None:
    exact = pld.exact_gaussian_noise(1.0, 1e-5)
    assert library_pld([(exact, 1.0, 1)], 1e-5, 1e-4) == pytest.approx(1.0, rel=1e-3)
    assert library_pld([(exact * 0.98, 1.0, 1)], 1e-5, 1e-4) > 1.0  # less noise is not (1, 1e-5)-DP
    with pytest.raises(ConfigError):
        pld.exact_gaussian_noise(0.0, 1e-5)
    with pytest.raises(ConfigError):
        pld.exact_gaussian_noise(1.0, 1.0)


def test_distributed_sigma_calibrated_with_pld_spends_the_target_by_the_librarys_figures() -> None:
    q, rounds = 0.05, 120
    sigma = dd.calibrate_sigma(q, rounds, 3.0, 1e-5, sigma_max=50.0, accountant=PLD)
    assert 2.97 < library_pld([(sigma, q, rounds)], 1e-5) <= 3.0
    rdp_sigma = dd.calibrate_sigma(q, rounds, 3.0, 1e-5, sigma_max=50.0)
    assert sigma < rdp_sigma
    step = dd.DistributedStep(sigma, q, 1.0, 3)
    eps_a, eps_b = dd.run_epsilons(step, rounds, 1e-5, PLD)
    # (a) holds the rounds' clip events inside delta: the library's figure at delta less their reserve
    events = rounds * step.clip_event_probability()
    assert library_pld([(sigma, q, rounds)], 1e-5) < eps_a <= 3.0
    assert eps_a == pytest.approx(
        library_pld([(sigma, q, rounds)], 1e-5 - event_reserve(eps_a * (1 + 1e-6) + 1e-6, events)), rel=1e-9
    )
    assert eps_b == pytest.approx(library_pld([(sigma / 3**0.5, q, rounds)], 1e-5), rel=1e-9)
    # the same step under RDP reports more against both (PLD is the tighter bound)
    rdp_a, rdp_b = dd.run_epsilons(step, rounds, 1e-5)
    assert rdp_a == pytest.approx(
        library_rdp([(sigma, q, rounds)], 1e-5 - event_reserve(rdp_a * (1 + 1e-6) + 1e-6, events)), rel=1e-9
    )
    assert eps_a < rdp_a and eps_b < rdp_b


def _distributed_ledger(
    tmp_path, accountant: Accountant, trust: bool, totals_by: Accountant | None = None
) -> tuple[BudgetLedger, dd.DistributedStep]:
    """A ledger with a local job, a Laplace count and four distributed rounds; ``totals_by`` None: as written today."""
    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(100.0, 1e-5), accountant)
    ledger.charge_gaussian("earlier", GaussianSteps(2.0, 0.1, 30))  # a local-noise job before
    ledger.charge_approx("count", 0.5, 0.0, mechanism="laplace")
    step = dd.DistributedStep(1.3, 0.05, 0.7, 4, trust_secagg=trust)
    for r in range(4):
        by = accountant if totals_by is None else totals_by
        eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), 1e-5, extra=step, accountant=by)
        details = {
            **step.details(),
            "epsilon_total_coordinator": eps_a,
            "epsilon_total_single_update": eps_b,
        }
        if totals_by is None:
            details["accountant"] = accountant.name
        ledger.charge_gaussian(
            f"r{r}",
            step.charged_steps(),
            mechanism=dd.MECHANISM,
            details=details,
            event_probability=step.charged_event_probability(),  # as the partner node charges it
        )
    return ledger, step


@pytest.mark.parametrize("trust", [True, False])
def test_both_pld_guarantees_equal_the_librarys_and_the_charged_one_is_the_ledgers(
    tmp_path, trust: bool
) -> None:
    ledger, step = _distributed_ledger(tmp_path, PLD, trust)
    eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), 1e-5, accountant=PLD)
    # the Laplace count composes by basic composition with the Gaussian part; (a) holds the
    # four rounds' clip events inside delta
    assert eps_a == pytest.approx(
        epsilon_with_event(
            lambda d: library_pld([(2.0, 0.1, 30), (1.3, 0.05, 4)], d) + 0.5,
            1e-5,
            4 * step.clip_event_probability(),
        ),
        rel=1e-9,
    )
    assert eps_a > library_pld([(2.0, 0.1, 30), (1.3, 0.05, 4)], 1e-5) + 0.5
    assert eps_b == pytest.approx(library_pld([(2.0, 0.1, 30), (0.65, 0.05, 4)], 1e-5) + 0.5, rel=1e-9)
    assert ledger.spent().epsilon == pytest.approx(eps_a if trust else eps_b, rel=1e-12)
    last = ledger.all_charges()[-1]
    assert last.accountant == "pld" and last.pld_interval == COARSE
    assert last.details["epsilon_total_coordinator"] == pytest.approx(eps_a, rel=1e-12)
    rdp_a, rdp_b = dd.both_epsilons(ledger.all_charges(), 1e-5)
    assert eps_a < rdp_a and eps_b < rdp_b


def test_a_compliance_officer_recomputes_both_guarantees_of_every_distributed_row(tmp_path) -> None:
    ledger, step = _distributed_ledger(tmp_path, PLD, trust=False)
    checks = recompute(ledger.all_charges())
    assert all(c.ok for c in checks)
    distributed = [c for c in checks if c.recomputed_coordinator is not None]
    assert len(distributed) == 4 and all(c.recomputed_single_update is not None for c in distributed)
    assert distributed[-1].recomputed_coordinator == pytest.approx(
        epsilon_with_event(
            lambda d: library_pld([(2.0, 0.1, 30), (1.3, 0.05, 4)], d) + 0.5,
            1e-5,
            4 * step.clip_event_probability(),
        ),
        rel=1e-9,
    )
    # a row whose recorded guarantee was altered is caught
    with ledger._transaction() as conn:
        conn.execute(
            "UPDATE charges SET details = json_set(details, '$.epsilon_total_coordinator', 0.1) WHERE charge_key='r2'"
        )
    bad = [c.charge_key for c in recompute(ledger.all_charges()) if not c.ok]
    assert bad == ["r2"]


def test_the_report_gives_both_guarantees_under_each_accountant() -> None:
    step = dd.DistributedStep(1.2, 0.05, 0.5, 3)
    report = dd.privacy_report(
        step, rounds=50, delta=1e-5, partners=3, clip_range=1.0, levels=4, accountant=PLD
    )
    assert report["accountant"] == "pld" and report["accounting"]["value_discretization_interval"] == COARSE
    assert report["epsilon_coordinator"] == report["by_accountant"]["pld"]["epsilon_coordinator"]
    assert report["by_accountant"]["rdp"]["epsilon_coordinator"] > report["epsilon_coordinator"]
    assert report["by_accountant"]["rdp"]["epsilon_single_update"] > report["epsilon_single_update"]
    assert (
        dd.privacy_report(step, rounds=50, delta=1e-5, partners=3, clip_range=1.0, levels=4)["accountant"]
        == "rdp"
    )


def test_distributed_rows_written_before_the_partners_accountant_was_used_still_verify(tmp_path) -> None:
    """A PLD partner's older distributed rows: totals under RDP, no accountant in the details."""
    ledger, _ = _distributed_ledger(tmp_path, PLD, trust=True, totals_by=Accountant())
    assert "accountant" not in ledger.all_charges()[-1].details
    assert all(c.ok for c in recompute(ledger.all_charges()))
