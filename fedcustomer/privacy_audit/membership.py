"""Membership inference on a released model: a loss threshold and an offline LiRA.

Why this module: the canary audit measures the mechanism at its worst; these attacks
measure what an outsider holding the released model learns about ordinary customers.
Members are training rows, non-members held-out rows, in equal numbers.

* Loss threshold (Yeom et al., 2018): score = minus the row's loss under the model.
* Offline LiRA (Carlini et al., S&P 2022): a few shadow models trained, with the job's
  recipe, on rows that are neither evaluated members nor evaluated non-members; a row's
  score is how far the target model's confidence on it lies above the shadow models'
  confidence on it, in units of their spread (one fixed spread for all rows, as the
  paper advises with few shadow models).

Both report AUC and TPR at 0.1% and 1% FPR (:func:`fedcustomer.privacy_audit.bounds.attack_metrics`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from fedcustomer.errors import ConfigError
from fedcustomer.models.registry import loss_for
from fedcustomer.privacy_audit.bounds import attack_metrics, roc

DEFAULT_SHADOWS = 4
MAX_EVAL_ROWS = 5000  # per side; more adds time, not resolution at 1% FPR

#: Trains one shadow model on (X, y) with the job's recipe and returns it.
ShadowTrainer = Callable[[np.ndarray, np.ndarray, int], nn.Module]


@dataclass
class MembershipData:
    """Rows the model trained on and held-out rows it never saw."""

    X_members: np.ndarray
    y_members: np.ndarray
    X_nonmembers: np.ndarray
    y_nonmembers: np.ndarray


def per_row_loss(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Each row's training loss under ``model`` (the job's own loss, unreduced)."""
    loss = copy.copy(loss_for(task))
    if not isinstance(loss, _Loss):
        raise ConfigError(f"task {task!r} has no per-row loss")
    loss.reduction = "none"
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(X, dtype=torch.float32)).reshape(-1)
        values = loss(out, torch.as_tensor(y, dtype=torch.float32).reshape(-1))
    return np.asarray(values.numpy(), dtype=float)


def confidence(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """LiRA's statistic: the logit of the true label (classification), else minus the loss."""
    if task != "repayment":
        return -per_row_loss(model, X, y, task)
    model.eval()
    with torch.no_grad():
        logit = model(torch.as_tensor(X, dtype=torch.float32)).reshape(-1).numpy().astype(float)
    return np.asarray(np.where(np.asarray(y).reshape(-1) > 0.5, logit, -logit), dtype=float)


def _balanced(data: MembershipData, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal counts: returns chosen member rows, chosen non-member rows, and the unchosen non-members."""
    n = min(len(data.X_members), len(data.X_nonmembers) // 2, MAX_EVAL_ROWS)
    if n < 10:
        raise ConfigError(
            f"membership inference needs at least 10 members and 20 held-out rows; got "
            f"{len(data.X_members)} and {len(data.X_nonmembers)}"
        )
    members = rng.permutation(len(data.X_members))
    nonmembers = rng.permutation(len(data.X_nonmembers))
    return members[:n], nonmembers[:n], nonmembers[n:]


def membership_inference(
    model: nn.Module,
    task: str,
    data: MembershipData,
    shadow_trainer: ShadowTrainer | None = None,
    *,
    shadows: int = DEFAULT_SHADOWS,
    seed: int = 0,
    keep_roc: bool = True,
) -> dict[str, Any]:
    """Both attacks against ``model``; LiRA only when a ``shadow_trainer`` is given."""
    rng = np.random.default_rng(seed)
    mi, ni, spare = _balanced(data, rng)
    Xm, ym = data.X_members[mi], data.y_members[mi]
    Xn, yn = data.X_nonmembers[ni], data.y_nonmembers[ni]
    out: dict[str, Any] = {"members": len(mi), "nonmembers": len(ni)}
    loss_m, loss_n = per_row_loss(model, Xm, ym, task), per_row_loss(model, Xn, yn, task)
    out["loss_threshold"] = _attack(-loss_m, -loss_n, keep_roc)
    if shadow_trainer is None or shadows < 1:
        return out
    # Shadow rows: the members not evaluated and the held-out rows not evaluated.
    rest_m = np.setdiff1d(np.arange(len(data.X_members)), mi)
    pool_X = np.concatenate([data.X_members[rest_m], data.X_nonmembers[spare]])
    pool_y = np.concatenate([data.y_members[rest_m], data.y_nonmembers[spare]])
    if len(pool_X) < 20:
        raise ConfigError("too few rows outside the evaluated ones to train shadow models")
    conf_m, conf_n = [], []
    for k in range(shadows):
        pick = rng.random(len(pool_X)) < 0.5
        shadow = shadow_trainer(pool_X[pick], pool_y[pick], seed + 100 + k)
        conf_m.append(confidence(shadow, Xm, ym, task))
        conf_n.append(confidence(shadow, Xn, yn, task))
    sm, sn = np.stack(conf_m), np.stack(conf_n)
    mu_m, mu_n = sm.mean(0), sn.mean(0)
    spread = float(np.concatenate([sm - mu_m, sn - mu_n], axis=1).std()) or 1.0
    target_m, target_n = confidence(model, Xm, ym, task), confidence(model, Xn, yn, task)
    out["lira_offline"] = _attack((target_m - mu_m) / spread, (target_n - mu_n) / spread, keep_roc)
    out["lira_offline"]["shadow_models"] = shadows
    return out


def _attack(scores_m: np.ndarray, scores_n: np.ndarray, keep_roc: bool) -> dict[str, Any]:
    result: dict[str, Any] = attack_metrics(scores_m, scores_n)
    if keep_roc:
        fpr, tpr = roc(scores_m, scores_n)
        # Every point up to 5% FPR (where the low-FPR rates are read), 200 spread over the rest.
        low = np.nonzero(fpr <= 0.05)[0][:400]
        idx = np.unique(np.r_[low, np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int)])
        result["roc"] = {"fpr": fpr[idx].round(6).tolist(), "tpr": tpr[idx].round(6).tolist()}
    return result
