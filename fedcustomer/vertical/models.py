"""Bottom and top models of split learning.

Each party's bottom model maps its own encoded columns to a short embedding; the
label owner's top model maps the concatenated embeddings to the task output (a
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
            raise ConfigError(f"bottom model sizes must be >= 1, got input {input_dim}, hidden {hidden}, embed {embed_dim}")
        self.input_dim, self.embed_dim = input_dim, embed_dim
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TopModel(nn.Module):
    """Concatenated embeddings -> one raw output per customer."""

    def __init__(self, input_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class ActiveModel(nn.Module):
    """The label owner's part: its bottom model plus the top model.

    ``forward(x, passive)`` takes the passive party's embeddings as a second input, so
    the gradient with respect to them (what goes back to the passive party) comes out
    of the same backward pass as the label owner's own parameter gradients. With no
    passive party (the label owner's features alone) ``passive`` is ``None``.
    """

    def __init__(self, input_dim: int, passive_embed_dim: int, *, embed_dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.passive_embed_dim = passive_embed_dim
        self.bottom = BottomMLP(input_dim, embed_dim, hidden)
        self.top = TopModel(embed_dim + passive_embed_dim, hidden)

    def forward(self, x: torch.Tensor, passive: torch.Tensor | None = None) -> torch.Tensor:
        own = self.bottom(x)
        if self.passive_embed_dim == 0:
            return self.top(own)
        if passive is None:
            raise ConfigError("the top model needs the passive party's embeddings for this batch")
        return self.top(torch.cat([own, passive], dim=1))
