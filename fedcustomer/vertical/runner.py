"""The coordinator's side of split learning, and a one-machine runner with run outputs.

:func:`run_vertical_on_grid` drives the protocol of :mod:`fedcustomer.vertical.protocol`
(the chain of exchanges: :mod:`fedcustomer.vertical.rounds`) over any Flower ``Grid`` (in-process, simulation engine, SuperLink) and writes the run
directory: ``config.json summary.json metrics.csv feature_specs.json anchors.jsonl plots/*.png``
(``anchors.jsonl``: the parties' audit anchors, sent with every reply, see
:mod:`fedcustomer.server.anchor_grid`). The
coordinator never holds a model: each party keeps its final part at home
(``state/vertical/run-<id>-<role>-final.pt``), written only when the job ends cleanly,
so a failed job leaves no part that could be mistaken for a final model.

:func:`run_vertical_local` sets up both parties' homes (governed stores, a messaged PSI)
and runs the job on the in-process grid, plus the label owner's features-only baseline.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from fedcustomer.errors import FederationError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.metrics import PRIMARY_METRIC
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.anchor_grid import AnchorGrid, AnchorLog
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.checkpoint import RoundCheckpoint
from fedcustomer.vertical.data import (
    PartyPlan,
    party_frames,
    plan_parties,
    provision_party,
)
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import align_by_psi, party_app, pin_each_other
from fedcustomer.vertical.rounds import DriveResult, drive

__all__ = ["DriveResult", "drive", "prepare_vertical", "run_vertical_local", "run_vertical_on_grid"]

log = logging.getLogger(__name__)
SUMMARY_SCHEMA_VERSION = 1


def run_vertical_on_grid(
    grid: Grid,
    job: VerticalJob,
    *,
    baseline_grid: Grid | None = None,
    psi_size: int | None = None,
    checkpoints: Path | None = None,
    nodes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run the vertical job (and, given ``baseline_grid``, the label owner alone) and write the run directory.

    The baseline is another release about the label owner's customers: ``baseline_grid``
    must reach the label owner's real home, so it is charged to the real ledger; the joint
    job leaves ``job.baseline_epsilon`` for it.

    Raises FederationError when a party drops out, after writing a summary with status
    ``failed`` (no party keeps a final model part for a failed job). ``checkpoints`` (a
    directory) keeps the trained rounds of both drives, for a restarted coordinator. ``nodes``:
    the partners' node ids on ``grid`` if the caller has just asked them (see :func:`drive`).
    """
    active, passive = plan_parties(job)
    out = Path(job.out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    files = RunDir(out)
    files.write_config(job)
    specs = {
        p.name: {"role": p.role, "dataset": p.dataset, "feature_spec": p.spec.to_dict()}
        for p in (active, passive)
    }
    files.write_json("feature_specs.json", specs)
    reserve = job.baseline_epsilon if baseline_grid is not None and job.dp else 0.0
    baseline_nodes = nodes if baseline_grid is grid else None
    grid = AnchorGrid.around(grid, out, job.run_id)  # the parties' audit anchors: anchors.jsonl
    if baseline_grid is not None:
        baseline_grid = grid.sharing_log(baseline_grid)
    try:
        result = drive(
            grid,
            job,
            active,
            passive,
            reserve_epsilon=reserve,
            checkpoint=_checkpoint(checkpoints, "joint"),
            nodes=nodes,
        )
    except FederationError as exc:
        done = _checkpoint(checkpoints, "joint")  # what was trained (and paid) before the stop
        failed = DriveResult("failed", done.load() if done is not None else [], str(exc))
        _write_outputs(out, job, failed, None, active, passive, psi_size)
        raise
    baseline = None
    if baseline_grid is not None:
        base_job = VerticalJob.from_dict(job.to_dict() | {"run_id": job.run_id + "-baseline"})
        try:
            baseline = drive(
                baseline_grid,
                base_job,
                active,
                None,
                peer_of_active=passive.name,
                checkpoint=_checkpoint(checkpoints, "baseline"),
                nodes=baseline_nodes,
                sizes=result.sizes,  # the label owner's own counts (same home, dataset, peer): no second setup
            )
        except FederationError as exc:
            baseline = DriveResult("failed", [], str(exc))
    return _write_outputs(out, job, result, baseline, active, passive, psi_size)


def _checkpoint(directory: Path | None, name: str) -> RoundCheckpoint | None:
    return None if directory is None else RoundCheckpoint(directory / f"{name}-rounds.json")


def _partners(result: DriveResult, active: PartyPlan, passive: PartyPlan | None) -> list[dict[str, Any]]:
    rows = []
    for plan in [p for p in (active, passive) if p is not None]:
        eps = [r.epsilon[plan.name] for r in result.rounds if plan.name in r.epsilon]
        target = next(
            (r.epsilon_target[plan.name] for r in result.rounds if plan.name in r.epsilon_target), None
        )
        acc = result.accounting.get(plan.name, {})
        rows.append(
            {
                "name": plan.name,
                "role": plan.role,
                "dataset": plan.dataset,
                "epsilon_spent": eps[-1] if eps else (0.0 if acc.get("dp") else None),
                "epsilon_target": target,
                "delta": acc.get("delta"),
                "rounds_trained": result.rounds_completed,
                "rounds_refused": sum(plan.name in r.refusals for r in result.rounds),
                "refusals": [
                    {"round": r.round, "reason": r.refusals[plan.name]}
                    for r in result.rounds
                    if plan.name in r.refusals
                ],
                "accounting": acc,
            }
        )
    return rows


def _write_outputs(
    out: Path,
    job: VerticalJob,
    result: DriveResult,
    baseline: DriveResult | None,
    active: PartyPlan,
    passive: PartyPlan,
    psi_size: int | None,
) -> dict[str, Any]:
    metric = PRIMARY_METRIC[job.task]
    final = result.final_metrics if result.status != "failed" else {}
    base_final = baseline.final_metrics if baseline is not None and baseline.status != "failed" else {}
    has_model = result.status != "failed" and result.rounds_completed > 0
    partners = _partners(result, active, passive)
    base_eps = [
        r.epsilon[active.name] for r in (baseline.rounds if baseline else []) if active.name in r.epsilon
    ]
    for row in partners:  # what the party's ledger holds for this job: joint model and comparison model
        row["epsilon_spent_all_releases"] = (
            base_eps[-1] if row["name"] == active.name and base_eps else row["epsilon_spent"]
        )
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "mode": "vertical",
        "run_id": job.run_id,
        "task": job.task,
        "data": job.data,
        "dp": job.dp,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "rounds_planned": job.rounds,
        "rounds_completed": result.rounds_completed,
        "psi_size": psi_size,
        "aligned_train": int(result.sizes.get("train", 0)) or None,
        "aligned_test": int(result.sizes.get("test", 0)) or None,
        "primary_metric": metric,
        "metrics": _clean(final),
        "partners": partners,
        "privacy": {
            "label_dp": job.dp and job.label_dp,
            "label_epsilon": job.label_epsilon if job.dp and job.label_dp else None,
            "embedding_noise": {
                "noise_multiplier": job.embedding_noise,
                "clip": job.embedding_clip,
                "accounted": False,
            },
        },
        "baseline": None
        if baseline is None
        else {
            "name": f"{active.name}-only",
            "status": baseline.status,
            "stop_reason": baseline.stop_reason,
            "charged_to": f"{active.name}'s ledger (the same budget as the joint model)" if job.dp else None,
            "epsilon_reserved": job.baseline_epsilon if job.dp else None,
            "metrics": _clean(base_final),
            "partners": _partners(baseline, active, None),
        },
        "comparison": {
            f"{active.name}_only_{metric}": base_final.get(metric),
            f"vertical_{metric}": final.get(metric),
        },
        "model": {
            "file": None,
            "final": has_model,
            "held_by": "parties",
            "parts": {p.name: f"state/vertical/run-{job.run_id}-{p.role}-final.pt" for p in (active, passive)}
            if has_model
            else {},
        },
        "round_wall_time_s": [round(r.wall_time_s, 3) for r in result.rounds],
    }
    RunDir(out).write_summary(summary)
    _metrics_csv(out, result, baseline)
    _plots(out, job, result, baseline)
    return summary


