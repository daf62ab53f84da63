"""The coordinator's side of a horizontal job: rounds over any Flower Grid, then the run directory.

:func:`run_job_on_grid` is the library function (tests call it with any Grid);
:mod:`fedcustomer.apps.server` wraps it as the ServerApp ``flwr run`` loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedcustomer.common.long_lived import long_lived_frozen
from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError
from fedcustomer.jobs.train_message import encode_train_config
from fedcustomer.models.registry import build_model
from fedcustomer.server.central_dp import restore
from fedcustomer.server.job import JobConfig
from fedcustomer.server.report import RunRecorder, round_from_dict
from fedcustomer.server.rounds import RoundReport, run_rounds
from fedcustomer.server.strategies import build_strategy, central_cap_notice, central_dp_epsilon

log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundReport], None]


def run_job_on_grid(
    grid: Grid,
    job: JobConfig,
    spec: FeatureSpec,
    *,
    num_partners: int,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    notices: list[str] | None = None,
) -> dict[str, Any]:
    """Run the whole job on ``grid`` and write its run directory; returns summary.json's content.

    ``notices`` (what the user was told before training) are kept in summary.json. The objects
    alive before the job are left out of full garbage collections while it runs
    (:mod:`fedcustomer.common.long_lived`).
    """
    with long_lived_frozen():
        return _run_job(grid, job, spec, num_partners, on_round, resume, notices)


def _run_job(
    grid: Grid,
    job: JobConfig,
    spec: FeatureSpec,
    num_partners: int,
    on_round: RoundCallback | None,
    resume: bool,
    notices: list[str] | None,
) -> dict[str, Any]:
    if job.dp and job.dp_mode == "distributed":
        raise ConfigError(
            "--dp-mode distributed runs only under SecAgg+ (the coordinator must see only the sum); "
            "add --secagg, or use --dp-mode local"
        )
    notices = list(notices or [])
    cap_notice = central_cap_notice(job)
    if cap_notice is not None and cap_notice not in notices:  # a deployed job: no one was told before
        log.warning("%s", cap_notice)
        notices.append(cap_notice)
    out = Path(job.out)
    recorder = RunRecorder(out, job, spec, resume=resume)
    model = build_model(job.task, job.arch, spec.input_dim, seed=job.seed)
    arrays = ArrayRecord(model.state_dict())
    first_round = 1
    if resume:
        checkpoint = RunRecorder.latest_checkpoint(out)
        if checkpoint is not None:
            arrays = ArrayRecord(checkpoint["state_dict"])
            first_round = int(checkpoint["round"]) + 1
            recorder.rounds = [round_from_dict(d) for d in checkpoint["rounds"]]
            log.info("resuming run %s after round %s", job.run_id, checkpoint["round"])
    strategy = build_strategy(job, num_partners)
    accountant = getattr(strategy, "accountant", None)  # Flower's DP wrapper holds it when the job has a cap
    if accountant is not None:
        restore(
            accountant, job.central_noise_multiplier, num_partners, sum(r.applied for r in recorder.rounds)
        )

    def record(report: RoundReport, current: ArrayRecord) -> None:
        recorder.record_round(report, current)
        if on_round:
            on_round(report)

    result = run_rounds(
        grid,
        strategy,
        arrays,
        num_rounds=job.rounds,
        train_config=encode_train_config(job, spec),
        min_partners=job.min_partners,
        evaluate_every_round=job.federated_eval == "every",
        evaluate_at_end=job.federated_eval != "none",
        first_round=first_round,
        timeout=job.round_timeout,
        on_round=record,
    )
    result.rounds = recorder.rounds  # include rounds restored from a checkpoint
    extra: dict[str, Any] = {"central_dp": None, "notices": notices}
    if job.central_dp:
        central = central_dp_epsilon(job, result.rounds_completed, num_partners, num_partners)
        central["stopped_by_max_epsilon"] = result.privacy_cap_round is not None
        if result.privacy_cap_round is not None:
            after = central_dp_epsilon(job, result.rounds_completed + 1, num_partners, num_partners)[
                "epsilon"
            ]
            central["next_round_epsilon"] = after
            result.stop_reason = (
                f"round {result.privacy_cap_round} not started: it would bring the partner-level (central DP) "
                f"epsilon to {after:.3f}, past the job's maximum {job.central_max_epsilon:g} "
                f"({job.central_accountant.upper()}, delta {job.delta:g}); {result.rounds_completed} round(s) ran"
            )
        extra["central_dp"] = central
    return recorder.finish(result, extra)
