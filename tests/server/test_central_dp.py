"""Central (partner-level) DP with a maximum epsilon: Flower's accounted wrapper stops the job in time."""

import csv
import json
from pathlib import Path

import pytest
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedcustomer.apps.client import make_client_app
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import pld
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.central_dp import PldAccountant, central_accountant, restore
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid
from fedcustomer.server.strategies import build_strategy, central_dp_epsilon
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC

SIGMA, CAP = 2.0, 3.5  # epsilon after 2 rounds is below the cap, after 3 above it (both accountants)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_the_cap_allows_two_of_five_rounds_and_the_job_says_why_it_stopped(
    tmp_path: Path, accountant: str
) -> None:
    job = _job(
        tmp_path,
        rounds=5,
        central_dp=True,
        central_noise_multiplier=SIGMA,
        central_max_epsilon=CAP,
        central_accountant=accountant,
        federated_eval="none",
    )
    two, three = (central_dp_epsilon(job, r, 3, 3)["epsilon"] for r in (2, 3))
    assert two <= CAP < three  # the premise: exactly two rounds fit
    homes = _federation(tmp_path, job)
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 3), job, SPEC, num_partners=3)
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 2
    assert summary["stop_reason"].startswith("round 3 not started")
    # known before round 1, and said then: the cap lets two rounds run
    assert job.central_cap_rounds() == 2
    assert any(
        n.startswith(f"--central-max-epsilon {CAP:g} lets 2 of the 5 planned rounds run")
        for n in summary["notices"]
    )
    assert (
        f"past the job's maximum {CAP:g}" in summary["stop_reason"]
        and accountant.upper() in summary["stop_reason"]
    )
    central = summary["central_dp"]
    assert central["accountant"] == accountant and central["max_epsilon"] == CAP
    assert central["rounds"] == 2 and central["epsilon"] == pytest.approx(two, rel=1e-12)
    assert central["stopped_by_max_epsilon"] is True and central["next_round_epsilon"] == pytest.approx(three)
    on_disk = json.loads((Path(job.out) / "summary.json").read_text())
    assert on_disk["central_dp"] == central and on_disk["stop_reason"] == summary["stop_reason"]
    with open(Path(job.out) / "metrics.csv") as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["1", "2"]  # no partial third round
    for home in homes:  # round 3 was never sent: no partner trained or paid for it
        ledger = BudgetLedger(Path(home) / "ledger.db", job.dataset_name, DatasetBudget(3.0, 1e-5))
        assert [c.round for c in ledger.charges()] == [1, 2] and ledger.refusals() == []


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_cap_below_one_rounds_epsilon_is_refused_before_anything_runs(accountant: str) -> None:
    one = JobConfig(
        central_dp=True, central_noise_multiplier=SIGMA, central_accountant=accountant
    ).central_epsilon_after(1)
    with pytest.raises(
        ConfigError, match=r"below the partner-level epsilon of a single round .*no round could run"
    ):
        JobConfig(
            central_dp=True,
            central_noise_multiplier=SIGMA,
            central_max_epsilon=one * 0.99,
            central_accountant=accountant,
        )
    assert (
        JobConfig(
            central_dp=True,
            central_noise_multiplier=SIGMA,
            central_max_epsilon=one,
            central_accountant=accountant,
        ).central_cap_rounds()
        == 1
    )


@pytest.mark.parametrize("rounds", [1, 2, 7, 40])
def test_the_rounds_a_cap_allows_are_the_most_whose_epsilon_stays_within_it(rounds: int) -> None:
    job = JobConfig(rounds=rounds, central_dp=True, central_noise_multiplier=3.0, central_max_epsilon=4.0)
    linear = sum(
        1 for r in range(1, rounds + 1) if job.central_epsilon_after(r) <= 4.0
    )  # epsilon grows with r
    assert job.central_cap_rounds() == linear
    assert JobConfig(rounds=rounds, central_dp=True).central_cap_rounds() is None  # no cap