def _metrics_csv(out: Path, result: DriveResult, baseline: DriveResult | None) -> None:
    base = {r.round: r for r in (baseline.rounds if baseline else [])}
    rows = []
    for r in result.rounds:
        row: dict[str, Any] = {
            "round": r.round,
            "status": r.status,
            "steps": r.steps,
            "wall_time_s": round(r.wall_time_s, 4),
        }
        row.update({f"eval_{k}": v for k, v in r.metrics.items()})
        row.update({f"epsilon_{k}": v for k, v in r.epsilon.items()})
        if r.round in base:
            row.update({f"baseline_eval_{k}": v for k, v in base[r.round].metrics.items()})
        rows.append(row)
    RunDir(out).write_metrics_csv(rows)


def _plots(out: Path, job: VerticalJob, result: DriveResult, baseline: DriveResult | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metric = PRIMARY_METRIC[job.task]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in (("vertical", result), ("label owner only", baseline)):
        pts = [
            (r.round, r.metrics.get(metric, math.nan))
            for r in (res.rounds if res else [])
            if r.status == "trained"
        ]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(f"held-out {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"vertical {job.task}: held-out {metric} per round")
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / f"{metric}_vs_round.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted({n for r in result.rounds for n in r.epsilon})
    for name in names:
        pts = [(r.round, r.epsilon[name]) for r in result.rounds if name in r.epsilon]
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)[0]
        target = next((r.epsilon_target[name] for r in result.rounds if name in r.epsilon_target), None)
        if target is not None:
            ax.axhline(target, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("privacy budget per party (dotted: target)")
    if names:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plots" / "epsilon_vs_round.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------- one machine
@dataclass
class VerticalSetup:
    """Provisioned homes of a local run."""

    active: PartnerHome
    passive: PartnerHome
    baseline: PartnerHome | None
    psi_size: int


def prepare_vertical(job: VerticalJob, anchors: AnchorLog | None = None) -> VerticalSetup:
    """Give each party a home with its rows in its governed store, run the PSI, keep each side's alignment.

    ``anchors`` records the parties' audit anchors sent with their PSI replies.
    """
    active, passive = plan_parties(job)
    frames = party_frames(job)
    root = Path(job.homes) if job.homes else Path(job.out) / "partners"
    budget = DatasetBudget(job.epsilon, job.delta)
    homes = {p.name: provision_party(root / p.name, p, frames[p.name], budget) for p in (active, passive)}
    pin_each_other(homes[active.name], homes[passive.name])
    size = align_by_psi(
        homes[active.name], active, homes[passive.name], passive, seed=job.seed, anchors=anchors
    )
    # The comparison model trains on the label owner's real home and is paid from its real
    # ledger (the joint job leaves job.baseline_epsilon for it): no copied budget.
    baseline = homes[active.name] if job.baseline else None
    return VerticalSetup(homes[active.name], homes[passive.name], baseline, size)


def run_vertical_local(job: VerticalJob) -> dict[str, Any]:
    """Set up both parties and run the job through the in-process Flower grid."""
    torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
    anchors = AnchorLog(job.out, job.run_id)
    setup = prepare_vertical(job, anchors)
    homes = [str(setup.active.root), str(setup.passive.root)]
    grid = AnchorGrid(LocalGrid(party_app(homes), num_nodes=2), anchors)
    baseline_grid = None
    if setup.baseline is not None:
        baseline_grid = grid.sharing_log(LocalGrid(party_app([str(setup.baseline.root)]), num_nodes=1))
    return run_vertical_on_grid(grid, job, baseline_grid=baseline_grid, psi_size=setup.psi_size)


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v != v else v) for k, v in metrics.items()}
