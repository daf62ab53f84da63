"""Customer-lifetime-value regressor.

Future spend is heavy-tailed and zero for many customers, so the model predicts
``log1p(spend)``; :func:`to_spend` maps predictions back to currency for metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedcustomer.models.repayment import RepaymentMLP


class CLVRegressor(RepaymentMLP):
    """MLP predicting log1p(future spend); same body as the repayment MLP."""

    def __init__(self, input_dim: int, hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__(input_dim, hidden)


def to_spend(log_prediction: torch.Tensor) -> torch.Tensor:
    """Invert the log1p target, never predicting negative spend."""
    return torch.expm1(log_prediction.clamp(min=0.0))
