"""One-run canary audit of a vertical (split-learning) job's DP mechanisms.

Why this module: a vertical job claims two kinds of guarantee (see
:mod:`fedcustomer.vertical.party`), each charged to a party's ledger:

* **DP-SGD** at each party -- the label owner's joint model, trained on batches it draws
  privately, and the passive party's bottom model -- both with Opacus
  (``GradSampleModule`` + ``DPOptimizer``), charged per round as
  ``GaussianSteps(sigma, q, steps)``. :func:`replay_dpsgd` re-runs that training the way
  the party runs it (Opacus, per-sample clipping at ``max_grad_norm``, Poisson sampling at
  the public rate ``q``, ``steps`` per round, the party's own noise multiplier from its
  ledger) on the party's aligned training rows, with ``m`` canaries each included with
  probability 1/2. Gradient canaries add ``+/- C`` to their own weight in the clipped sum
  just before Opacus adds its noise (they check sampling, noise and accounting); record
  canaries are rows of the party's data with one large input on their own column,
  clipped with the batch (they check clipping too). Scores: white-box, the sum of the
  noisy gradients on the canary's weight over every step (everything DP-SGD releases);
  black-box, the final weight.
* **Label release** of the label owner: the labels its label head learns from are
  randomised once per job; every gradient it returns to the passive party is
  post-processing of them. :func:`label_canaries` draws ``m`` canary customers whose
  label is the coin (the neighbouring relation of label DP), protects them with the
  job's own :func:`fedcustomer.vertical.labels.protect_labels`, returns the label head's
  gradients on their embeddings, and guesses each label from its returned gradient.

Both feed :func:`fedcustomer.privacy_audit.canaries.canary_report`, so the one-run bound
(Steinke, Nasr and Jagielski 2023) is computed as for horizontal jobs, against the
epsilon the run claims for the mechanism attacked.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy_audit.canaries import KINDS, ReplayResult
from fedcustomer.vertical.labels import LabelRelease, protect_labels
from fedcustomer.vertical.models import ActiveModel, BottomMLP, LabelHead

RECORD_INPUT = 100.0  # a record canary's input on its own column: its gradient is almost all on its weight
RECORD_LABEL = {"repayment": 1.0, "clv": 10.0}
EMBED_STD = 1.0  # spread of the canary customers' embeddings in the label audit


@dataclass(frozen=True)
class DPSGDSetting:
    """One party's DP-SGD as its ledger charged it (the run's summary.json accounting)."""

    party: str
    role: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    max_grad_norm: float
    delta: float

    def claimed_epsilon(self) -> float:
        """The epsilon this mechanism alone claims: the RDP accounting of its rounds."""
        steps = GaussianSteps(self.noise_multiplier, self.sample_rate, self.steps_per_round)
        return float(accounting.epsilon([steps] * self.rounds, self.delta))


@dataclass(frozen=True)
class Recipe:
    """How the vertical job trained (its config.json)."""

    task: str
    lr: float = 0.05
    optimizer: str = "adam"
    embed_dim: int = 8
    hidden: int = 16
    seed: int = 0


class JointInput(nn.Module):
    """The label owner's joint model on one matrix: its own columns, then the label head's score."""

    def __init__(self, model: ActiveModel, own_dim: int) -> None:
        super().__init__()
        self.model, self.own_dim = model, own_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        passive = x[:, self.own_dim :] if self.model.passive_dim else None
        out: torch.Tensor = self.model(x[:, : self.own_dim], passive)
        return out


class PassiveProbe(nn.Module):
    """The passive party's bottom model under a fixed label head: what its DP-SGD steps differentiate."""

    def __init__(self, bottom: BottomMLP, head: LabelHead) -> None:
        super().__init__()
        self.bottom, self.head = bottom, head
        for p in self.head.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.bottom(x))
        return out


class CanaryNet(nn.Module):
    """A party's model plus ``m`` canary input columns, each read by its own weight (zero at the start)."""

    def __init__(self, inner: nn.Module, input_dim: int, m: int) -> None:
        super().__init__()
        self.inner, self.input_dim = inner, input_dim
        self.canary_in = nn.Linear(max(m, 1), 1, bias=False)
        with torch.no_grad():
            self.canary_in.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x[:, : self.input_dim])
        extra: torch.Tensor = self.canary_in(x[:, self.input_dim :])
        return out + extra.reshape(out.shape)


