"""Data, models and trainers shared by the DP-SGD engine's test modules."""

from __future__ import annotations

import torch
from torch import nn

from fedcustomer.models.repayment import RepaymentMLP
from fedcustomer.privacy.dp.dpsgd import DPTrainer

torch.set_num_threads(1)


CLIPPINGS = ("fast", "hooks", "ghost")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(n: int = 64, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    X = torch.randn(n, d, generator=g)
    y = (torch.rand(n, generator=g) < torch.sigmoid(X[:, 0] - X[:, 1])).float()
    return X, y


def mlp(d: int = 6, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return RepaymentMLP(d, **kw)


def trainer(model=None, X=None, y=None, loss_fn=None, **kw) -> DPTrainer:
    if X is None:
        X, y = data()
    args = dict(
        batch_size=16,
        lr=0.1,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        noise_generator=gen(1),
        sampling_generator=gen(2),
    )
    args.update(kw)
    return DPTrainer(
        model if model is not None else mlp(X.shape[1]), X, y, loss_fn or nn.BCEWithLogitsLoss(), **args
    )


def manual_clipped_mean_grads(model, X, y, loss_fn, bound: float) -> list[torch.Tensor]:
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(X)):
        model.zero_grad()
        loss_fn(model(X[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        factor = min(1.0, bound / (float(norm) + 1e-6))
        for t, g in zip(total, grads):
            t += factor * g
    model.zero_grad()
    return [t / len(X) for t in total]


def zero_gradient_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out * 0.0).mean()