def test_a_cap_that_is_not_reached_lets_the_job_complete(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=2, central_dp=True, central_noise_multiplier=SIGMA, central_max_epsilon=10.0)
    summary = run_job_on_grid(
        LocalGrid(make_client_app(_federation(tmp_path, job)), 3), job, SPEC, num_partners=3
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["central_dp"]["stopped_by_max_epsilon"] is False
    assert summary["central_dp"]["epsilon"] <= 10.0


def test_the_wrapper_gets_flowers_rdp_accountant_or_ours_for_pld() -> None:
    job = JobConfig(central_dp=True, central_noise_multiplier=SIGMA, central_max_epsilon=CAP)
    strategy = build_strategy(job, 3)
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert isinstance(strategy.accountant, RdpAccountant)
    assert strategy.accountant.config.max_epsilon == CAP
    pld_job = JobConfig(
        central_dp=True, central_noise_multiplier=SIGMA, central_max_epsilon=CAP, central_accountant="pld"
    )
    assert isinstance(build_strategy(pld_job, 3).accountant, PldAccountant)
    assert build_strategy(JobConfig(central_dp=True), 3).accountant is None  # no cap: reported after the fact


def test_flowers_rdp_figures_equal_the_ledgers_rdp_and_pld_is_below_them() -> None:
    event = GaussianPrivacyEvent(SIGMA, 3, 3)
    for rounds in (1, 2, 5):
        flower = central_accountant("rdp", noise_multiplier=SIGMA, delta=1e-5, partners=3, max_epsilon=None)
        ours = central_accountant("pld", noise_multiplier=SIGMA, delta=1e-5, partners=3, max_epsilon=None)
        flower.compose(event, rounds)
        restore(ours, SIGMA, 3, rounds)
        job = JobConfig(central_dp=True, central_noise_multiplier=SIGMA, delta=1e-5)
        assert flower.get_epsilon(1e-5) == pytest.approx(
            central_dp_epsilon(job, rounds, 3, 3)["epsilon"], rel=1e-9
        )
        assert ours.get_epsilon(1e-5) == pytest.approx(pld.epsilon([GaussianSteps(SIGMA, 1.0, rounds)], 1e-5))
        assert ours.get_epsilon(1e-5) < flower.get_epsilon(1e-5)
        assert ours.get_privacy_spent().num_releases == rounds


def test_the_pld_accountant_refuses_through_the_wrapper_before_a_round_is_configured() -> None:
    acc = central_accountant("pld", noise_multiplier=SIGMA, delta=1e-5, partners=3, max_epsilon=CAP)
    restore(acc, SIGMA, 3, 2)
    assert acc.would_exceed(GaussianPrivacyEvent(SIGMA, 3, 3))
    assert not acc.would_exceed(GaussianPrivacyEvent(SIGMA, 3, 3), max_epsilon=100.0)
    spent = acc.get_privacy_spent()
    assert spent.accounting_method == "pld" and spent.epsilon <= CAP
    assert acc.get_delta(spent.epsilon) == pytest.approx(1e-5, rel=2e-2)
    copy = central_accountant("pld", noise_multiplier=SIGMA, delta=1e-5, partners=3, max_epsilon=CAP)
    copy.load_state_dict(acc.state_dict())
    assert copy.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    with pytest.raises(ValueError, match="population"):
        acc.compose(GaussianPrivacyEvent(SIGMA, 2, 4))
    assert issubclass(PrivacyBudgetExhausted, Exception)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"central_max_epsilon": 2.0}, "needs --central-dp"),
        ({"central_dp": True, "central_max_epsilon": 0}, "--central-max-epsilon must be > 0"),
        ({"central_dp": True, "central_max_epsilon": 2.0, "strategy": "fedmedian"}, "fedavg, fedprox"),
        ({"central_accountant": "moments"}, "--central-accountant must be one of rdp, pld"),
    ],
)
def test_cap_options_are_checked(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobConfig(**kw)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_resumed_run_counts_the_rounds_it_already_released(accountant: str) -> None:
    job = JobConfig(
        central_dp=True,
        central_noise_multiplier=SIGMA,
        central_max_epsilon=CAP,
        central_accountant=accountant,
    )
    acc = build_strategy(job, 3).accountant
    restore(acc, SIGMA, 3, 1)
    assert not acc.would_exceed(GaussianPrivacyEvent(SIGMA, 3, 3))  # round 2 still fits
    restore(acc, SIGMA, 3, 1)
    assert acc.would_exceed(GaussianPrivacyEvent(SIGMA, 3, 3))  # round 3 does not
    assert acc.get_epsilon(1e-5) == pytest.approx(central_dp_epsilon(job, 2, 3, 3)["epsilon"], rel=1e-9)
