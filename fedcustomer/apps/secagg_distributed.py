"""Distributed DP under SecAgg+: the partner's contribution, the survivors rule, the coordinator's step.

Each round is one DP-SGD step over the partners' union (privacy/dp/distributed.py). A
partner sends the clipped gradient sum of its Poisson sample plus its share of the noise,
and its coarse row count (in hundreds) as one extra value, so the coordinator learns only
the sums: the gradient sum carrying the full noise and the union's coarse size, which sets
the step's normaliser ``q * N_total``.

Fewer contributions than ``n_min`` would carry too little noise. The protocol rules it
out on the partners' side: :func:`min_survivors_mod` refuses to hand over its key shares
in SecAgg+'s unmask stage when fewer than ``n_min`` partners are active, so such a sum is
never unmasked. The coordinator also discards (does not apply) a sum that reports fewer
contributions, so a model never moves on a short-noised step.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.common import (
    ConfigRecord,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.serverapp import Grid

from fedcustomer.errors import ConfigError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.server import secagg_checkpoint as dcp

log = logging.getLogger(__name__)

STATE_KEY = "fedcustomer-distributed-dp"
SURVIVORS_ERROR_CODE = 4101
ACCOUNTANT_PROPERTY = "accountant"  # what a partner answers when the coordinator asks (a setting, no data)
REFUSAL_PROPERTY = "refusal"  # asked with a job's plan: why the partner would refuse it ("" if it would not)
_PLAN = (
    "plan-dataset",
    "plan-run-id",
    "plan-noise-multiplier",
    "plan-sample-rate",
    "plan-max-grad-norm",
    "plan-min-survivors",
    "plan-shares",
    "plan-first-round",
    "plan-last-round",
)


def plan_config(dataset: str, run_id: str, step: dd.DistributedStep, rounds: range) -> dict[str, Scalar]:
    """A distributed job's public plan (the rounds still to run), sent with a question before them."""
    values = (
        dataset,
        run_id,
        step.noise_multiplier,
        step.sample_rate,
        step.max_grad_norm,
        step.min_survivors,
        step.contributions,
        rounds.start,
        rounds.stop - 1,
    )
    return dict(zip(_PLAN, values))


def plan_from_config(config: dict[str, Any]) -> tuple[str, dd.DistributedStep, str, range] | None:
    """The plan of :func:`plan_config`: dataset, step, run id, rounds (None when the question carried none)."""
    if not all(k in config for k in _PLAN):
        return None
    dataset, run_id, sigma, q, clip, n_min, shares, first, last = (config[k] for k in _PLAN)
    step = dd.DistributedStep(float(sigma), float(q), float(clip), int(n_min), shares=int(shares))
    return str(dataset), step, str(run_id), range(int(first), int(last) + 1)


def contribution_arrays(outcome: Any) -> list[np.ndarray]:
    """The vector a partner hands SecAgg+ to mask: its noised gradient sums, then its coarse count."""
    arrays = [t.detach().cpu().numpy() for t in outcome.state_dict.values()]
    count = float(outcome.metrics["num-examples"]) / dd.COUNT_UNIT
    return [*arrays, np.array([count], dtype=np.float64)]


def remember_min_survivors(context: Context, n_min: int, shares: int) -> None:
    """Keep this round's ``n_min`` and most contributions in the node's state for
    :func:`min_survivors_mod`'s unmask check."""
    context.state.config_records[STATE_KEY] = ConfigRecord(
        {"min-survivors": int(n_min), "shares": int(shares)}
    )


def min_survivors_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Refuse SecAgg+'s unmask stage when the sum would hold fewer than ``n_min`` contributions, or more
    than the round's noise, quantisation and clip events were sized for."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    kept = ctxt.state.config_records.get(STATE_KEY)
    if configs is not None and kept is not None and configs.get(Key.STAGE) == Stage.UNMASK:
        need = int(kept.get("min-survivors", 0))  # type: ignore[arg-type]
        active = len(list(configs.get(Key.ACTIVE_NODE_ID_LIST, [])))  # type: ignore[arg-type]
        most = int(kept.get("shares", 0)) or active  # type: ignore[arg-type]
        if active < need or active > most:
            log.warning(
                "refusing to unmask a sum of %s contributions (needs between %s and %s)", active, need, most
            )
            reason = (
                f"only {active} partners contributed; distributed DP needs {need} to unmask"
                if active < need
                else f"{active} partners contributed; this job's sums were sized for at most {most}"
            )
            return Message(error=Error(code=SURVIVORS_ERROR_CODE, reason=reason), reply_to=msg)
    reply: Message = call_next(msg, ctxt)
    return reply