class CanaryDPOptimizer(DPOptimizer):  # type: ignore[misc]  # Opacus is untyped
    """Opacus's DP optimizer as the parties build it, plus gradient canaries added to the clipped sum.

    It also keeps the sum over steps of the noisy gradient of the canary weights: what a
    white-box observer of every DP-SGD step would see.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        canary_param: torch.Tensor,
        canary_index: np.ndarray,
        canary_value: np.ndarray,
        canary_rng: torch.Generator,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.canary_param = canary_param
        self.canary_index = torch.as_tensor(canary_index, dtype=torch.long)
        self.canary_value = torch.as_tensor(canary_value, dtype=torch.float32)
        self.canary_rng = canary_rng
        self.canary_rate = 0.0
        self.noisy_sum = np.zeros(canary_param.numel())

    def add_noise(self) -> None:
        if len(self.canary_index):
            drawn = torch.rand(len(self.canary_index), generator=self.canary_rng) < self.canary_rate
            summed = self.canary_param.summed_grad.view(-1)  # type: ignore[attr-defined]  # set by clipping
            summed.index_add_(0, self.canary_index[drawn], self.canary_value[drawn].to(summed.dtype))
        super().add_noise()
        grad = self.canary_param.grad
        assert grad is not None
        self.noisy_sum += grad.detach().reshape(-1).double().numpy()


def loss_sum(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The parties' training loss, summed over the batch (as :class:`PartySession` computes it)."""
    if task == "repayment":
        return nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum")
    return nn.functional.huber_loss(out, y, reduction="sum", delta=1.0)


def inner_model(role: str, recipe: Recipe, input_dim: int, *, seed: int) -> nn.Module:
    """A fresh model of the party: the joint model (its columns + one score column) or the probe."""
    torch.manual_seed(seed)
    if role == "active":
        return JointInput(
            ActiveModel(input_dim - 1, 1, embed_dim=recipe.embed_dim, hidden=recipe.hidden), input_dim - 1
        )
    return PassiveProbe(BottomMLP(input_dim, recipe.embed_dim, recipe.hidden), LabelHead(recipe.embed_dim))


