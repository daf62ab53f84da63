"""Bottom and top models of split learning.

Each party's bottom model maps its own encoded columns to a short embedding. The label
owner holds two models on top: the label head (passive embeddings -> task output,
trained on protected labels; its gradients are what the passive party learns from) and
the joint model's top (its own embedding plus the head's score -> the task output: a
default logit, or log1p future spend). Small on purpose: the parties train them with
per-sample clipping, whose noise grows with the parameter count.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcustomer.errors import ConfigError


class BottomMLP(nn.Module):
    """One party's columns -> ``embed_dim`` numbers (one hidden ReLU layer)."""

    def __init__(self, input_dim: int, embed_dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        if input_dim < 1 or embed_dim < 1 or hidden < 1:
            raise ConfigError(
                f"bottom model sizes must be >= 1, got input {input_dim}, hidden {hidden}, embed {embed_dim}"
            )
        self.input_dim, self.embed_dim = input_dim, embed_dim
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TopModel(nn.Module):
    """The label owner's combiner: its own (rectified) embedding and the passive score -> one output."""

    def __init__(self, input_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class LabelHead(nn.Module):
    """The label owner's model of the passive embeddings alone, trained on protected labels.

    It is what turns labels into the gradients the passive party learns from; kept apart
    from the joint model so those gradients depend on nothing else the label owner holds.
    """

    def __init__(self, input_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e).squeeze(-1)


class ActiveModel(nn.Module):
    """The label owner's joint model: its bottom model plus the top model.

    ``forward(x, passive)`` takes what the label owner derives from the passive party
    for these customers (the label head's score, ``passive_dim`` numbers) as a second
    input; with no passive party (the label owner's features alone) ``passive`` is
    ``None``. The score is a signed quantity, so only the label owner's own embedding is
    rectified before the top model.
    """

    def __init__(self, input_dim: int, passive_dim: int, *, embed_dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.passive_dim = passive_dim
        self.bottom = BottomMLP(input_dim, embed_dim, hidden)
        self.top = TopModel(embed_dim + passive_dim, hidden)

    def forward(self, x: torch.Tensor, passive: torch.Tensor | None = None) -> torch.Tensor:
        own = torch.relu(self.bottom(x))
        if self.passive_dim == 0:
            return self.top(own)
        if passive is None:
            raise ConfigError("the top model needs the passive party's score for this batch")
        return self.top(torch.cat([own, passive], dim=1))
