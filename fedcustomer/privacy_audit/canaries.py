"""One-run canary audit of a horizontal DP-SGD job (Steinke, Nasr and Jagielski, 2023).

Why this module: the job's epsilon comes from the ledger's accounting of
``(noise_multiplier, sample_rate, steps)``. Whether the trainer really delivers that --
Poisson sampling at rate q, noise of std sigma x C on every coordinate of every step, the
optimizer's scaling -- is what this replay measures.

The replay re-runs the job as its partners ran it: the same model, optimizer, learning
rate, batch size, local epochs, rounds and each partner's own noise multiplier from its
ledger, on each partner's own training rows, with FedAvg between rounds. The model gets
one extra block of ``m`` weights that the data never touches. Canary ``i`` lives at one
partner and owns weight ``i`` of that block; it is included with probability 1/2, and an
included canary is sampled like any record (probability q at every step) and then adds
``+/- C`` (the clipping bound: the most a clipped record may add) to its weight in the
clipped per-sample sum, just before the trainer adds its noise. These are the
"gradient-space Dirac canaries" of the paper.

Scores: white-box, from the updates each partner released (the sum over rounds of the
update of its canary's weight); black-box, from the released model alone (the final
global weight). The top and bottom scores are guessed in and out, the rest abstained,
and :func:`fedcustomer.privacy_audit.bounds.best_guesses` turns the right guesses into an
epsilon lower bound. Canaries enter after clipping, so this audit checks sampling, noise
and accounting; a trainer that skipped clipping of real records would not show here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer
from fedcustomer.privacy_audit.bounds import CONFIDENCE, best_guesses

DEFAULT_CANARIES = 1000


class CanaryModel(nn.Module):
    """The job's model plus a block of ``m`` canary weights that no record's forward pass uses."""

    def __init__(self, inner: nn.Module, m: int) -> None:
        super().__init__()
        self.inner = inner
        self.canary = nn.Linear(1, m, bias=False)
        with torch.no_grad():
            self.canary.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out


class CanaryTrainer(DPTrainer):
    """The project's DP-SGD trainer, with this partner's included canaries added to each clipped sum."""

    def __init__(
        self,
        model: CanaryModel,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Any,
        *,
        canary_index: np.ndarray,
        canary_sign: np.ndarray,
        canary_rng: torch.Generator,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("clipping", "fast") != "fast":
            raise ConfigError("the canary replay needs clipping='fast'")
        super().__init__(model, X, y, loss_fn, **kwargs)
        self._canary_weight = model.canary.weight
        self._canary_index = torch.as_tensor(canary_index, dtype=torch.long)
        self._canary_value = torch.as_tensor(canary_sign, dtype=torch.float32) * float(self.max_grad_norm)
        self._canary_rng = canary_rng

    def _inject(self) -> None:
        if len(self._canary_index) == 0:
            return
        drawn = torch.rand(len(self._canary_index), generator=self._canary_rng) < self.sample_rate
        summed = self._canary_weight.summed_grad.view(-1)  # type: ignore[attr-defined]  # set by the clipper
        summed.index_add_(0, self._canary_index[drawn], self._canary_value[drawn].to(summed.dtype))

    def _backward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = super()._backward(xb, yb)
        self._inject()
        return loss

    def _empty_batch(self) -> None:
        super()._empty_batch()
        self._inject()


@dataclass
class PartnerData:
    """One partner's training rows and the noise multiplier its ledger charged."""

    name: str
    X: np.ndarray
    y: np.ndarray
    noise_multiplier: float | None  # None: the partner trained without DP
    rounds: int
    epsilon: float = 0.0


@dataclass
class Recipe:
    """How the job trained (from its config.json)."""

    task: str
    arch: str
    lr: float
    batch_size: int
    local_epochs: int
    max_grad_norm: float
    optimizer: str = "sgd"
    proximal_mu: float = 0.0
    seed: int = 0


