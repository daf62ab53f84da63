"""Repayment (default-risk) classifiers.

Both output one logit per customer. No BatchNorm: it mixes samples inside a
batch, which breaks DP-SGD's per-sample gradients and leaks across customers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Linear score; the calibrated, explainable choice risk teams expect."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class RepaymentMLP(nn.Module):
    """Small ReLU MLP (default 64-32) for non-linear risk interactions."""

    def __init__(self, input_dim: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