def _distributed_strategy(base: Any) -> Any:
    """A FedAvg whose aggregation applies one DP-SGD step with the secure sum (made lazily: Flower import)."""
    from flwr.server.strategy import FedAvg

    class DistributedStep(FedAvg):
        def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **kw: Any) -> None:
            super().__init__(**kw)
            self.model, self.optimizer = model, optimizer
            self.applied: list[int] = []
            self.discarded: list[int] = []
            self.sample_rate = float(base["sample_rate"])
            self.n_min = int(base["n_min"])
            self.shares = int(base["shares"])
            self.first = base["first"]  # a resumed job: Flower counts its rounds from 1 again
            self.applied += base["applied"]
            self.discarded += base["discarded"]
            self.on_round = base["on_round"]  # writes the round's checkpoint

        def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
            """Never more partners in a round than the quantisation and the clip events were sized for."""
            sample, least = super().num_fit_clients(num_available_clients)
            return min(sample, self.shares), least

        def aggregate_fit(
            self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]
        ) -> tuple[Parameters | None, dict[str, Scalar]]:
            server_round += self.first
            m = len(results)
            if m < self.n_min:  # never unmasked by honest partners; never applied either
                log.warning("round %s: %s contributions < %s; step discarded", server_round, m, self.n_min)
                self.discarded.append(server_round)
                self.on_round(server_round, self)
                return None, {}
            mean = parameters_to_ndarrays(results[0][1].parameters)  # SecAgg+ divides the sum by m
            summed = [torch.as_tensor(a * m) for a in mean]
            rows = round(float(summed[-1].reshape(-1)[0])) * dd.COUNT_UNIT
            dd.apply_step(self.model, self.optimizer, summed[:-1], dd.expected_batch(self.sample_rate, rows))
            self.applied.append(server_round)
            self.on_round(server_round, self)
            state = [v.detach().cpu().numpy() for v in self.model.state_dict().values()]
            return ndarrays_to_parameters(state), {"contributions": m}

    return DistributedStep


def run_distributed_job(
    grid: Grid,
    context: Context,
    job: Any,
    extra: dict[str, Any],
    spec: Any,
    n: int,
    threshold: int,
) -> dict[str, Any]:
    """Rounds of one distributed DP-SGD step each under SecAgg+; model.pt, summary.json and anchors.jsonl."""
    from fedcustomer.apps.secagg_rounds import (
        RoundClock,
        run_secagg_rounds,
        strategy_options,
        summary_head,
        write_model,
    )
    from fedcustomer.jobs.train_message import encode_train_config
    from fedcustomer.models.registry import build_model

    n_min = job.min_partners
    if n < max(n_min, threshold, 3):
        raise ConfigError(
            f"distributed DP needs at least {max(n_min, threshold, 3)} partners (the SecAgg+ threshold and "
            f"min-partners), {n} connected"
        )
    answers = (
        ask_partner_accountants(grid, job.round_timeout) if job.distributed_accountant == dd.AUTO else {}
    )
    accountant = dd.job_accountant(
        dd.resolve_job_accountant(job.distributed_accountant, list(answers.values()))
    )
    progress = dcp.latest(job.out, job.run_id) if extra.get("resume") else None  # the same rounds, paid once
    sigma = (
        float(progress.noise_multiplier)  # a distributed checkpoint always holds its job's sigma
        if progress is not None and progress.noise_multiplier is not None
        else dd.calibrate_sigma(
            job.sample_rate, job.rounds, job.epsilon, job.delta, job.max_noise_multiplier, accountant, n
        )
    )
    clip_range = float(extra.get("secagg-clip-range") or dd.CLIP_RANGE_UNITS * job.max_grad_norm)
    levels = dd.quantization_levels(n)
    first = progress.round if progress else 0
    step = dd.DistributedStep(sigma, job.sample_rate, job.max_grad_norm, n_min, shares=n)
    to_run = range(first + 1, job.rounds + 1)
    refusals = (
        ask_partner_refusals(grid, job.round_timeout, plan_config(job.dataset_name, job.run_id, step, to_run))
        if len(to_run)
        else {}
    )
    refused = [{"node": node, "reason": reason} for node, reason in sorted(refusals.items())]
    for item in refused:
        log.warning("partner node %s would refuse this job: %s", item["node"], item["reason"])

    def report() -> dict[str, Any]:
        return dd.privacy_report(
            step,
            rounds=job.rounds,
            delta=job.delta,
            partners=n,
            clip_range=clip_range,
            levels=levels,
            nodes=sorted(grid.get_node_ids()),
            accountant=accountant,
        )

    if len(to_run) and n - len(refusals) < n_min:  # no round could be applied: stop before any starts
        summary = {
            **summary_head(job, spec, model_written=False),
            "dp_mode": dd.MODE,
            "status": "stopped",
            "stop_reason": (
                f"{len(refusals)} of {n} partners would refuse this job's rounds, leaving fewer than the "
                f"{n_min} contributions a step needs (min-partners); nothing was trained or charged. "
                + "; ".join(f"node {r['node']}: {r['reason']}" for r in refused)
            ),
            "rounds_planned": job.rounds,
            "rounds_completed": len(progress.applied) if progress else 0,
            "rounds_discarded": list(progress.discarded) if progress else [],
            "round_wall_time_s": [],
            "refusals": refused,
            "distributed_dp": report(),
            "partners": [],
        }
        RunDir(job.out).write_summary(summary)
        return summary
    model = build_model(job.task, job.arch, spec.input_dim, seed=job.seed)
    if job.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=job.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=0.9)
    dcp.restore(progress, model, optimizer)
    names = list(model.state_dict().keys())
    base = {
        **encode_train_config(job, spec),
        "noise-multiplier": sigma,
        "min-survivors": n_min,
        "secagg-shares": n,
        "secagg-clip-range": clip_range,
    }
    clock = RoundClock()
    strategy = _distributed_strategy(
        clock.around(
            {
                "sample_rate": job.sample_rate,
                "n_min": n_min,
                "shares": n,
                **dcp.strategy_state(progress, job.out, job.run_id, sigma),
            }
        )
    )(model, optimizer, **strategy_options(job, model, base, n_min, first_round=first))
    _, final = run_secagg_rounds(
        grid,
        context,
        job,
        strategy,
        first_round=first,
        num_shares=n,
        threshold=threshold,
        clipping_range=clip_range,
        quantization_range=levels,
        modulus_range=dd.MODULUS,
    )
    # as a plain job: no model.pt when no round was applied (it would be the untrained start)
    files = write_model(job, spec, names, final) if strategy.applied else RunDir(job.out)
    summary = {
        **summary_head(job, spec, model_written=bool(strategy.applied)),
        "dp_mode": dd.MODE,
        "status": "completed" if strategy.applied else "stopped",
        "stop_reason": None if strategy.applied else "no round's secure sum was applied",
        "rounds_planned": job.rounds,
        "rounds_completed": len(strategy.applied),
        "rounds_discarded": strategy.discarded,
        "round_wall_time_s": clock.walls,
        "refusals": refused,
        "distributed_dp": report(),
        "accountant_choice": {
            "requested": job.distributed_accountant,
            "used": accountant.name,
            "partners": sorted(str(a) for a in answers.values()) if answers else None,
        },
        "partners": [],
        "note": "SecAgg+: per-partner metrics stay with each partner; each partner's ledger charges the "
        "guarantee its config trusts (see distributed_dp)",
    }
    files.write_summary(summary)
    return summary


