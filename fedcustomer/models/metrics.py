"""Evaluation metrics in the vocabulary risk and marketing teams use."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def classification_metrics(
    y_true: np.ndarray, p_default: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """AUC, KS, Brier, accuracy and expected calibration error (ECE, 10 equal-width bins) for predicted
    default probabilities: a DP model can rank well and still be poorly calibrated."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(p_default, dtype=float), 0.0, 1.0)
    if y.size == 0:
        nan = float("nan")
        return {"auc": nan, "ks": nan, "brier": nan, "accuracy": nan, "ece": nan}
    both = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, p)) if both else float("nan")
    ks = float(stats.ks_2samp(p[y == 1], p[y == 0]).statistic) if both else float("nan")
    return {
        "auc": auc,
        "ks": ks,
        "brier": float(np.mean((p - y) ** 2)),
        "accuracy": float(np.mean((p >= threshold) == (y == 1))),
        "ece": expected_calibration_error(reliability_sums(y, p)),
    }


# Reliability bins: equal-width on the predicted probability, [0, 0.1), ..., [0.9, 1].
CALIBRATION_BINS = 10
RELIABILITY_PREFIX = "rel-"


def reliability_sums(y_true: np.ndarray, p_default: np.ndarray) -> dict[str, float]:
    """Per bin, the share of rows, and the sums of predicted probabilities and of outcomes divided by
    the row count: averaged over partners with their row counts as weights, they pool exactly."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(p_default, dtype=float), 0.0, 1.0)
    n = max(len(y), 1)
    which = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    out: dict[str, float] = {}
    for k in range(CALIBRATION_BINS):
        inside = which == k
        out[f"{RELIABILITY_PREFIX}n-{k}"] = float(inside.sum() / n)
        out[f"{RELIABILITY_PREFIX}p-{k}"] = float(p[inside].sum() / n)
        out[f"{RELIABILITY_PREFIX}y-{k}"] = float(y[inside].sum() / n)
    return out


def expected_calibration_error(sums: dict[str, float]) -> float:
    """ECE from :func:`reliability_sums`: sum over bins of share x |observed rate - mean prediction|."""
    if not sums or sum(sums.get(f"{RELIABILITY_PREFIX}n-{k}", 0.0) for k in range(CALIBRATION_BINS)) <= 0:
        return float("nan")
    return float(
        sum(
            abs(sums[f"{RELIABILITY_PREFIX}y-{k}"] - sums[f"{RELIABILITY_PREFIX}p-{k}"])
            for k in range(CALIBRATION_BINS)
        )
    )


def reliability_bins(sums: dict[str, float]) -> list[dict[str, float | None]]:
    """The reliability diagram's points: per bin its range, share of rows, mean prediction, observed rate."""
    bins: list[dict[str, float | None]] = []
    for k in range(CALIBRATION_BINS):
        share = sums.get(f"{RELIABILITY_PREFIX}n-{k}", 0.0)
        bins.append(
            {
                "lo": k / CALIBRATION_BINS,
                "hi": (k + 1) / CALIBRATION_BINS,
                "share": share,
                "mean_predicted": sums[f"{RELIABILITY_PREFIX}p-{k}"] / share if share > 0 else None,
                "observed_rate": sums[f"{RELIABILITY_PREFIX}y-{k}"] / share if share > 0 else None,
            }
        )
    return bins


def regression_metrics(spend_true: np.ndarray, spend_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, Spearman and top-decile value capture, in currency units."""
    t = np.asarray(spend_true, dtype=float)
    p = np.asarray(spend_pred, dtype=float)
    if t.size == 0:
        return {
            "mae": float("nan"),
            "rmse": float("nan"),
            "spearman": float("nan"),
            "top_decile_capture": float("nan"),
        }
    spearman = float(stats.spearmanr(t, p).statistic) if np.std(t) > 0 and np.std(p) > 0 else float("nan")
    return {
        "mae": float(np.mean(np.abs(t - p))),
        "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
        "spearman": spearman,
        "top_decile_capture": top_decile_capture(t, p),
    }


def top_decile_capture(spend_true: np.ndarray, spend_pred: np.ndarray) -> float:
    """Share of total true value held by the 10% of customers the model ranks highest."""
    t = np.asarray(spend_true, dtype=float)
    total = t.sum()
    if t.size == 0 or total <= 0:
        return float("nan")
    k = max(1, int(np.ceil(0.1 * t.size)))
    top = np.argsort(-np.asarray(spend_pred, dtype=float), kind="stable")[:k]
    return float(t[top].sum() / total)


PRIMARY_METRIC = {"repayment": "auc", "clv": "spearman"}
