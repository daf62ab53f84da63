"""SecAgg+ mode: the coordinator learns only the sum of the partners' DP-trained updates.

Flower 1.42 offers SecAgg+ in its legacy workflow API (``SecAggPlusWorkflow`` on the
server, ``secaggplus_mod`` on the client), so this mode has its own app pair. The
partner's side still goes through :meth:`PartnerNode.train_round`: the local DP
charge, the refusal rule and the update cache are the same as in plain mode.

Differences from plain mode, by design of the protocol: every partner's update has
unit weight (the mean of updates; dataset sizes are not released), weights are
clipped to ``[-clip, clip]`` and quantised before masking, a refusing partner
appears to the coordinator as a drop-out, and per-partner metrics do not leave
the partner (its audit log and ledger still hold them).

With ``dp_mode = "distributed"`` each round is one DP-SGD step over the partners' union
(privacy/dp/distributed.py, docs/PRIVACY.md): partners send their clipped gradient sum
plus a share of the noise, and the coordinator steps the model with the secure sum
(:mod:`fedcustomer.apps.secagg_distributed`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.clients.context import resolve_home
from fedcustomer.errors import BudgetExhausted, ConfigError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.partner.home import PartnerHome

log = logging.getLogger(__name__)

DEFAULT_CLIP_RANGE = 8.0
DEFAULT_QUANTIZATION = 1 << 22


class SecAggPartner(NumPyClient):
    """A partner in SecAgg+ rounds: DP-train through PartnerNode, hand the weights to the mod to mask."""

    def __init__(self, context: Context, homes: list[str] | None = None) -> None:
        self.context = context
        self.homes = homes

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        from fedcustomer.clients.node import PartnerNode
        from fedcustomer.clients.round_audit import record_round, update_size
        from fedcustomer.jobs.train_message import TrainInstructions
        from fedcustomer.models.registry import build_model

        torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
        node = PartnerNode(resolve_home(self.context, self.homes))
        ins = TrainInstructions.from_config(dict(config))
        names = list(build_model(ins.task, ins.arch, ins.spec.input_dim).state_dict().keys())
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in zip(names, parameters)}
        outcome = node.train_round(state, ins)
        record_round(node.home, outcome, ins, update_size(outcome.state_dict), transport="secagg+")
        if outcome.refused:  # the protocol treats it as a drop-out; the reason stays with the partner
            raise BudgetExhausted(outcome.refused_reason or "refused")
        assert outcome.state_dict is not None
        if ins.dp and ins.dp_mode == "distributed":
            from fedcustomer.apps.secagg_distributed import contribution_arrays, remember_min_survivors

            remember_min_survivors(self.context, ins.min_survivors, ins.secagg_shares)
            return contribution_arrays(outcome), 1, {}
        return [outcome.state_dict[k].detach().cpu().numpy() for k in names], 1, {}

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """The accountant this partner charges with (``rdp`` or ``pld``): a distributed job calibrates to it.

        Asked with a distributed job's plan, the partner also says whether it would refuse the job's
        rounds, and why (its budget; nothing about customers), before any round starts.
        """
        from fedcustomer.apps.secagg_distributed import (
            ACCOUNTANT_PROPERTY,
            REFUSAL_PROPERTY,
            plan_from_config,
        )

        home = resolve_home(self.context, self.homes)
        answer: dict[str, Any] = {ACCOUNTANT_PROPERTY: str(home.config().accountant or "rdp")}
        planned = plan_from_config(config)
        if planned is not None:
            from fedcustomer.clients.node import PartnerNode

            dataset, plan, run_id, rounds = planned
            refusal = PartnerNode(home).distributed_job_refusal(dataset, plan, run_id, rounds)
            answer[REFUSAL_PROPERTY] = refusal or ""
        return answer

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        raise NotImplementedError("SecAgg+ mode does not run federated evaluation")


def make_secagg_client_app(homes: list[str] | None = None) -> ClientApp:
    """The SecAgg+ ClientApp; ``homes`` maps partition ids to partner homes (in-process grids)."""
    from fedcustomer.apps.secagg_distributed import min_survivors_mod

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    # outermost first: every reply carries the partner's audit anchor; a partner refuses to
    # unmask a sum with fewer than n_min contributions
    return ClientApp(
        client_fn=lambda context: SecAggPartner(context, homes).to_client(),
        mods=[anchor_mod(home_of), min_survivors_mod, secaggplus_mod],
    )


client_app = make_secagg_client_app()

server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    if context.run_config.get("deployment"):  # each of a round's four SecAgg+ exchanges: not on 3-s polls
        from fedcustomer.apps.prompt_grid import PromptGrid, reply_bell

        grid = PromptGrid(grid, bell=reply_bell())
    run_secagg_job(grid, context)


def run_secagg_job(grid: Grid, context: Context) -> dict[str, Any]:
    """Run the job's rounds with SecAgg+ fit; write model.pt, summary.json and anchors.jsonl to the run directory."""
    from fedcustomer.apps.secagg_rounds import (
        RoundClock,
        run_secagg_rounds,
        strategy_options,
        summary_head,
        write_model,
    )
    from fedcustomer.jobs.train_message import encode_train_config
    from fedcustomer.models.registry import build_model
    from fedcustomer.server.deployment import (
        default_spec_ref,
        resolve_spec,
        split_run_config,
        wait_for_partners,
    )

    job, extra = split_run_config(dict(context.run_config))
    spec = resolve_spec(str(extra.get("feature-spec") or default_spec_ref(job)))
    n = wait_for_partners(grid, job.partners, job.min_partners, float(extra.get("wait-for-partners", 120.0)))
    if job.dp and job.dp_mode == "distributed":
        from fedcustomer.apps.secagg_distributed import run_distributed_job

        return run_distributed_job(grid, context, job, extra, spec, n, secagg_threshold(n, job.min_partners))
    from fedcustomer.server import secagg_checkpoint as ckpt

    model = build_model(job.task, job.arch, spec.input_dim, seed=job.seed)
    progress = ckpt.latest(job.out, job.run_id, ckpt.LOCAL) if extra.get("resume") else None
    ckpt.restore(progress, model)  # the global model the interrupted round was trained on
    names = list(model.state_dict().keys())
    first = progress.round if progress else 0
    clock = RoundClock()
    strategy = _checkpointed_fedavg()(
        model,
        clock.around(ckpt.strategy_state(progress, job.out, job.run_id, None, ckpt.LOCAL)),
        **strategy_options(job, model, encode_train_config(job, spec), job.min_partners, first_round=first),
    )
    _, final = run_secagg_rounds(
        grid,
        context,
        job,
        strategy,
        first_round=first,
        num_shares=n,
        threshold=secagg_threshold(n, job.min_partners),
        clipping_range=float(extra.get("secagg-clip-range", DEFAULT_CLIP_RANGE)),
        quantization_range=int(extra.get("secagg-quantization-range", DEFAULT_QUANTIZATION)),
    )
    # as a plain job: no model.pt when no round was applied (it would be the untrained start)
    files = write_model(job, spec, names, final) if strategy.applied else RunDir(job.out)
    summary = {
        **summary_head(job, spec, model_written=bool(strategy.applied)),
        "status": "completed" if strategy.applied else "stopped",
        "stop_reason": None if strategy.applied else "no round's secure sum was applied",
        "rounds_planned": job.rounds,
        "rounds_completed": len(strategy.applied),
        "rounds_discarded": strategy.discarded,
        "round_wall_time_s": clock.walls,
        "partners": [],
        "note": "SecAgg+: per-partner metrics and epsilon stay with each partner (ledger, audit log)",
    }
    files.write_summary(summary)
    return summary


