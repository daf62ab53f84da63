"""The run directory: what a data scientist and a compliance officer read after a job.

``runs/<id>/config.json  summary.json  metrics.csv  model.pt  feature_spec.json
anchors.jsonl  plots/*.png  checkpoints/round-NNNN.pt``. ``summary.json`` is the stable,
machine-readable result; its schema is documented in the README.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from fedcustomer.data.features import FeatureSpec
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.metrics import PRIMARY_METRIC
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.server.calibration import calibration_summary, plot_reliability, without_sums
from fedcustomer.server.job import JobConfig
from fedcustomer.server.rounds import LoopResult, RoundReport

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1
ANCHORS_FILE = "anchors.jsonl"


class RunRecorder:
    """Writes a run directory as rounds complete, so a crash leaves usable files."""

    def __init__(self, out: Path, job: JobConfig, spec: FeatureSpec, *, resume: bool = False) -> None:
        self.out = Path(out)
        self.job = job
        self.spec = spec
        self.rounds: list[RoundReport] = []
        self.files = RunDir(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # A new job never overwrites another run's files (a resume continues its own).
        self.set_aside = None if resume else self.files.set_aside_previous(job.run_id)
        if self.set_aside is not None:
            log.warning("%s held another run; its files are now in %s", self.out, self.set_aside)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        self.files.write_config(job)
        self.files.write_json("feature_spec.json", spec.to_dict())

    # --- during the run ------------------------------------------------------------
    def record_round(self, report: RoundReport, arrays: ArrayRecord) -> None:
        self.rounds.append(report)
        self._write_metrics_csv()
        self._write_anchors()
        if report.applied:
            self.save_checkpoint(report.round, arrays)

    def save_checkpoint(self, rnd: int, arrays: ArrayRecord) -> Path:
        return self.files.save_torch(
            f"checkpoints/round-{rnd:04d}.pt",
            {
                "round": rnd,
                "run_id": self.job.run_id,
                "state_dict": arrays.to_torch_state_dict(),
                "rounds": [_round_dict(r) for r in self.rounds],
            },
        )

    @staticmethod
    def latest_checkpoint(out: Path) -> dict[str, Any] | None:
        paths = sorted((Path(out) / "checkpoints").glob("round-*.pt"))
        return load_weights_only(paths[-1], "run checkpoint") if paths else None

    # --- at the end ----------------------------------------------------------------
    def finish(self, result: LoopResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if result.rounds_completed:
            self.files.write_model(result.arrays.to_torch_state_dict())
        summary = self.summary(result, extra or {})
        self.files.write_summary(summary)
        self._write_metrics_csv()
        self._plots()
        if summary.get("calibration"):  # repayment: how far predicted probabilities are from observed rates
            plot_reliability(summary["calibration"], self.out / "plots" / "reliability.png")
        return summary

    def summary(self, result: LoopResult, extra: dict[str, Any]) -> dict[str, Any]:
        final = next((r.eval_metrics for r in reversed(result.rounds) if r.applied and r.eval_metrics), {})
        by_partner = {}
        for r in reversed(result.rounds):
            for p in r.partners:
                if p.eval_metrics and p.partner not in by_partner:
                    by_partner[p.partner] = _clean(p.eval_metrics)
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "run_id": self.job.run_id,
            "task": self.job.task,
            "data": self.job.data,
            "dataset": self.job.dataset_name,
            "strategy": self.job.strategy,
            "dp": self.job.dp,
            "budget_requested": {"epsilon": self.job.epsilon, "delta": self.job.delta}
            if self.job.dp
            else None,
            "status": result.status,
            "stop_reason": result.stop_reason,
            "rounds_planned": self.job.rounds,
            "rounds_completed": result.rounds_completed,
            "primary_metric": PRIMARY_METRIC[self.job.task],
            "metrics": _clean(final),
            "calibration": calibration_summary(final),
            "metrics_by_partner": by_partner,
            "partners": self.partner_summaries(result.rounds),
            "model": {
                "file": "model.pt" if result.rounds_completed else None,
                "task": self.job.task,
                "arch": self.job.arch,
                "input_dim": self.spec.input_dim,
                "feature_spec": "feature_spec.json",
                # clv: how outputs map back to spend (CLVTarget.decode); metrics are on that scale
                **({"clv_target": self.job.clv_target().to_dict()} if self.job.task == "clv" else {}),
            },
            "round_wall_time_s": [round(r.wall_time_s, 3) for r in result.rounds],
            "round_local_train_s": [
                round(sum(p.metrics.get("train-seconds", 0.0) for p in r.partners), 3) for r in result.rounds
            ],
            **extra,
        }

    def partner_summaries(self, rounds: list[RoundReport]) -> list[dict[str, Any]]:
        partners: dict[str, dict[str, Any]] = {}
        for r in rounds:
            for p in r.partners:
                s = partners.setdefault(
                    p.partner,
                    {
                        "name": p.partner,
                        "epsilon_target": None,
                        "epsilon_spent": 0.0 if self.job.dp else None,
                        "delta": None,
                        "rounds_trained": 0,
                        "rounds_refused": 0,
                        "rounds_failed": 0,
                        "refusals": [],
                        "failures": [],
                        "accounting": {"dp": self.job.dp},
                    },
                )
                if p.status == "trained":
                    s["rounds_trained"] += 1
                elif p.status == "refused":
                    s["rounds_refused"] += 1
                    s["refusals"].append({"round": r.round, "reason": p.reason})
                else:
                    s["rounds_failed"] += 1
                    s["failures"].append({"round": r.round, "reason": p.reason})
                if "epsilon-total" in p.metrics:
                    s["epsilon_spent"] = p.metrics["epsilon-total"]
                    s["epsilon_target"] = p.metrics.get("epsilon-target")
                    s["delta"] = p.metrics.get("delta")
                if p.accounting.get("accountant"):
                    s["accounting"] = p.accounting
        return sorted(partners.values(), key=lambda s: s["name"])

    # --- files ------------------------------------------------------------------
    def _write_anchors(self) -> None:
        """``anchors.jsonl``: each partner's audit anchor, one line per partner per round it answered."""
        lines = [p.anchor for r in self.rounds for p in r.partners if p.anchor is not None]
        if lines:
            self.files.write_jsonl(ANCHORS_FILE, lines)

    def _write_metrics_csv(self) -> None:
        rows = []
        for r in self.rounds:
            row: dict[str, Any] = {
                "round": r.round,
                "applied": int(r.applied),
                "partners_trained": r.trained,
                "partners_refused": sum(p.status == "refused" for p in r.partners),
                "partners_failed": sum(p.status == "failed" for p in r.partners),
                "wall_time_s": round(r.wall_time_s, 4),
            }
            row.update(
                {
                    f"eval_{k}": v
                    for k, v in without_sums(r.eval_metrics).items()
                    if k not in ("num-examples", "unit-weight")
                }
            )
            for p in r.partners:
                if "epsilon-total" in p.metrics:
                    row[f"epsilon_{p.partner}"] = p.metrics["epsilon-total"]
            rows.append(row)
        self.files.write_metrics_csv(rows)

    def _plots(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        plots = self.out / "plots"
        plots.mkdir(exist_ok=True)
        applied = [r for r in self.rounds if r.eval_metrics]
        metric = PRIMARY_METRIC[self.job.task]
        # The metric and the loss have different units and ranges: one labelled axis each.
        fig, ax = plt.subplots(figsize=(6, 4))
        loss_ax = ax.twinx()
        if applied:
            xs = [r.round for r in applied]
            m_line = ax.plot(
                xs,
                [r.eval_metrics.get(metric, float("nan")) for r in applied],
                marker="o",
                color="C0",
                label=f"federated {metric} (left)",
            )[0]
            l_line = loss_ax.plot(
                xs,
                [r.eval_metrics.get("loss", float("nan")) for r in applied],
                marker=".",
                linestyle="--",
                color="C1",
                label="held-out loss (right)",
            )[0]
            ax.legend(handles=[m_line, l_line], loc="best")
        ax.set_xlabel("round")
        ax.set_ylabel(f"held-out {metric}", color="C0")
        loss_ax.set_ylabel("held-out loss", color="C1")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{self.job.task}: held-out metrics per round")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / f"{metric}_vs_round.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        targets: dict[str, float] = {}
        series: dict[str, list[tuple[int, float]]] = {}
        for r in self.rounds:
            for p in r.partners:
                if "epsilon-total" in p.metrics:
                    series.setdefault(p.partner, []).append((r.round, p.metrics["epsilon-total"]))
                    targets[p.partner] = p.metrics.get("epsilon-target", float("nan"))
        for name, pts in sorted(series.items()):
            line = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)[0]
            ax.axhline(targets[name], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon spent (cumulative)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.set_title("privacy budget per partner (dotted: target)")
        if series:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plots / "epsilon_vs_round.png", dpi=110)
        plt.close(fig)


def _round_dict(r: RoundReport) -> dict[str, Any]:
    return {
        "round": r.round,
        "applied": r.applied,
        "train_metrics": r.train_metrics,
        "eval_metrics": r.eval_metrics,
        "wall_time_s": r.wall_time_s,
        "partners": [p.__dict__ for p in r.partners],
    }


def round_from_dict(d: dict[str, Any]) -> RoundReport:
    from fedcustomer.server.rounds import PartnerRound

    return RoundReport(
        d["round"],
        [PartnerRound(**p) for p in d["partners"]],
        d["train_metrics"],
        d["eval_metrics"],
        d["wall_time_s"],
        d["applied"],
    )


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in without_sums(metrics).items():
        if k in ("num-examples", "unit-weight"):
            continue
        out[k] = None if v != v else v  # NaN is not JSON
    return out
