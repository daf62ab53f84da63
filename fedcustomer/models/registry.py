"""One place that maps (task, architecture) to a model and its loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.models.clv import CLVRegressor, CLVTarget
from fedcustomer.models.names import ARCHITECTURES, TASKS
from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP

__all__ = ["ARCHITECTURES", "TASKS", "build_model", "loss_for"]


def build_model(task: str, arch: str, input_dim: int, seed: int | None = None) -> nn.Module:
    """Build the model; ``seed`` makes the initial weights reproducible."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if arch not in ARCHITECTURES[task]:
        raise ConfigError(
            f"unknown architecture {arch!r} for task {task!r}; choose one of {', '.join(ARCHITECTURES[task])}"
        )
    if input_dim < 1:
        raise ConfigError(f"a model needs at least one input feature, got {input_dim}")
    if seed is not None:
        torch.manual_seed(seed)
    if task == "repayment":
        return RepaymentMLP(input_dim) if arch == "mlp" else LogisticRegression(input_dim)
    return CLVRegressor(input_dim) if arch == "mlp" else CLVRegressor(input_dim, hidden=())


def loss_for(
    task: str, target: CLVTarget | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-task training loss on the model's raw output and the spec's label.

    CLV with a :class:`CLVTarget` learns its bounded, scaled target; without one, the
    unscaled log1p spend under Huber(1) (models trained before targets existed).
    """
    if task == "repayment":
        return nn.BCEWithLogitsLoss()
    if task == "clv":
        return target.loss_fn() if target is not None else nn.HuberLoss(delta=1.0)
    raise ConfigError(f"unknown task {task!r}")