def _checkpointed_fedavg() -> Any:
    """A FedAvg that keeps the global model and checkpoints every round (made lazily: Flower import).

    Flower counts a resumed job's rounds from 1 again; ``first`` maps them back to the job's own.
    A round whose secure sum could not be unmasked keeps the previous model and is recorded as
    discarded, so a resume after it neither repeats nor skips a round.
    """
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    class CheckpointedFedAvg(FedAvg):
        def __init__(self, model: torch.nn.Module, state: dict[str, Any], **kw: Any) -> None:
            super().__init__(**kw)
            self.model = model
            self.first = int(state["first"])
            self.applied: list[int] = list(state["applied"])
            self.discarded: list[int] = list(state["discarded"])
            self.on_round = state["on_round"]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            rnd = server_round + self.first
            if parameters is None:
                self.discarded.append(rnd)
            else:
                arrays = parameters_to_ndarrays(parameters)
                names = list(self.model.state_dict().keys())
                self.model.load_state_dict({k: torch.as_tensor(a) for k, a in zip(names, arrays)})
                self.applied.append(rnd)
            self.on_round(rnd, self)
            return parameters, metrics

    return CheckpointedFedAvg


def secagg_threshold(num_partners: int, min_partners: int) -> int:
    """Shares needed to unmask: at least 2, below the share count (Flower's rule), ``min_partners`` if possible."""
    if num_partners < 3:
        raise ConfigError(f"SecAgg+ needs at least 3 partners (got {num_partners}); run without --secagg")
    return max(2, min(min_partners, num_partners - 1))
