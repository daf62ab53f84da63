"""Local DP-SGD training for one partner, on Opacus.

Why this module: every partner trains on its own customers with DP-SGD (Poisson
sampling, per-sample clipping, Gaussian noise) and the privacy ledger must be charged
exactly what was run. :class:`DPTrainer` reports ``(noise_multiplier, sample_rate,
steps)``; charge ``EpochStats.steps`` (or ``steps_taken`` after a failure mid-epoch).

Opacus does the DP machinery: ``DPDataLoader`` (Poisson sampling, empty batches),
``DPOptimizer`` (noise, scaling, step) and, for ``clipping="hooks"`` / ``"ghost"``, its
``GradSampleModule`` / ghost clipping. ``clipping="fast"`` (default) computes the clipped
per-sample sum more cheaply (see :mod:`fedcustomer.privacy.dp.fast_clipping`) and hands it
to Opacus's noise + step path. ``sampler="geometric"`` (default) draws the same Poisson
batches as Opacus's ``UniformWithReplacementSampler`` (each row independently with
probability q) from geometric gaps, inside a ``DPDataLoader`` subclass
(:mod:`fedcustomer.privacy.dp.poisson_sampling`);
``sampler="opacus"`` uses Opacus's sampler and loader unchanged.

Speed (1 thread, 24,000 x 23 rows, batch 256; ``benchmarks/bench_dpsgd.py``): fast
clipping runs an epoch of the 23-64-32-1 MLP in about 1.2-1.3x the non-private wall time with
the noise drawn ahead on a second core (1.2-1.4x with it drawn on the training thread, which
then is also its CPU time), and a logistic regression in 1.2-1.3x (quiet machine, 2026-12-03),
against 4-13x for Opacus hooks and ghost clipping. What remains is mostly the four Gaussian
draws per coordinate of the floating-point-safe noise and fixed per-step kernel-call overhead
of the clipping.

Randomness and residual risk
----------------------------
Opacus's ``secure_mode`` needs ``torchcsprng``, which is not available. Instead:

* the noise and the sampling generators are ``torch.Generator`` objects seeded with 64
  bits from ``os.urandom`` (:func:`secure_generator`), one per purpose, never the
  global torch seed, so a run's ``--seed`` cannot reproduce the noise;
* noise is drawn with Opacus's floating-point-safe sampler (``secure_mode=True`` set on
  the ``DPOptimizer`` itself: each coordinate is half a sum of four Gaussians, defeating the
  attacks on the binary representation of a single float draw); fast clipping draws the same
  construction into reused buffers (:mod:`fedcustomer.privacy.dp.secure_noise`), consuming the
  generator as Opacus's ``_generate_noise`` does and yielding its values.

What remains: torch's CPU generator is a Mersenne Twister (MT19937), not a CSPRNG. An
attacker who sees enough raw generator output (about 624 consecutive 32-bit words) can
reconstruct its state and predict later draws; the seed space is 2^64, so guessing the
seed needs on the order of 2^64 work. The noise itself is not released raw -- only
noisy, averaged model updates leave the partner -- so such an attacker would need to
recover the draws from the released updates, which in turn requires knowing the
unnoised gradients. Treat this as "strong in practice, not cryptographic". Installing
``torchcsprng`` and passing its generator as ``noise_generator`` / ``sampling_generator``
removes the caveat without code changes.

Not private: ``EpochStats.mean_loss`` and ``examples_seen`` are computed from the raw
data (the loss, and the Poisson batch sizes). Keep them local (logs, early stopping on
the partner); do not send them to the coordinator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from fedcustomer.errors import ConfigError, DataError
from fedcustomer.privacy.dp.fast_clipping import DPOptimizerFastClipping, FastGradientClipper
from fedcustomer.privacy.dp.flat_params import FlatParameters
from fedcustomer.privacy.dp.momentum_sgd import MomentumSGD
from fedcustomer.privacy.dp.poisson_sampling import GeometricDPDataLoader, TensorPairs, whole_batch
from fedcustomer.privacy.dp.secure_noise import draw_ahead_wanted

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZERS = ("sgd", "adam")
SAMPLERS = ("geometric", "opacus")
CLIPPING_MODES = ("fast", "ghost", "hooks")
SGD_MOMENTUM = 0.9
# Fast clipping draws this many noise values at once at most (256 KiB of float32 per buffer): a
# block that stays in the core's cache. Whole-epoch blocks (megabytes) were measured slower,
# most of all under load: drawing them evicts the model's working set.
NOISE_BLOCK_ELEMENTS = 64 * 1024
# Blocks smaller than this are drawn on the training thread: a hand-over to the helper thread
# costs about what drawing a few thousand values does (a logistic regression's whole epoch).
NOISE_AHEAD_MIN_ELEMENTS = 16 * 1024


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did; ``steps`` is what the accountant must be charged."""

    steps: int
    mean_loss: float
    examples_seen: int


