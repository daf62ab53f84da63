"""A bank and a retailer on the Deployment Engine: what the deployed ServerApp runs for two parties.

Modes (``mode`` in the run config):

``psi``
    One private set intersection between the two parties' nodes. Each party keeps its own
    alignment (its pseudonyms of the shared customers, in the agreed order) in its home.
``psi`` with ``reveal = "sum"``
    A private intersection-sum instead (:mod:`fedcustomer.psi.sum_protocol`): the label owner
    holds the value column, the other party the predicate; only a DP rate is released.
``vertical``
    The PSI, each party keeping it as its vertical alignment, then the split-learning rounds
    and the label owner's own comparison model, over the same Flower messages the in-process
    runner sends (:func:`fedcustomer.vertical.runner.run_vertical_on_grid`): one protocol.

The coordinator holds no partner data. It keeps, in the run directory, the parties' audit
anchors sent with every reply (``anchors.jsonl``, kept across a resume), the summary and a
checkpoint per run id (``checkpoint/<run-id>/``: the PSI size and the trained rounds), so
a restarted coordinator resumes the same job where it stopped; the parties charge each
round once, so nothing is paid twice. A party that drops ends the job with status
``failed``: no party writes a final model part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.psi.chunked import DEFAULT_CHUNK_SIZE
from fedcustomer.psi.intersection_sum import SumParams
from fedcustomer.psi.protocol import REVEAL_IDS
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.state import check_session_id
from fedcustomer.psi.sum_protocol import DEFAULT_SUM_CHUNK_SIZE, REVEAL_SUM, run_sum_on_grid
from fedcustomer.server.anchor_grid import AnchorGrid
from fedcustomer.server.deployment import wait_for_partners
from fedcustomer.vertical.align import keep_alignment
from fedcustomer.vertical.data import PartyPlan, plan_parties
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import psi_for_alignment
from fedcustomer.vertical.runner import partner_hellos, run_vertical_on_grid

TWO_PARTY_MODES = ("vertical", "psi")
# Run-config keys of a two-party job besides the VerticalJob fields.
DEPLOY_KEYS = (
    "deployment",
    "mode",
    "reveal",
    "count-epsilon",
    "psi-chunk-size",
    "sum-value",
    "sum-where",
    "sum-epsilon",
    "value-max",
    "resume",
    "wait-for-partners",
    "feature-spec",
    "secagg",
)


def split_config(raw: dict[str, Any]) -> tuple[VerticalJob, dict[str, Any]]:
    """The job and the deployment keys of a two-party run config."""
    raw = dict(raw)
    extra = {k: raw.pop(k) for k in DEPLOY_KEYS if k in raw}
    mode = str(extra.get("mode", ""))
    if mode not in TWO_PARTY_MODES:
        raise ConfigError(f"two-party mode must be one of {', '.join(TWO_PARTY_MODES)}, got {mode!r}")
    return VerticalJob.from_dict(raw), extra


def _chunk_size(extra: dict[str, Any]) -> int:
    return int(extra.get("psi-chunk-size", DEFAULT_CHUNK_SIZE))


PROGRESS_FILE = "psi-progress.txt"  # the PSI's latest progress line, for `coordinator run` to show


def progress_to(out: Path) -> Callable[[str], None]:
    """PSI chunks relayed per side (counts only): in the ServerApp's log and in ``out/psi-progress.txt``."""

    def progress(line: str) -> None:
        from flwr.common.logger import log as flwr_log

        flwr_log(logging.INFO, line)
        atomic_write_text(out / PROGRESS_FILE, line + "\n")

    return progress


def session_of(job: VerticalJob) -> str:
    """The PSI session id of a job: bound to its run id (a session id is never used twice)."""
    return check_session_id(f"psi-{job.run_id}"[:64])


def run_two_party(grid: Grid, raw: dict[str, Any]) -> dict[str, Any]:
    """What the deployed ServerApp does for ``mode`` psi or vertical; returns the summary written."""
    job, extra = split_config(raw)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / PROGRESS_FILE).unlink(missing_ok=True)  # a new run: no stale progress line
    grid = AnchorGrid.around(grid, out, job.run_id)  # every reply's audit anchor: anchors.jsonl
    wait = float(extra.get("wait-for-partners", 120.0))
    wait_for_partners(grid, 2, 2, wait)
    nodes, declared = partner_hellos(grid, job.round_timeout)
    plans = plan_parties(job, declared)  # --data own: what each party declared of its own data
    active, passive = plans
    absent = [p.name for p in (active, passive) if p.name not in nodes]
    if absent:
        raise FederationError(
            f"partner(s) {', '.join(absent)} are not connected (connected: {', '.join(sorted(nodes)) or 'none'})"
        )
    if extra["mode"] == "psi" and extra.get("reveal") == REVEAL_SUM:
        return _sum_only(grid, job, nodes, out, extra, plans)
    if extra["mode"] == "psi":
        eps = extra.get("count-epsilon")
        return _psi_only(
            grid,
            job,
            plans,
            nodes,
            out,
            str(extra.get("reveal") or REVEAL_IDS),
            None if eps is None else float(eps),
            _chunk_size(extra),
        )
    ckdir = out / "checkpoint" / job.run_id
    psi_state = ckdir / "psi.json"
    alignment = None
    if bool(extra.get("resume")) and psi_state.exists():
        size = int(json.loads(psi_state.read_text(encoding="utf-8"))["psi_size"])
    else:
        pending = psi_for_alignment(
            grid,
            nodes,
            active,
            passive,
            seed=job.seed,
            timeout=job.round_timeout,
            session_id=session_of(job),
            run_id=job.run_id,
            chunk_size=_chunk_size(extra),
            progress=progress_to(out),
        )
        size = pending.size

        def checkpoint_psi() -> None:  # only once both parties kept the order: a resume starts after it
            ckdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(psi_state, json.dumps({"psi_size": size}) + "\n")

        pending.on_kept = checkpoint_psi
        if pending.ride:  # kept with the parties' setup, one exchange fewer
            alignment = pending
        else:  # a node that did not answer the riding check: the order kept on its own, as before
            size = keep_alignment(grid, pending, job.round_timeout)
    return run_vertical_on_grid(
        grid,
        job,
        baseline_grid=grid if job.baseline else None,
        psi_size=size,
        checkpoints=ckdir,
        nodes=nodes,  # asked above: no second hello
        plans=plans,
        alignment=alignment,
    )


