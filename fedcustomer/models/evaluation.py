"""Score a model on encoded features, in the metrics of its task."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcustomer.models.clv import CLVTarget, spend_of, to_spend
from fedcustomer.models.metrics import classification_metrics, regression_metrics, reliability_sums
from fedcustomer.models.registry import loss_for


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray, task: str, target: CLVTarget | None = None) -> np.ndarray:
    """Default probability (repayment) or predicted spend in currency (clv, decoded by ``target``)."""
    model.eval()
    out = model(torch.as_tensor(X, dtype=torch.float32))
    model.train()
    if task == "repayment":
        return torch.sigmoid(out).numpy()
    return _spend(out, target).numpy()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    task: str,
    target: CLVTarget | None = None,
    *,
    reliability: bool = False,
) -> dict[str, float]:
    """Task metrics plus the training loss on this split; ``y`` is the encoded label.

    CLV metrics are always on the original scale (currency, uncapped true spend). ``reliability``
    adds a repayment model's reliability sums (:func:`reliability_sums`), which a coordinator pools
    across partners into one reliability diagram and ECE.
    """
    if len(X) == 0:
        return {"loss": float("nan")}
    model.eval()
    raw = model(torch.as_tensor(X, dtype=torch.float32))
    model.train()
    loss = float(loss_for(task, target)(raw, torch.as_tensor(y, dtype=torch.float32)))
    if task == "repayment":
        p_default = torch.sigmoid(raw).numpy()
        metrics = classification_metrics(y, p_default)
        if reliability:
            metrics.update(reliability_sums(y, p_default))
    else:
        metrics = regression_metrics(spend_of(y), _spend(raw, target).numpy())
    return {"loss": loss, **metrics}


def _spend(raw: torch.Tensor, target: CLVTarget | None) -> torch.Tensor:
    return target.decode(raw) if target is not None else to_spend(raw)