def ask_partner_accountants(grid: Grid, timeout: float | None) -> dict[int, str | None]:
    """Each connected partner's accountant (``rdp``/``pld``; None where a node did not answer).

    A legacy get-properties message: SecAgg+'s mods pass it through, and the partner answers from
    its ``partner.toml`` (a setting, nothing about customers). A partner that fails to answer
    counts as RDP, the accountant that keeps every partner within the job's epsilon.
    """
    answers: dict[int, str | None] = {}
    for node, props in _ask_properties(grid, timeout, {}).items():
        value = None if props is None else props.get(ACCOUNTANT_PROPERTY)
        answers[node] = str(value) if value in ("rdp", "pld") else None
    silent = [n for n, a in answers.items() if a is None]
    if silent:
        log.warning(
            "%s partner(s) did not say which accountant they use; calibrating as for RDP", len(silent)
        )
    return answers


def ask_partner_refusals(grid: Grid, timeout: float | None, plan: dict[str, Scalar]) -> dict[int, str]:
    """The partners that would refuse the planned rounds, each with its own reason.

    Asked before round 1 with the job's public plan (:func:`plan_config`); each partner projects
    the charge on its own ledger and answers. A node that does not answer is not counted as a
    refusal: it may still take part, and its rounds are checked again when they come.
    """
    refusals: dict[int, str] = {}
    for node, props in _ask_properties(grid, timeout, plan).items():
        reason = None if props is None else props.get(REFUSAL_PROPERTY)
        if reason:
            refusals[node] = str(reason)
    return refusals


def _ask_properties(
    grid: Grid, timeout: float | None, config: dict[str, Scalar]
) -> dict[int, dict[str, Any] | None]:
    """One legacy get-properties exchange with every connected node (None where a node did not answer)."""
    from flwr.app import Message
    from flwr.common import GetPropertiesIns
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common.recorddict_compat import (
        getpropertiesins_to_recorddict,
        recorddict_to_getpropertiesres,
    )

    nodes = sorted(grid.get_node_ids())
    messages = [
        Message(
            content=getpropertiesins_to_recorddict(GetPropertiesIns(config=dict(config))),
            dst_node_id=node,
            message_type=MessageTypeLegacy.GET_PROPERTIES,
        )
        for node in nodes
    ]
    answers: dict[int, dict[str, Any] | None] = dict.fromkeys(nodes)
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if not reply.has_error():
            answers[reply.metadata.src_node_id] = dict(
                recorddict_to_getpropertiesres(reply.content).properties
            )
    return answers