def _psi_only(
    grid: Grid,
    job: VerticalJob,
    plans: tuple[PartyPlan, PartyPlan],
    nodes: dict[str, int],
    out: Path,
    reveal: str,
    count_epsilon: float | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    active, passive = plans
    summary: dict[str, Any] = {"mode": "psi", "reveal": reveal, "run_id": job.run_id, "status": "failed"}
    try:
        view = run_psi_on_grid(
            grid,
            nodes[active.name],
            nodes[passive.name],
            active.dataset,
            passive.dataset,
            name_a=active.name,
            name_b=passive.name,
            session_id=session_of(job),
            timeout=job.round_timeout,
            run_id=job.run_id,
            reveal=reveal,
            count_epsilon=count_epsilon,
            chunk_size=chunk_size,
            progress=progress_to(out),
        )
    except FederationError as exc:
        summary["stop_reason"] = str(exc)
        RunDir(out).write_summary(summary)
        raise
    summary.update(
        {
            "status": "completed",
            "stop_reason": None,
            "session_id": view.session_id,
            "parties": {active.name: view.set_size_a, passive.name: view.set_size_b},
            "intersection_size": view.intersection_size,
            "intersection_size_dp": None
            if count_epsilon is None
            else {"epsilon": count_epsilon, "charged_to": [active.name, passive.name], "noisy": True},
            "alignment_digest": view.digest or None,
            "bytes_relayed": view.bytes_relayed,
            "chunks": {active.name: view.chunks_a, passive.name: view.chunks_b, "size": view.chunk_size},
            "kept_by": {
                p.name: f"state/psi/{view.session_id}.alignment.json (its own pseudonyms)"
                for p in (active, passive)
            }
            if reveal == REVEAL_IDS
            else {},
        }
    )
    RunDir(out).write_summary(summary)
    return summary


def _sum_only(
    grid: Grid,
    job: VerticalJob,
    nodes: dict[str, int],
    out: Path,
    extra: dict[str, Any],
    plans: tuple[PartyPlan, PartyPlan],
) -> dict[str, Any]:
    """The label owner's value column summed over the shared customers the other party's predicate selects."""
    active, passive = plans
    summary: dict[str, Any] = {"mode": "psi", "reveal": REVEAL_SUM, "run_id": job.run_id, "status": "failed"}
    params = SumParams(epsilon=extra.get("sum-epsilon", 1.0), value_max=extra.get("value-max", 1.0))
    try:
        view = run_sum_on_grid(
            grid,
            nodes[active.name],
            nodes[passive.name],
            active.dataset,
            passive.dataset,
            value=str(extra.get("sum-value")),
            where=str(extra.get("sum-where")),
            name_a=active.name,
            name_b=passive.name,
            params=params,
            session_id=check_session_id(f"psum-{job.run_id}"[:64]),
            run_id=job.run_id,
            timeout=job.round_timeout,
            chunk_size=int(extra.get("psi-chunk-size", DEFAULT_SUM_CHUNK_SIZE)),
            progress=progress_to(out),
        )
    except FederationError as exc:
        summary["stop_reason"] = str(exc)
        RunDir(out).write_summary(summary)
        raise
    summary |= {
        "status": "completed",
        "stop_reason": None,
        "session_id": view.session_id,
        "parties": {active.name: view.set_size_a, passive.name: view.set_size_b},
        "value": extra.get("sum-value"),
        "where": extra.get("sum-where"),
        "noisy_count": view.noisy_count,
        "noisy_sum": view.noisy_sum,
        "rate": view.rate,
        "epsilon": {"total": params.epsilon, "count": params.count_epsilon, "sum": params.sum_epsilon},
        "charged_to": [active.name, passive.name],
        "bytes_relayed": view.bytes_relayed,
        "chunks": {active.name: view.chunks_a, passive.name: view.chunks_b, "size": view.chunk_size},
    }
    RunDir(out).write_summary(summary)
    return summary
