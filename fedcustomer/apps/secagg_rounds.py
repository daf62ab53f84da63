"""What the two SecAgg+ jobs (plain and distributed DP) share: the strategy's options, Flower's
SecAgg+ workflow over the job's rounds, the final model and the summary's common fields.

The rounds run on an :class:`~fedcustomer.server.anchor_grid.AnchorGrid`, so every partner reply
that carries an audit anchor (all of them, see :mod:`fedcustomer.clients.anchor_mod`) is recorded
in the run directory's ``anchors.jsonl``, as for a horizontal run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp import Grid

from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.server.anchor_grid import AnchorGrid

DEFAULT_MODULUS = 1 << 32  # Flower's own default modulus range


class RoundClock:
    """The wall time of each round a SecAgg+ job ran in this process (``round_wall_time_s`` in summary.json).

    Wraps the strategy's per-round callback (the round's checkpoint, which is part of the round): a
    round's time runs from the previous round's end, the first round's from :meth:`around`, so it
    includes the workflow's start. A resumed job lists only the rounds it ran itself.
    """

    def __init__(self) -> None:
        self.walls: list[float] = []
        self._last = time.perf_counter()

    def around(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` (a strategy's start state) with its ``on_round`` timed; the clock starts now."""
        inner: Callable[[int, Any], None] = state["on_round"]

        def on_round(rnd: int, strategy: Any) -> None:
            inner(rnd, strategy)
            now = time.perf_counter()
            self.walls.append(round(now - self._last, 3))
            self._last = now

        self._last = time.perf_counter()
        return {**state, "on_round": on_round}


def strategy_options(
    job: Any, model: torch.nn.Module, base: dict[str, Any], min_fit: int, *, first_round: int = 0
) -> dict[str, Any]:
    """FedAvg options of a SecAgg+ job: every partner each round, no evaluation, failures tolerated.

    ``first_round``: rounds a resumed job already completed; Flower counts from 1 again, the
    partners are told the job's own round numbers.
    """
    return {
        "fraction_fit": 1.0,
        "fraction_evaluate": 0.0,
        "min_fit_clients": min_fit,
        "min_evaluate_clients": 0,
        "min_available_clients": min_fit,
        "initial_parameters": ndarrays_to_parameters([v.numpy() for v in model.state_dict().values()]),
        "on_fit_config_fn": lambda rnd: {**base, "server-round": int(rnd) + first_round},
        "accept_failures": True,
    }


def run_secagg_rounds(
    grid: Grid,
    context: Context,
    job: Any,
    strategy: Any,
    *,
    num_shares: int,
    threshold: int,
    clipping_range: float,
    quantization_range: int,
    modulus_range: int = DEFAULT_MODULUS,
    first_round: int = 0,
) -> tuple[Any, list[np.ndarray]]:
    """The job's rounds under SecAgg+ with unit weights; returns Flower's legacy context and the final arrays."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=max(0, job.rounds - first_round), round_timeout=job.round_timeout),
        strategy=strategy,
    )
    fit = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=1.0,  # unit weights: the masked vectors are plain sums of updates
        clipping_range=clipping_range,
        quantization_range=quantization_range,
        modulus_range=modulus_range,
        timeout=job.round_timeout,
    )
    DefaultWorkflow(fit_workflow=fit)(AnchorGrid.around(grid, job.out, job.run_id), legacy)
    arrays = legacy.state.array_records[MAIN_PARAMS_RECORD]
    return legacy, parameters_to_ndarrays(compat.arrayrecord_to_parameters(arrays, keep_input=True))


def write_model(job: Any, spec: Any, names: Sequence[str], final: Sequence[np.ndarray]) -> RunDir:
    """``model.pt`` of the final arrays under the model's parameter names, and ``feature_spec.json`` (how
    its inputs are encoded: the coordinator's public spec); returns the run directory."""
    files = RunDir(job.out)
    files.write_model({k: torch.as_tensor(np.asarray(v)) for k, v in zip(names, final)})
    files.write_json("feature_spec.json", spec.to_dict())
    return files


def summary_head(job: Any, spec: Any, *, model_written: bool) -> dict[str, Any]:
    """The fields every SecAgg+ summary starts with (the plain summary's, where SecAgg+ has them)."""
    return {
        "schema_version": 1,
        "run_id": job.run_id,
        "task": job.task,
        "data": job.data,
        "dataset": job.dataset_name,
        "aggregation": "secagg+",
        "dp": job.dp,
        "budget_requested": {"epsilon": job.epsilon, "delta": job.delta} if job.dp else None,
        "model": {
            "file": "model.pt" if model_written else None,
            "task": job.task,
            "arch": job.arch,
            "input_dim": spec.input_dim,
            "feature_spec": "feature_spec.json" if model_written else None,
            **({"clv_target": job.clv_target().to_dict()} if job.task == "clv" else {}),
        },
    }
