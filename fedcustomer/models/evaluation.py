"""Score a model on encoded features, in the metrics of its task."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedcustomer.models.clv import to_spend
from fedcustomer.models.metrics import classification_metrics, regression_metrics
from fedcustomer.models.registry import loss_for


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray, task: str) -> np.ndarray:
    """Default probability (repayment) or predicted spend in currency (clv)."""
    model.eval()
    out = model(torch.as_tensor(X, dtype=torch.float32))
    model.train()
    if task == "repayment":
        return torch.sigmoid(out).numpy()
    return to_spend(out).numpy()


@torch.no_grad()
def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    """Task metrics plus the training loss on this split; ``y`` is the encoded label."""
    if len(X) == 0:
        return {"loss": float("nan")}
    model.eval()
    raw = model(torch.as_tensor(X, dtype=torch.float32))
    model.train()
    loss = float(loss_for(task)(raw, torch.as_tensor(y, dtype=torch.float32)))
    if task == "repayment":
        metrics = classification_metrics(y, torch.sigmoid(raw).numpy())
    else:
        metrics = regression_metrics(np.expm1(y), to_spend(raw).numpy())
    return {"loss": loss, **metrics}
