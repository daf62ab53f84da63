"""Strategy choice: Flower's own message-API strategies, configured from a job.

Aggregation stays Flower's; we only pick and configure. Central (partner-level) DP
wraps the chosen strategy with Flower's server-side fixed-clipping wrapper, with
uniform weights so the wrapper's sensitivity analysis holds; with a maximum epsilon the
wrapper gets an accountant and stops the job before the round that would pass it
(see ``central_dp``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedcustomer.errors import ConfigError
from fedcustomer.server.central_dp import UNIT, central_accountant
from fedcustomer.server.job import STRATEGY_NAMES, JobConfig

# Reply metric every partner sends as 1.0: uniform weighting for central DP.
UNIT_WEIGHT = "unit-weight"


def build_strategy(job: JobConfig, num_partners: int) -> Strategy:
    """The Flower strategy for ``job`` (optionally wrapped for central DP)."""
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=0.0 if job.federated_eval == "none" else 1.0,
        min_train_nodes=job.min_partners,
        min_evaluate_nodes=job.min_partners,
        min_available_nodes=job.min_partners,
        weighted_by_key=UNIT_WEIGHT if job.central_dp else "num-examples",
    )
    name = job.strategy
    if name == "fedavg":
        strategy: Strategy = FedAvg(**common)
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=job.proximal_mu)
    elif name == "fedadam":
        strategy = FedAdam(**common, eta=job.server_lr, eta_l=job.lr, tau=1e-3)
    elif name == "fedmedian":
        strategy = FedMedian(**common)
    elif name == "fedtrimmedavg":
        strategy = FedTrimmedAvg(**common, beta=job.trimmed_beta)
    elif name == "krum":
        strategy = Krum(**common, num_malicious_nodes=0)
    else:  # JobConfig.validate already refuses these; kept for direct callers
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    if job.central_dp:
        accountant = None
        if job.central_max_epsilon is not None:
            accountant = central_accountant(
                job.central_accountant,
                noise_multiplier=job.central_noise_multiplier,
                delta=job.delta,
                partners=num_partners,
                max_epsilon=job.central_max_epsilon,
            )
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=job.central_noise_multiplier,
            clipping_norm=job.central_clipping_norm,
            num_sampled_clients=num_partners,
            accountant=accountant,
        )
    return strategy


def central_dp_epsilon(job: JobConfig, rounds: int, sampled: int, total: int) -> dict[str, float | int | str]:
    """Partner-level epsilon of the central-DP wrapper after ``rounds`` rounds (the job's accountant)."""
    eps = job.central_epsilon_after(rounds, min(1.0, sampled / max(1, total)))
    return {
        "unit": UNIT,
        "noise_multiplier": job.central_noise_multiplier,
        "clipping_norm": job.central_clipping_norm,
        "rounds": rounds,
        "sample_rate": min(1.0, sampled / max(1, total)),
        "delta": job.delta,
        "accountant": job.central_accountant,
        "epsilon": eps,
        "max_epsilon": job.central_max_epsilon,
    }


def central_cap_notice(job: JobConfig) -> str | None:
    """What to tell the user before training when ``--central-max-epsilon`` will stop the job early."""
    allowed = job.central_cap_rounds()
    if allowed is None or allowed >= job.rounds:
        return None
    return (
        f"--central-max-epsilon {job.central_max_epsilon:g} lets {allowed} of the {job.rounds} planned rounds run "
        f"(partner-level epsilon {job.central_epsilon_after(allowed):.3f} after them, "
        f"{job.central_epsilon_after(allowed + 1):.3f} after one more): the job will stop after round {allowed}. "
        f"Partners calibrate their own noise for all {job.rounds} rounds; --rounds {allowed} trains those rounds "
        "with less noise"
    )
