"""Customer-lifetime-value regressor and the target it learns.

Future spend is heavy-tailed and zero for many customers. Under DP-SGD a few large
spenders dominate the clipped gradients and the noise swamps the rest, so the model
learns a bounded, rescaled target instead: spend is clipped to a *declared public* cap
(never fitted on the data), optionally ``log1p``-transformed, and divided by the
transformed cap so the target lies in [0, 1]. :class:`CLVTarget` does the transform and
its inverse; predictions are mapped back to currency for the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from fedcustomer.errors import ConfigError
from fedcustomer.models.names import (
    CLV_LOSSES,
    CLV_TRANSFORMS,
    DEFAULT_CLV_HUBER_DELTA,
    DEFAULT_CLV_LOSS,
    DEFAULT_CLV_SPEND_CAP,
    DEFAULT_CLV_TRANSFORM,
)
from fedcustomer.models.repayment import RepaymentMLP


class CLVRegressor(RepaymentMLP):
    """MLP predicting the scaled CLV target; same body as the repayment MLP."""

    def __init__(self, input_dim: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__(input_dim, hidden)


@dataclass(frozen=True)
class CLVTarget:
    """How future spend becomes the training target, and back.

    ``encode`` takes the spec's encoded label (``log1p(spend)``) and returns the target in
    [0, 1]; ``decode`` takes the model's raw output and returns spend in currency, in
    [0, spend_cap]. The cap bounds every label by a public constant, so the per-example
    loss (and with it the gradient before clipping) cannot be driven by one customer.
    """

    transform: str = DEFAULT_CLV_TRANSFORM
    spend_cap: float = DEFAULT_CLV_SPEND_CAP
    loss: str = DEFAULT_CLV_LOSS
    huber_delta: float = DEFAULT_CLV_HUBER_DELTA

    def __post_init__(self) -> None:
        if self.transform not in CLV_TRANSFORMS:
            raise ConfigError(
                f"--clv-transform must be one of {', '.join(CLV_TRANSFORMS)}, got {self.transform!r}"
            )
        if self.loss not in CLV_LOSSES:
            raise ConfigError(f"--clv-loss must be one of {', '.join(CLV_LOSSES)}, got {self.loss!r}")
        for name, value in (("clv-spend-cap", self.spend_cap), ("clv-huber-delta", self.huber_delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"--{name} must be a finite number, got {value!r}")
            if value <= 0:
                raise ConfigError(f"--{name} must be > 0, got {value}")

    @property
    def _scale(self) -> float:
        return math.log1p(self.spend_cap) if self.transform == "log1p" else self.spend_cap

    def encode(self, log_spend: torch.Tensor) -> torch.Tensor:
        """Spec label (log1p spend) -> training target in [0, 1]."""
        spend = torch.expm1(log_spend.clamp(min=0.0)).clamp(max=self.spend_cap)
        t = torch.log1p(spend) if self.transform == "log1p" else spend
        return (t / self._scale).to(log_spend.dtype)

    def decode(self, output: torch.Tensor) -> torch.Tensor:
        """Model output -> predicted spend in currency, in [0, spend_cap]."""
        t = output.clamp(0.0, 1.0) * self._scale
        return torch.expm1(t) if self.transform == "log1p" else t

    def loss_fn(self) -> CLVLoss:
        """The training loss on (output, the spec's log1p label): the label is encoded inside."""
        if self.loss == "huber":
            inner: _Loss = torch.nn.HuberLoss(delta=self.huber_delta)
        else:
            inner = torch.nn.MSELoss() if self.loss == "mse" else torch.nn.L1Loss()
        return CLVLoss(self, inner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "transform": self.transform,
            "spend_cap": self.spend_cap,
            "loss": self.loss,
            "huber_delta": self.huber_delta,
        }


class CLVLoss(torch.nn.Module):
    """A torch loss over the spec's label, so trainers and caches keep ``log1p(spend)`` as y.

    ``reduction`` is the inner loss's (DP-SGD needs the batch mean; ghost clipping switches it).
    """

    def __init__(self, target: CLVTarget, inner: _Loss) -> None:
        super().__init__()
        self.target = target
        self.inner = inner

    @property
    def reduction(self) -> str:
        return str(self.inner.reduction)

    @reduction.setter
    def reduction(self, value: str) -> None:
        self.inner.reduction = value

    def forward(self, output: torch.Tensor, log_spend: torch.Tensor) -> torch.Tensor:
        return self.inner(output, self.target.encode(log_spend))  # type: ignore[no-any-return]


def to_spend(log_prediction: torch.Tensor) -> torch.Tensor:
    """Invert an unscaled log1p output, never predicting negative spend (vertical models)."""
    return torch.expm1(log_prediction.clamp(min=0.0))


def spend_of(log_spend: np.ndarray) -> np.ndarray:
    """The spec's encoded label back to currency (metrics are always on the original scale)."""
    return np.expm1(np.asarray(log_spend, dtype=np.float64))
