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

Record canaries (``kind="record"``) instead travel the whole path of a record: each is a
row of the partner's data (features zero, canary input ``A`` on its own input column,
label 1), sampled by the trainer's Poisson sampler, its per-sample gradient clipped by
the trainer's clipper with the rest of the batch. They catch what gradient canaries
cannot: a trainer that does not clip (an unclipped canary moves its weight by about
``A`` times more than a clipped one).

Scores: white-box, from the updates each partner released (the sum over rounds of the
update of its canary's weight); black-box, from the released model alone (the final
global weight). The top and bottom scores are guessed in and out, the rest abstained,
and :func:`fedcustomer.privacy_audit.bounds.best_guesses` turns the right guesses into an
epsilon lower bound. Gradient canaries enter after clipping, so they check sampling,
noise and accounting; record canaries check clipping too.
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
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer
from fedcustomer.privacy_audit.bounds import CONFIDENCE, best_guesses

DEFAULT_CANARIES = 1000
KINDS = ("gradient", "record")
RECORD_INPUT = 100.0  # a record canary's input on its own column: its gradient is almost all on its weight
RECORD_LABEL = {"repayment": 1.0, "clv": 10.0}  # far from the zero start: the loss keeps pulling


class CanaryModel(nn.Module):
    """The job's model plus ``m`` canary weights: a block no record touches, and one input column each.

    ``canary`` holds the gradient canaries' weights. ``canary_in`` reads the ``m`` extra
    input columns only record canaries have non-zero (rows of ``input_dim`` columns skip it).
    """

    def __init__(self, inner: nn.Module, m: int, input_dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.input_dim = input_dim
        self.canary = nn.Linear(1, m, bias=False)
        self.canary_in = nn.Linear(m, 1, bias=False)
        with torch.no_grad():
            self.canary.weight.zero_()
            self.canary_in.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.input_dim:
            plain: torch.Tensor = self.inner(x)
            return plain
        out: torch.Tensor = self.inner(x[:, : self.input_dim])
        extra: torch.Tensor = self.canary_in(x[:, self.input_dim :])
        return out + extra.reshape(out.shape)


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
    kind: str = "gradient",
    delta: float = 1e-5,
) -> ReplayResult:
    """Re-run the job with ``canaries`` canaries of ``kind`` spread over the partners (or none, non-privately)."""
    if kind not in KINDS:
        raise ConfigError(f"canary kind must be one of {', '.join(KINDS)}, got {kind!r}")
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
    model = CanaryModel(inner, max(m, 1), input_dim)
    key = "canary.weight" if kind == "gradient" else "canary_in.weight"
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial = global_state[key].view(-1).clone()
    released = np.zeros(max(m, 1))
    claims = [0.0] * len(active)
    loss_fn = loss_for(recipe.task)
    data = [
        _with_records(p, pi, included, owner, m, recipe.task) if kind == "record" else (p.X, p.y)
        for pi, p in enumerate(active)
    ]
    for rnd in range(max(p.rounds for p in active)):
        states, weights = [], []
        for pi, p in enumerate(active):
            if rnd >= p.rounds:
                continue
            local = CanaryModel(build_model(recipe.task, recipe.arch, input_dim), max(m, 1), input_dim)
            local.load_state_dict(global_state)
            X, y = torch.as_tensor(data[pi][0]), torch.as_tensor(data[pi][1])
            # The job's sampling rate q = batch / rows, kept when record canaries add rows.
            q_job = min(recipe.batch_size, len(p.X)) / len(p.X)
            batch = max(1, min(len(X), round(q_job * len(X))))
            common: dict[str, Any] = {
                "batch_size": batch,
                "lr": recipe.lr,
                "optimizer": recipe.optimizer,
                "proximal_mu": recipe.proximal_mu,
            }
            trainer: Any
            if private:
                mine = np.nonzero(included & (owner == pi))[0] if kind == "gradient" else np.zeros(0, int)
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
            steps = 0
            for _ in range(recipe.local_epochs):
                steps += trainer.train_epoch().steps
            state = {k: v.detach().clone() for k, v in local.state_dict().items()}
            if private:  # this partner's released update, on its own canaries' weights
                moved = (state[key].view(-1) - global_state[key].view(-1)).numpy()
                released[owner == pi] += moved[owner == pi]
                history = [GaussianSteps(float(p.noise_multiplier or 0.0), trainer.sample_rate, steps)]
                claims[pi] = accounting.epsilon(history * p.rounds, delta)
            states.append(state)
            weights.append(float(len(X)))
        global_state = _fedavg(states, weights)
    model.load_state_dict(global_state)
    final = (global_state[key].view(-1) - initial).numpy()
    # SGD moves a weight against its gradient: a gradient canary pushing +C drives its weight
    # down; a record canary (label above its output) drives its input weight up.
    direction = -sign if kind == "gradient" else np.ones(m)
    white = released[:m] * direction if m else np.zeros(0)
    black = final[:m] * direction if m else np.zeros(0)
    extra = {
        "kind": kind,
        "claimed_epsilon": max(claims),
        "claimed_by_partner": dict(zip([p.name for p in active], claims)),
    }
    return ReplayResult(model.inner, included, owner, white, black, time.perf_counter() - started, extra)


def _with_records(
    p: PartnerData, pi: int, included: np.ndarray, owner: np.ndarray, m: int, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """The partner's rows with ``m`` zero canary columns, plus one row per included canary it holds."""
    mine = np.nonzero(included & (owner == pi))[0]
    X = np.concatenate([p.X, np.zeros((len(p.X), m), dtype=p.X.dtype)], axis=1)
    rows = np.zeros((len(mine), X.shape[1]), dtype=p.X.dtype)
    rows[np.arange(len(mine)), p.X.shape[1] + mine] = RECORD_INPUT
    labels = np.full(len(mine), RECORD_LABEL.get(task, 1.0), dtype=p.y.dtype)
    return np.concatenate([X, rows]), np.concatenate([p.y, labels])


def canary_report(
    result: ReplayResult, claimed_epsilon: float | None, delta: float, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """The one-run bounds of both scores, beside the claim; flagged when a bound exceeds the claim."""
    level = 1.0 - (1.0 - confidence) / 2  # two scores tried: each at half the error (Bonferroni)
    white = best_guesses(result.white_box_scores, result.included, delta, level)
    black = best_guesses(result.black_box_scores, result.included, delta, level)
    bound = max(white.epsilon_lower_bound, black.epsilon_lower_bound)
    kind = result.extra.get("kind", "gradient")
    if claimed_epsilon is None:  # what the replay itself ran, as the ledger would account it
        claimed_epsilon = float(result.extra["claimed_epsilon"])
    return {
        "mechanism": f"dpsgd: {kind} canaries",
        "method": "one-run canary audit (Steinke, Nasr, Jagielski 2023), "
        + ("gradient-space Dirac canaries" if kind == "gradient" else "record canaries through clipping"),
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