def secure_generator() -> torch.Generator:
    """A fresh CPU generator seeded with 64 bits from the OS (see module docstring)."""
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return generator


# -- validation -------------------------------------------------------------------------
def _positive(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}; {what}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}; {what}")
    return float(value)


def _check_data(X: object, y: object) -> None:
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(
            f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}; "
            "convert with torch.as_tensor(...)"
        )
    if X.dim() == 0 or len(X) == 0:
        raise DataError("X has no rows: this partner has no training data for the task")
    if y.dim() == 0 or len(y) != len(X):
        raise DataError(
            f"X has {len(X)} rows but y has {len(y) if y.dim() else 'no'} labels; "
            "they must be aligned row by row"
        )
    for name, t in (("X", X), ("y", y)):
        if t.is_floating_point() and not _all_finite(t):
            bad = int((~torch.isfinite(t)).reshape(len(t), -1).any(1).nonzero()[0, 0])
            raise DataError(f"{name} has a NaN or infinite value (first at row {bad}); impute or drop it")


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite, at a fraction of ``torch.isfinite`` 's cost.

    A trainer checks its whole matrix each round. A NaN or an infinity in ``t`` makes its sum
    NaN or infinite, so a finite sum proves every value finite; a sum that overflowed from finite
    values is settled by the exact element-wise test.
    """
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _rate(sample_rate: object) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float):
        raise ConfigError(f"sample_rate must be a number, got {sample_rate!r}")
    if not (0.0 < float(sample_rate) <= 1.0):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def _check_batch_size(batch_size: object, n: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ConfigError(f"batch_size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ConfigError(f"batch_size must be between 1 and the number of rows ({n}), got {batch_size}")
    return batch_size


def _check_loss_reduction(loss_fn: LossFn) -> None:
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise ConfigError(
            f"loss_fn must average over the batch (reduction='mean'), got reduction={reduction!r}"
        )


class _Trainer:
    """Validation, optimizer and FedProx anchor shared by the private and plain trainers."""

    def __init__(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        *,
        batch_size: int,
        lr: float,
        optimizer: str,
        proximal_mu: float,
        anchor: Sequence[torch.Tensor] | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ConfigError("loss_fn must be callable as loss_fn(output, target)")
        _check_data(X, y)
        self.batch_size = _check_batch_size(batch_size, len(X))
        self.lr = _positive("lr", lr, "use a learning rate such as 0.05")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if (
            isinstance(proximal_mu, bool)
            or not isinstance(proximal_mu, (int, float))
            or not (math.isfinite(proximal_mu) and proximal_mu >= 0)
        ):
            raise ConfigError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
        self._module, self.X, self.y, self.loss_fn = model, X, y, loss_fn
        self._params = [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ConfigError("the model has no trainable parameters; nothing to train")
        self.proximal_mu = float(proximal_mu)
        self._prox_pairs = self._anchor_pairs(model, anchor) if self.proximal_mu > 0 else []
        self._base_optimizer = (
            MomentumSGD(self._params, lr=self.lr, momentum=SGD_MOMENTUM)  # torch's SGD, without torch._dynamo
            if optimizer == "sgd"
            else torch.optim.Adam(self._params, lr=self.lr)
        )
        self.optimizer_name = optimizer

    @staticmethod
    def _anchor_pairs(
        model: nn.Module, anchor: Sequence[torch.Tensor] | None
    ) -> list[tuple[nn.Parameter, torch.Tensor]]:
        params = list(model.parameters())
        if anchor is None:  # FedProx default: the weights the round started from
            anchor = [p.detach().clone() for p in params]
        anchor = list(anchor)
        if len(anchor) != len(params):
            raise ConfigError(
                f"anchor has {len(anchor)} tensors but the model has {len(params)} parameters; "
                "pass one tensor per model.parameters() entry, in that order"
            )
        pairs = []
        for i, (p, a) in enumerate(zip(params, anchor)):
            if not isinstance(a, torch.Tensor) or a.shape != p.shape:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise ConfigError(f"anchor[{i}] has shape {shape}, parameter {i} has {tuple(p.shape)}")
            if p.requires_grad:
                pairs.append((p, a.detach().to(dtype=p.dtype, device=p.device).clone()))
        return pairs

    def _add_proximal(self) -> None:
        """FedProx: grad += mu * (w - w_anchor). Uses no data, so it costs no privacy."""
        with torch.no_grad():
            for p, a in self._prox_pairs:
                if p.grad is None:  # parameter unused by this batch's forward
                    p.grad = torch.zeros_like(p)
                p.grad.add_(p - a, alpha=self.proximal_mu)

    @property
    def model(self) -> nn.Module:
        """The trained module itself (not an Opacus wrapper)."""
        return self._module


class DPTrainer(_Trainer):
    """DP-SGD with Poisson sampling; one :meth:`train_epoch` = ``steps_per_epoch`` steps.

    ``loss_fn`` must return the batch mean of per-sample losses (nn losses do by default).
    ``anchor`` aligns with ``model.parameters()``; with ``proximal_mu > 0`` and no anchor,
    the initial weights are the anchor. ``noise_ahead`` (fast clipping): draw the next block
    of noise on a helper thread during the steps; ``None`` follows
    :func:`~fedcustomer.privacy.dp.secure_noise.draw_ahead_wanted`. Either way the noise
    generator is used by the trainer alone.
    """

    def __init__(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        *,
        batch_size: int,
        lr: float,
        noise_multiplier: float,
        max_grad_norm: float,
        optimizer: str = "sgd",
        clipping: str = "fast",
        proximal_mu: float = 0.0,
        anchor: Sequence[torch.Tensor] | None = None,
        noise_generator: torch.Generator | None = None,
        sampling_generator: torch.Generator | None = None,
        sampler: str = "geometric",
        noise_ahead: bool | None = None,
        sample_rate: float | None = None,
    ) -> None:
        self.noise_multiplier = _positive(
            "noise_multiplier",
            noise_multiplier,
            "DP-SGD needs noise; use PlainTrainer for a non-private baseline",
        )
        self.max_grad_norm = _positive(
            "max_grad_norm", max_grad_norm, "it is the per-sample clipping bound, e.g. 1.0"
        )
        if clipping not in CLIPPING_MODES:
            raise ConfigError(f"unknown clipping {clipping!r}; choose one of {', '.join(CLIPPING_MODES)}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        super().__init__(
            model,
            X,
            y,
            loss_fn,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            proximal_mu=proximal_mu,
            anchor=anchor,
        )
        _check_loss_reduction(loss_fn)
        if clipping == "ghost" and not isinstance(getattr(loss_fn, "reduction", None), str):
            raise ConfigError(
                "clipping='ghost' needs a torch loss module with a 'reduction' attribute "
                "(e.g. nn.BCEWithLogitsLoss()); use clipping='fast' for a plain function"
            )
        self.clipping = clipping
        # the Poisson rate: batch / rows unless given (a node gives one that does not reveal its exact rows)
        self.sample_rate = self.batch_size / len(X) if sample_rate is None else _rate(sample_rate)
        self.steps_per_epoch = int(1 / self.sample_rate)
        self.steps_taken = 0  # all optimizer steps so far, also those of an epoch that failed
        self._noise_generator = noise_generator or secure_generator()
        self._sampling_generator = sampling_generator or secure_generator()
        self._noise_ahead = draw_ahead_wanted() if noise_ahead is None else noise_ahead
        dataset = TensorPairs(X, y)
        if sampler == "geometric":
            self._loader: DPDataLoader = GeometricDPDataLoader(
                dataset, sample_rate=self.sample_rate, generator=self._sampling_generator
            )
        else:
            self._loader = DPDataLoader(
                dataset,
                sample_rate=self.sample_rate,
                collate_fn=whole_batch,
                generator=self._sampling_generator,
            )
        if len(self._loader) != self.steps_per_epoch:  # the ledger relies on this equality
            raise RuntimeError("Opacus DPDataLoader step count differs from int(1 / sample_rate)")
        self._setup_clipping()
        if self._prox_pairs:
            self._optimizer.attach_step_hook(lambda _opt: self._add_proximal())

    def _setup_clipping(self) -> None:
        dp_args = dict(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
            generator=self._noise_generator,
            secure_mode=True,
        )
        self._clipper: FastGradientClipper | None = None
        self._flat_params: FlatParameters | None = None
        self._wrapped: nn.Module = self._module
        if self.clipping == "fast":
            self._clipper = FastGradientClipper(self._module)
            if isinstance(self._base_optimizer, MomentumSGD):  # its step can run on flat buffers
                self._flat_params = FlatParameters(self._params)
            numel = self._clipper.flat_summed_grad.numel()
            block_rows = max(1, min(self.steps_per_epoch, NOISE_BLOCK_ELEMENTS // numel))
            self._optimizer: DPOptimizer = DPOptimizerFastClipping(
                self._base_optimizer,
                clipper=self._clipper,
                noise_block_steps=block_rows,
                # Drawn ahead on a spare core when a block is worth a hand-over, and only from a
                # generator that nothing else here draws from.
                noise_ahead=block_rows * numel >= NOISE_AHEAD_MIN_ELEMENTS
                and self._noise_ahead
                and self._noise_generator is not self._sampling_generator,
                **dp_args,
            )
        elif self.clipping == "hooks":
            self._wrapped = GradSampleModule(self._module, batch_first=True, loss_reduction="mean")
            self._optimizer = DPOptimizer(self._base_optimizer, **dp_args)
        else:
            self._wrapped = GradSampleModuleFastGradientClipping(
                self._module,
                batch_first=True,
                loss_reduction="mean",
                max_grad_norm=self.max_grad_norm,
                use_ghost_clipping=True,
            )
            self._optimizer = DPOptimizerFastGradientClipping(self._base_optimizer, **dp_args)
            self._ghost_loss = DPLossFastGradientClipping(
                self._wrapped, self._optimizer, self.loss_fn, "mean"
            )

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._loader)

    def _backward(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Forward + backward leaving the clipped per-sample sum for the optimizer."""
        if self._clipper is not None:  # hooks attached for the whole epoch
            loss = self.loss_fn(self._module(xb), yb)
            self._clipper.clip_and_accumulate(loss, batch_size=len(xb), max_grad_norm=self.max_grad_norm)
            return loss.detach()
        if self.clipping == "ghost":
            ghost = self._ghost_loss(self._wrapped(xb), yb)  # Opacus's tensor wrapper: its backward clips
            ghost.backward()
            detached: torch.Tensor = ghost.detach()
            return detached
        loss = self.loss_fn(self._wrapped(xb), yb)
        torch.autograd.backward(loss)
        return loss.detach()

    def _empty_batch(self) -> None:
        """Poisson drew no rows: the clipped sum is zero; the step (and its noise) still happens."""
        if self._clipper is not None:
            self._clipper.zero_summed_grad()
        elif self.clipping == "hooks":
            for p in self._params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]  # Opacus keeps per-sample grads on torch Parameters
        else:
            for p in self._params:
                p.grad = torch.zeros_like(p)

    def _step(self) -> None:
        """Noise, scaling and the wrapped optimizer's step.

        For fast clipping this is Opacus's own ``DPOptimizer.step`` without torch's per-call
        profiling wrapper around it: ``pre_step`` (noise, scaling, step hook) and then the
        wrapped optimizer, exactly what ``step`` runs when no closure is given.
        """
        if self._clipper is None:
            self._optimizer.step()
        elif self._optimizer.pre_step():
            self._optimizer.original_optimizer.step()

    def _bind_flat(self) -> None:
        """For the epoch, parameters and momentum as flat tensors: SGD's step is 2-3 operations, same bits."""
        if self._flat_params is None or self._clipper is None:
            return
        assert isinstance(self._base_optimizer, MomentumSGD)
        self._flat_params.bind()
        self._base_optimizer.bind_flat(self._flat_params, self._clipper.flat_summed_grad, self._clipper.views)

    def _release_flat(self) -> None:
        """After the epoch (also a failed one) every parameter owns its storage again."""
        if self._flat_params is None:
            return
        if isinstance(self._base_optimizer, MomentumSGD):
            self._base_optimizer.unbind_flat()
        self._flat_params.release()

    def train_epoch(self) -> EpochStats:
        """One pass of ``steps_per_epoch`` Poisson-sampled noisy steps."""
        self._module.train()
        steps, seen = 0, 0
        loss_sum = 0.0
        if self._clipper is not None:
            self._clipper.attach()
        try:
            self._bind_flat()
            for xb, yb in self._batches():
                n = len(xb)
                if n == 0:
                    self._empty_batch()
                else:
                    loss_sum += float(self._backward(xb, yb)) * n
                self._step()
                if self._clipper is None:  # fast clipping overwrites its buffer: no reset per step
                    self._optimizer.zero_grad(set_to_none=True)
                steps += 1
                self.steps_taken += 1
                seen += n
        finally:
            if self._clipper is not None:
                self._optimizer.zero_grad(set_to_none=True)
                self._clipper.detach()
            if isinstance(self._optimizer, DPOptimizerFastClipping):
                self._optimizer.close_noise()  # no draw runs on between epochs
            self._release_flat()
        mean_loss = loss_sum / seen if seen else float("nan")
        return EpochStats(steps=steps, mean_loss=mean_loss, examples_seen=seen)


class PlainTrainer(_Trainer):
    """Non-private baseline: shuffled mini-batches, same optimizer and FedProx term."""

    def __init__(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        loss_fn: LossFn,
        *,
        batch_size: int,
        lr: float,
        optimizer: str = "sgd",
        proximal_mu: float = 0.0,
        anchor: Sequence[torch.Tensor] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            model,
            X,
            y,
            loss_fn,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            proximal_mu=proximal_mu,
            anchor=anchor,
        )
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self.steps_per_epoch = math.ceil(len(X) / self.batch_size)

    def train_epoch(self) -> EpochStats:
        """One shuffled pass over all rows."""
        self._module.train()
        n = len(self.X)
        order = torch.randperm(n, generator=self._generator)
        loss_sum = 0.0
        steps = 0
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
            loss = self.loss_fn(self._module(xb), yb)
            self._base_optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            if self._prox_pairs:
                self._add_proximal()
            self._base_optimizer.step()
            loss_sum += loss.item() * len(idx)
            steps += 1
        return EpochStats(steps=steps, mean_loss=loss_sum / n, examples_seen=n)