def replay_dpsgd(
    setting: DPSGDSetting,
    recipe: Recipe,
    X: np.ndarray,
    y: np.ndarray,
    *,
    canaries: int,
    kind: str = "gradient",
    seed: int = 0,
    optimizer_cls: type[CanaryDPOptimizer] = CanaryDPOptimizer,
    private: bool = True,
    inner: nn.Module | None = None,
) -> ReplayResult:
    """Re-run one party's DP-SGD with ``canaries`` canaries of ``kind`` (or none, without DP)."""
    if kind not in KINDS:
        raise ConfigError(f"canary kind must be one of {', '.join(KINDS)}, got {kind!r}")
    m = int(canaries) if private else 0
    if private and (m == 1 or m < 0):  # none: a shadow model of the recipe
        raise ConfigError(f"--canaries must be at least 2, got {canaries}")
    if len(X) < 2:
        raise ConfigError(f"party {setting.party!r} has too few training rows to replay")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    sign = np.where(rng.random(m) < 0.5, 1.0, -1.0)
    n_in = X.shape[1]
    base = inner if inner is not None else inner_model(setting.role, recipe, n_in, seed=recipe.seed)
    model = CanaryNet(base, n_in, m)
    Xc = np.concatenate([X, np.zeros((len(X), max(m, 1)), dtype=np.float32)], axis=1)
    yc = np.asarray(y, dtype=np.float32)
    if private and kind == "record":
        mine = np.nonzero(included)[0]
        rows = np.zeros((len(mine), Xc.shape[1]), dtype=np.float32)
        rows[np.arange(len(mine)), n_in + mine] = RECORD_INPUT
        Xc = np.concatenate([Xc, rows])
        yc = np.concatenate([yc, np.full(len(mine), RECORD_LABEL.get(recipe.task, 1.0), dtype=np.float32)])
    Xt, yt = torch.as_tensor(Xc, dtype=torch.float32), torch.as_tensor(yc, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    base_opt = (torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.SGD)(params, lr=recipe.lr)
    q, n = setting.sample_rate, len(X)
    wrapped: nn.Module = model
    optimizer: torch.optim.Optimizer = base_opt
    dp_opt: CanaryDPOptimizer | None = None
    if private:
        wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum")
        gradient = kind == "gradient"
        dp_opt = optimizer_cls(
            base_opt,
            canary_param=model.canary_in.weight,
            canary_index=np.nonzero(included)[0] if gradient else np.zeros(0, int),
            canary_value=sign[included] * setting.max_grad_norm if gradient else np.zeros(0),
            canary_rng=torch.Generator().manual_seed(int(rng.integers(2**62))),
            noise_multiplier=setting.noise_multiplier,
            max_grad_norm=setting.max_grad_norm,
            expected_batch_size=max(1, int(round(q * n))),
            loss_reduction="mean",
            generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
        )
        dp_opt.canary_rate = q
        optimizer = dp_opt
    sampler = torch.Generator().manual_seed(int(rng.integers(2**62)))
    for _ in range(setting.rounds * setting.steps_per_round):
        draw = torch.rand(len(Xt), generator=sampler, dtype=torch.float64) < q
        idx = torch.nonzero(draw).reshape(-1)
        if len(idx) == 0:
            continue
        loss = loss_sum(recipe.task, wrapped(Xt[idx]), yt[idx])
        if not private:
            loss = loss / len(idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Opacus hooks: no input needs a gradient
            loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    final = model.canary_in.weight.detach().reshape(-1).double().numpy()[:m]
    noisy = dp_opt.noisy_sum[:m] if dp_opt is not None else np.zeros(m)
    # Gradient descent moves a weight against its gradient: a gradient canary pushing +C drives
    # its weight down; a record canary (label above the output) drives its weight up.
    direction = sign if kind == "gradient" else -np.ones(m)
    extra = {
        "kind": kind,
        "claimed_epsilon": setting.claimed_epsilon() if private else 0.0,
        "party": setting.party,
        "role": setting.role,
    }
    return ReplayResult(
        model.inner, included, np.zeros(m, int), noisy * direction, -final * direction,
        time.perf_counter() - started, extra,
    )  # fmt: skip


#: The label owner's label protection: (release, labels, generator) -> protected labels.
ProtectFn = Callable[[LabelRelease | None, torch.Tensor | None, torch.Generator], np.ndarray]


def label_canaries(
    release: LabelRelease,
    task: str,
    *,
    canaries: int,
    embed_dim: int = 8,
    hidden: int = 16,
    seed: int = 0,
    protect: ProtectFn = protect_labels,
) -> ReplayResult:
    """Canary customers' labels through the label release and back out as the label head's gradients.

    The coin of canary ``i`` is its label: 1 (bound of the label range, for CLV) when
    included, 0 otherwise; the two are neighbours under label DP. The passive party's
    guess reads the returned gradient ``g_i``: with ``J_i`` the head's gradient at the
    embedding (white-box: the auditor knows the head), ``-<g_i, J_i> / |J_i|^2`` is the
    protected label minus the head's output, so its sign tells the protected label.
    """
    m = int(canaries)
    if m < 2:
        raise ConfigError(f"--canaries must be at least 2, got {canaries}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    high = 1.0 if task == "repayment" else float(release.bound or 1.0)
    y = torch.as_tensor(np.where(included, high, 0.0), dtype=torch.float32)
    protected = torch.as_tensor(
        protect(release, y, torch.Generator().manual_seed(int(rng.integers(2**62)))), dtype=torch.float32
    )
    torch.manual_seed(seed)
    head = LabelHead(embed_dim, hidden)
    e = torch.as_tensor(rng.normal(0.0, EMBED_STD, size=(m, embed_dim)), dtype=torch.float32)
    e_msg = e.clone().requires_grad_(True)
    loss_sum(task, head(e_msg), protected).backward()  # type: ignore[no-untyped-call]  # what goes back
    assert e_msg.grad is not None
    returned = e_msg.grad.detach()
    e_j = e.clone().requires_grad_(True)
    head(e_j).sum().backward()
    assert e_j.grad is not None
    jac = e_j.grad.detach()
    score = -(returned * jac).sum(1) / jac.pow(2).sum(1).clamp_min(1e-12)
    scores = score.double().numpy()
    extra = {"kind": "label", "claimed_epsilon": release.epsilon}
    return ReplayResult(
        head, included, np.zeros(m, int), scores, scores, time.perf_counter() - started, extra
    )
