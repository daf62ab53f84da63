"""A vertical job's run directory: summary.json, metrics.csv and plots, from the drives' results.

What each party spent is read from its own replies (the epsilon its ledger reports each round,
its accounting at the end); the coordinator adds nothing it did not receive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.metrics import PRIMARY_METRIC
from fedcustomer.vertical.checkpoint import VerticalRound
from fedcustomer.vertical.data import PartyPlan
from fedcustomer.vertical.job import VerticalJob

SUMMARY_SCHEMA_VERSION = 1


@dataclass
class DriveResult:
    status: str  # "completed" | "stopped" | "failed"
    rounds: list[VerticalRound]
    stop_reason: str | None = None
    accounting: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)

    @property
    def rounds_completed(self) -> int:
        return sum(r.status == "trained" for r in self.rounds)

    @property
    def final_metrics(self) -> dict[str, float]:
        return next((r.metrics for r in reversed(self.rounds) if r.status == "trained"), {})


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


def write_outputs(
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
        # the latest total of either (their charges interleave when the comparison model runs beside)
        own = row["epsilon_spent"]
        row["epsilon_spent_all_releases"] = (
            max(base_eps[-1], own if own is not None else base_eps[-1])
            if row["name"] == active.name and base_eps
            else own
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


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v != v else v) for k, v in metrics.items()}
