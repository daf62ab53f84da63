"""Strategy choice and the central-DP epsilon: Flower's strategies, configured from the job."""

import math

import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
)

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accounting import GaussianSteps, epsilon
from fedcustomer.server.job import STRATEGY_NAMES, JobConfig
from fedcustomer.server.strategies import UNIT_WEIGHT, build_strategy, central_dp_epsilon

CLASSES = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def test_every_strategy_name_has_its_class() -> None:
    assert set(CLASSES) == set(STRATEGY_NAMES)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_each_name_builds_its_flower_strategy_with_the_job_minimums(name: str) -> None:
    strategy = build_strategy(JobConfig(strategy=name, partners=4, min_partners=3), num_partners=4)
    assert type(strategy) is CLASSES[name]
    assert strategy.min_train_nodes == strategy.min_evaluate_nodes == strategy.min_available_nodes == 3
    assert strategy.fraction_train == 1.0 and strategy.fraction_evaluate == 1.0
    assert strategy.weighted_by_key == "num-examples"


def test_strategy_parameters_come_from_the_job() -> None:
    assert build_strategy(JobConfig(strategy="fedprox", proximal_mu=0.3), 3).proximal_mu == 0.3
    assert build_strategy(JobConfig(strategy="fedtrimmedavg", trimmed_beta=0.1), 3).beta == 0.1
    adam = build_strategy(JobConfig(strategy="fedadam", server_lr=0.02, lr=0.4), 3)
    assert (adam.eta, adam.eta_l) == (0.02, 0.4)


def test_no_federated_evaluation_samples_nobody_for_it() -> None:
    assert build_strategy(JobConfig(federated_eval="none"), 3).fraction_evaluate == 0.0
    assert build_strategy(JobConfig(federated_eval="final"), 3).fraction_evaluate == 1.0


def test_central_dp_wraps_the_strategy_with_uniform_weights() -> None:
    job = JobConfig(
        strategy="fedprox", central_dp=True, central_noise_multiplier=1.7, central_clipping_norm=0.3
    )
    wrapped = build_strategy(job, num_partners=5)
    assert type(wrapped) is DifferentialPrivacyServerSideFixedClipping
    assert (wrapped.noise_multiplier, wrapped.clipping_norm, wrapped.num_sampled_clients) == (1.7, 0.3, 5)
    assert type(wrapped.strategy) is FedProx and wrapped.strategy.weighted_by_key == UNIT_WEIGHT


def test_an_unknown_strategy_from_a_direct_caller_is_a_config_error() -> None:
    job = JobConfig()
    job.strategy = "fedsgd"  # past validation, as a direct caller could
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'; choose one of fedavg, fedprox"):
        build_strategy(job, 3)


def test_central_dp_epsilon_is_the_rdp_account_of_the_rounds_run() -> None:
    job = JobConfig(central_dp=True, central_noise_multiplier=1.2, central_clipping_norm=0.7, delta=1e-6)
    report = central_dp_epsilon(job, rounds=4, sampled=2, total=4)
    assert report == {
        "unit": "partner (all of one partner's data)",
        "noise_multiplier": 1.2,
        "clipping_norm": 0.7,
        "rounds": 4,
        "sample_rate": 0.5,
        "delta": 1e-6,
        "accountant": "rdp",
        "epsilon": epsilon([GaussianSteps(1.2, 0.5, 4)], 1e-6),
        "max_epsilon": None,
    }
    assert math.isfinite(report["epsilon"]) and report["epsilon"] > 0


def test_central_dp_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    job = JobConfig(central_dp=True, central_noise_multiplier=1.0)
    noisier = JobConfig(central_dp=True, central_noise_multiplier=2.0)
    one, five = (central_dp_epsilon(job, r, 3, 3)["epsilon"] for r in (1, 5))
    assert 0 < one < five
    assert central_dp_epsilon(noisier, 5, 3, 3)["epsilon"] < five


def test_central_dp_sample_rate_is_capped_at_one_and_refused_with_nobody_sampled() -> None:
    job = JobConfig(central_dp=True)
    assert central_dp_epsilon(job, 1, sampled=5, total=3)["sample_rate"] == 1.0
    assert central_dp_epsilon(job, 1, sampled=2, total=0)["sample_rate"] == 1.0
    with pytest.raises(ConfigError, match="sample rate must be in \\(0, 1\\]"):
        central_dp_epsilon(job, 1, sampled=0, total=3)  # nobody sampled: nothing to account