@dataclass
class ReplayResult:
    """What a replay released: the final model, each partner's canary-weight updates, the coins."""

    model: nn.Module
    included: np.ndarray
    owner: np.ndarray
    white_box_scores: np.ndarray
    black_box_scores: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _fedavg(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {k: sum(s[k] * (w / total) for s, w in zip(states, weights)) for k in states[0]}  # type: ignore[misc]


def replay(
    recipe: Recipe,
    partners: Sequence[PartnerData],
    *,
    canaries: int = DEFAULT_CANARIES,
    seed: int = 0,
    trainer_cls: type[CanaryTrainer] = CanaryTrainer,
    private: bool = True,
) -> ReplayResult:
    """Re-run the job with ``canaries`` Dirac canaries spread over the partners (or none, non-privately)."""
    active = [p for p in partners if p.rounds > 0]
    if not active:
        raise ConfigError("no partner trained in this job; there is nothing to audit")
    if private and any(p.noise_multiplier is None for p in active):
        raise ConfigError("a partner trained without DP noise; the canary audit needs a DP-SGD job")
    m = int(canaries) if private else 0
    if private and m < 2:
        raise ConfigError(f"--canaries must be at least 2, got {canaries}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    owner = np.arange(m) % len(active)
    sign = np.where(rng.random(m) < 0.5, 1.0, -1.0)
    torch_rng = torch.Generator().manual_seed(seed + 1)
    input_dim = active[0].X.shape[1]
    inner = build_model(recipe.task, recipe.arch, input_dim, seed=recipe.seed)
    model = CanaryModel(inner, max(m, 1))
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial = global_state["canary.weight"].view(-1).clone()
    released = np.zeros(max(m, 1))
    loss_fn = loss_for(recipe.task)
    for rnd in range(max(p.rounds for p in active)):
        states, weights = [], []
        for pi, p in enumerate(active):
            if rnd >= p.rounds:
                continue
            local = CanaryModel(build_model(recipe.task, recipe.arch, input_dim), max(m, 1))
            local.load_state_dict(global_state)
            X, y = torch.as_tensor(p.X), torch.as_tensor(p.y)
            batch = min(recipe.batch_size, len(X))
            common: dict[str, Any] = {
                "batch_size": batch,
                "lr": recipe.lr,
                "optimizer": recipe.optimizer,
                "proximal_mu": recipe.proximal_mu,
            }
            trainer: Any
            if private:
                mine = np.nonzero(included & (owner == pi))[0]
                trainer = trainer_cls(
                    local,
                    X,
                    y,
                    loss_fn,
                    canary_index=mine,
                    canary_sign=sign[mine],
                    canary_rng=torch_rng,
                    noise_multiplier=float(p.noise_multiplier or 0.0),
                    max_grad_norm=recipe.max_grad_norm,
                    noise_generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
                    sampling_generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
                    **common,
                )
            else:
                trainer = PlainTrainer(local, X, y, loss_fn, seed=int(rng.integers(2**31)), **common)
            for _ in range(recipe.local_epochs):
                trainer.train_epoch()
            state = {k: v.detach().clone() for k, v in local.state_dict().items()}
            if private:  # this partner's released update, on its own canaries' weights
                delta = (state["canary.weight"].view(-1) - global_state["canary.weight"].view(-1)).numpy()
                released[owner == pi] += delta[owner == pi]
            states.append(state)
            weights.append(float(len(X)))
        global_state = _fedavg(states, weights)
    model.load_state_dict(global_state)
    final = (global_state["canary.weight"].view(-1) - initial).numpy()
    # SGD moves a weight against its gradient: a canary pushing +C drives its weight down.
    white = -(released[:m] * sign) if m else np.zeros(0)
    black = -(final[:m] * sign) if m else np.zeros(0)
    return ReplayResult(model.inner, included, owner, white, black, time.perf_counter() - started)


def canary_report(
    result: ReplayResult, claimed_epsilon: float, delta: float, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """The one-run bounds of both scores, beside the claim; flagged when a bound exceeds the claim."""
    level = 1.0 - (1.0 - confidence) / 2  # two scores tried: each at half the error (Bonferroni)
    white = best_guesses(result.white_box_scores, result.included, delta, level)
    black = best_guesses(result.black_box_scores, result.included, delta, level)
    bound = max(white.epsilon_lower_bound, black.epsilon_lower_bound)
    return {
        "mechanism": "dpsgd",
        "method": "one-run canary audit (Steinke, Nasr, Jagielski 2023), gradient-space Dirac canaries",
        "claimed_epsilon": claimed_epsilon,
        "delta": delta,
        "confidence": confidence,
        "canaries": int(len(result.included)),
        "canaries_included": int(result.included.sum()),
        "white_box": white.to_dict(),
        "black_box": black.to_dict(),
        "epsilon_lower_bound": bound,
        "flagged": bool(bound > claimed_epsilon),
        "replay_seconds": round(result.seconds, 3),
    }
