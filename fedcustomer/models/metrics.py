"""Evaluation metrics in the vocabulary risk and marketing teams use."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def classification_metrics(
    y_true: np.ndarray, p_default: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """AUC, KS, Brier and accuracy for predicted default probabilities."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(p_default, dtype=float), 0.0, 1.0)
    if y.size == 0:
        return {"auc": float("nan"), "ks": float("nan"), "brier": float("nan"), "accuracy": float("nan")}
    both = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, p)) if both else float("nan")
    ks = float(stats.ks_2samp(p[y == 1], p[y == 0]).statistic) if both else float("nan")
    return {
        "auc": auc,
        "ks": ks,
        "brier": float(np.mean((p - y) ** 2)),
        "accuracy": float(np.mean((p >= threshold) == (y == 1))),
    }


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
