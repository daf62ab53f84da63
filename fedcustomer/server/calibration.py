"""A repayment job's calibration, pooled over partners: ECE and the reliability diagram.

A DP model can rank customers well (AUC) and still give probabilities that are too high or too low
(noise and clipping pull the logits), which a user scoring customers needs to know. Each partner
sends, with its held-out metrics, per-bin sums of predictions and outcomes divided by its row count
(:func:`fedcustomer.models.metrics.reliability_sums`); the strategy's weighted average (weights: the
partners' coarse row counts) pools them, and this module turns the pooled sums into the ECE and
the diagram. Like every held-out metric they are **not covered** by epsilon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcustomer.models.metrics import (
    CALIBRATION_BINS,
    RELIABILITY_PREFIX,
    expected_calibration_error,
    reliability_bins,
)


def has_reliability(metrics: dict[str, float]) -> bool:
    return f"{RELIABILITY_PREFIX}n-0" in metrics


def without_sums(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as reported: the reliability sums folded into ``ece`` (pooled), then left out."""
    if not has_reliability(metrics):
        return metrics
    out = {k: v for k, v in metrics.items() if not k.startswith(RELIABILITY_PREFIX)}
    out["ece"] = expected_calibration_error(metrics)
    return out


def calibration_summary(metrics: dict[str, float]) -> dict[str, Any] | None:
    """``summary.json``'s ``calibration``: Brier, ECE and the reliability bins (None without sums)."""
    if not has_reliability(metrics):
        return None
    ece = expected_calibration_error(metrics)
    brier = metrics.get("brier")
    return {
        "brier": None if brier is None or brier != brier else brier,
        "ece": None if ece != ece else ece,
        "bins": reliability_bins(metrics),
        "binning": f"{CALIBRATION_BINS} equal-width bins of the predicted probability of default",
        "pooled": "over the partners' held-out rows, weighted by their row counts rounded to 100",
    }


# Mean prediction this far (absolute) from the observed rate: the scores cannot be read as rates.
MISCALIBRATED_GAP = 0.1


def calibration_warning(calibration: dict[str, Any] | None) -> str | None:
    """A plain warning when the pooled mean prediction is far from the observed default rate.

    A DP model with few rounds often ranks customers well (its AUC) while every score sits near
    zero; the ECE column says so only to those who know to read it (found by a new-user trial).
    """
    if not calibration:
        return None
    bins = [b for b in calibration.get("bins", []) if b.get("mean_predicted") is not None]
    share = sum(b["share"] for b in bins)
    if share <= 0:
        return None
    predicted = sum(b["share"] * b["mean_predicted"] for b in bins) / share
    observed = sum(b["share"] * b["observed_rate"] for b in bins) / share
    if abs(predicted - observed) < MISCALIBRATED_GAP:
        return None
    side = "too low" if predicted < observed else "too high"
    return (
        f"the model's probabilities are {side}: mean predicted {predicted:.2f} against an observed rate of "
        f"{observed:.2f} on the held-out rows. Rank customers with it (AUC), but do not read its scores as "
        "rates (plots/reliability.png); more rounds or a larger budget usually help"
    )


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    """The reliability diagram: observed default rate against mean prediction per bin, with shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [b for b in calibration["bins"] if b["mean_predicted"] is not None]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(
        [b["mean_predicted"] for b in points],
        [b["observed_rate"] for b in points],
        marker="o",
        label="federated model",
    )
    for b in points:
        ax.annotate(f"{b['share']:.0%}", (b["mean_predicted"], b["observed_rate"]), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability of default (per bin)")
    ax.set_ylabel("observed default rate")
    ece = calibration.get("ece")
    brier = calibration.get("brier")
    title = "reliability (held-out rows)"
    if ece is not None:
        title += f": ECE {ece:.3f}"
    if brier is not None:
        title += f", Brier {brier:.3f}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
