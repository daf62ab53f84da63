"""Book-keeping per-sample clipping for DP-SGD, plugged into Opacus's optimizer.

Why: Opacus's default path materialises every per-sample gradient (B x out x in per
layer) and its ghost clipping runs a second backward pass. For ``nn.Linear`` on 2-D
input neither is needed: the per-sample gradient of the weight is the outer product
``g_i a_i^T`` of the backprop ``g_i`` and the activation ``a_i``, so

* its norm with the bias's is ``||g_i|| sqrt(||a_i||^2 + 1)`` (two row norms and a hypot
  per layer; layers combine by hypot), and
* the clipped sum ``sum_i c_i g_i a_i^T`` is one matmul ``(c * G)^T A`` (and the bias one
  matrix-vector product), with the constant part of ``c`` in the BLAS call's alpha.

At this size (tens of units, batches of a few hundred) every tensor operation costs its
dispatch more than its arithmetic, so the code keeps the number of operations per step
low rather than the flops, and runs the arithmetic under ``torch.inference_mode`` (no
autograd bookkeeping). Concatenating all layers' backprops and activations to get every
layer's norms from two matmuls against 0/1 selectors was tried and measured slower: the
concatenations and the skinny matmuls cost more than the per-layer row norms they replace.

:class:`FastGradientClipper` records each layer's input and output in the forward
pass, asks autograd (one backward pass) for the gradient of the loss with respect to
those outputs only -- so autograd never builds the unclipped weight gradients -- and
writes the clipped per-sample sum to ``p.summed_grad``. :class:`DPOptimizerFastClipping`
is an Opacus ``DPOptimizer`` that starts from that ``summed_grad``: Opacus's secure-mode noise
(the same construction and generator use as ``_generate_noise``, drawn into reused buffers by
:mod:`fedcustomer.privacy.dp.secure_noise`) is added, the sum scaled by the expected batch size
and the wrapped optimizer stepped.

Parametrised layers other than plain ``nn.Linear`` on 2-D input (``Conv``,
``LayerNorm``, ``Embedding``, ``Linear`` on sequences, ...) fall back to the per-sample
gradient functions Opacus registers for them (its "hooks" samplers), inside the same
backward pass. A layer type Opacus has no sampler for is refused with a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F
from torch.overrides import has_torch_function

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.secure_noise import NoiseBlocks

# Same guard against division by zero that Opacus uses, so clip factors match it exactly.
_NORM_EPS = 1e-6
# torch's autograd engine, what torch.autograd.grad calls after its argument handling (None if absent).
_ENGINE: Any = getattr(torch.autograd.Variable, "_execution_engine", None)
# A fast Linear's (weight view, bias view) in the flat buffer, None for a part not trained.
_Plan = tuple[torch.Tensor | None, torch.Tensor | None]
# One recorded forward call: (module, its inputs, its output, the output's version counter).
_Record = tuple[nn.Module, tuple[Any, ...], torch.Tensor, int]


def _trainable_direct_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _is_fast_linear(module: nn.Module) -> bool:
    # Exact type: a subclass may override forward() and break the outer-product identity.
    return type(module) is nn.Linear


def _describe(name: str, module: nn.Module) -> str:
    return f"layer {name or '<root>'} ({type(module).__name__})"


class FastGradientClipper:
    """Computes per-sample norms and the clipped gradient sum in one backward pass.

    Usage per step (loss must be the *mean* over the batch, like nn losses by default)::

        clipper.attach()                      # forward hooks, once per epoch
        loss = loss_fn(model(xb), yb)
        clipper.clip_and_accumulate(loss, batch_size=len(xb), max_grad_norm=C)
        ...                                   # p.summed_grad now holds sum_i clip(grad_i)
        clipper.detach()                      # model back as it was

    All ``p.summed_grad`` are views of one flat buffer (``flat_summed_grad``), reused
    every step, so the optimizer can noise and scale it in one operation.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.params: list[nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no trainable parameters; nothing to train")
        self._names = {id(m): n for n, m in module.named_modules()}
        self._layers: list[nn.Module] = []
        owner: dict[int, str] = {}
        for name, sub in module.named_modules():
            own = _trainable_direct_params(sub)
            if not own:
                continue
            if not _is_fast_linear(sub) and type(sub) not in GradSampleModule.GRAD_SAMPLERS:
                raise ConfigError(
                    f"{_describe(name, sub)} has trainable parameters but neither fast clipping "
                    "nor Opacus has a per-sample gradient rule for it; use clipping='hooks' "
                    "(Opacus functorch fallback) or replace the layer"
                )
            for p in own:
                if id(p) in owner:
                    raise ConfigError(
                        f"{_describe(name, sub)} shares a parameter with layer {owner[id(p)]} (tied "
                        "weights); per-sample norms do not decompose per layer, use clipping='hooks'"
                    )
                owner[id(p)] = name
            self._layers.append(sub)
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) != 1:
            raise ConfigError(
                "fast clipping needs all trainable parameters on one device with one dtype, got "
                f"{sorted(str(k) for k in kinds)}; convert the model with .to(...) or use clipping='hooks'"
            )
        ((self._dtype, self._device),) = kinds
        self.sizes = [p.numel() for p in self.params]
        self.flat_summed_grad = torch.zeros(sum(self.sizes), dtype=self._dtype, device=self._device)
        self.views = [
            v.view(p.shape) for p, v in zip(self.params, torch.split(self.flat_summed_grad, self.sizes))
        ]
        self._view_of = {id(p): v for p, v in zip(self.params, self.views)}
        # Per fast Linear: (weight view or None, bias view or None) -- None when not trained.
        self._linear_plans: dict[int, _Plan] = {
            id(m): (
                self._view_of.get(id(m.weight)) if m.weight.requires_grad else None,
                self._view_of.get(id(m.bias)) if m.bias is not None and m.bias.requires_grad else None,
            )
            for m in self._layers
            if _is_fast_linear(m)
        }
        self._one = torch.ones((), dtype=self._dtype, device=self._device)
        self._records: list[_Record] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._patched: list[nn.Module] = []
        self._attached = False
        self.fresh = False

    # -- forward recording ---------------------------------------------------------------
    def attach(self) -> None:
        """Start recording each layer's input and output (idempotent).

        A plain ``nn.Linear`` gets a recording ``forward`` on the instance, any other layer a
        forward hook: a module hook sends every call of the layer through torch's general
        hook-dispatch path, a few microseconds a layer, several per cent of a small step.
        """
        if self._attached:
            return
        self._records = []
        for m in self._layers:
            if isinstance(m, nn.Linear) and _is_fast_linear(m) and "forward" not in m.__dict__:
                m.__dict__["forward"] = self._recording_linear(m)
                self._patched.append(m)
            else:
                self._handles.append(m.register_forward_hook(self._capture))
        self._attached = True

    def detach(self) -> None:
        """Stop recording, so the model is left as it was handed in."""
        for h in self._handles:
            h.remove()
        for m in self._patched:
            m.__dict__.pop("forward", None)
        self._handles, self._patched = [], []
        self._records = []
        self._attached = False

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled():
            self._records.append((module, inputs, output, getattr(output, "_version", -1)))

    def _recording_linear(self, module: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        """``nn.Linear.forward`` that also records (module, input, output) like :meth:`_capture`."""

        def forward(input: torch.Tensor) -> torch.Tensor:
            output = F.linear(input, module.weight, module.bias)
            if module.training and torch.is_grad_enabled():
                self._records.append((module, (input,), output, output._version))
            return output

        return forward

    # -- the clipped sum -------------------------------------------------------------------
    def clip_and_accumulate(
        self, loss: torch.Tensor, *, batch_size: int, max_grad_norm: float
    ) -> torch.Tensor:
        """Write ``sum_i clip(grad_i)`` into ``p.summed_grad``; return per-sample norms.

        ``loss`` is the batch mean of the per-sample losses (Opacus ``loss_reduction="mean"``),
        so autograd yields backprops divided by ``batch_size``; that factor is folded into
        the (B,)-sized norm and clip vectors rather than into every layer's tensors.
        """
        records, self._records = self._records, []
        self._check_records(records)
        grads = self._output_grads(loss, [r[2] for r in records])
        plans = self._linear_plans
        # Inference mode: no autograd bookkeeping (version counters, view tracking) per operation,
        # about a fifth of the clipping arithmetic at this size.
        with torch.inference_mode():
            # Per-sample gradient norms of the mean loss, layers combined with hypot rather
            # than as a sum of squares; times B at the end.
            norm: torch.Tensor | None = None
            linear: list[tuple[torch.Tensor, torch.Tensor, _Plan]] = []
            fallback: list[dict[nn.Parameter, torch.Tensor]] = []
            for (module, inputs, _, _), g in zip(records, grads):
                if g is None:  # output did not reach the loss: zero gradient
                    continue
                plan = plans.get(id(module))
                a = inputs[0] if inputs else None
                if plan is not None and a is not None and g.dim() == 2 and a.dim() == 2:
                    if a.dtype is not g.dtype:
                        a = a.to(g.dtype)
                    part = self._linear_norm(a, g, plan)
                    linear.append((a, g, plan))
                else:
                    samples, part = self._sampled_norm(module, inputs, g, batch_size)
                    fallback.append(samples)
                norm = part if norm is None else norm.hypot_(part)
            if norm is None:
                norm = torch.zeros(batch_size, dtype=self._dtype, device=self._device)
            norms = norm.mul_(batch_size)
            # Opacus's clip factor min(1, C / (norm + eps)) = C / max(norm + eps, C); the
            # constant C * B (B undoes the mean) goes into the matmuls' alpha.
            inv = (norms + _NORM_EPS).clamp_(min=max_grad_norm).reciprocal_()
            scale = max_grad_norm * batch_size
            inv_col = inv.unsqueeze(1)
            for a, g, (weight_view, bias_view) in linear:
                if weight_view is not None:
                    weight_view.addmm_(torch.mul(g, inv_col).t(), a, beta=0.0, alpha=scale)
                if bias_view is not None:
                    bias_view.addmv_(g.t(), inv, beta=0.0, alpha=scale)
            if fallback:
                clip = inv * max_grad_norm
                for samples in fallback:
                    for p, gs in samples.items():
                        self._view_of[id(p)].copy_(torch.einsum("i,i...->...", clip, gs.to(p.dtype)))
            if len(linear) + len(fallback) != len(self._layers):
                self._zero_unwritten(linear, fallback)
        self._publish()
        return norms

    def _output_grads(
        self, loss: torch.Tensor, outputs: list[torch.Tensor]
    ) -> tuple[torch.Tensor | None, ...]:
        """``torch.autograd.grad(loss, outputs, allow_unused=True)``, for a scalar loss straight from the engine.

        The public wrapper's argument normalisation, ``torch_function`` dispatch, implicit ``ones_like``
        and logging set-up cost about as much as the small backward itself; the engine call is what it
        ends in. Anything but a plain scalar loss of the parameters' dtype takes the public path.
        """
        one = self._one
        if (
            _ENGINE is None
            or loss.dim() != 0
            or has_torch_function((loss, *outputs))
            or loss.dtype is not one.dtype
            or loss.device != one.device
        ):
            return torch.autograd.grad(loss, outputs, allow_unused=True)
        grads: tuple[torch.Tensor | None, ...] = _ENGINE.run_backward(
            (loss,), (one,), False, False, tuple(outputs), True, False
        )
        return grads

    def _linear_norm(self, a: torch.Tensor, g: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Row norms of ``g_i a_i^T`` (weight) and ``g_i`` (bias): ``||g_i|| sqrt(||a_i||^2 + 1)``."""
        part: torch.Tensor = torch.linalg.vector_norm(g, dim=1)
        if plan[0] is not None:
            a_norm = torch.linalg.vector_norm(a, dim=1)
            part.mul_(a_norm.hypot_(self._one) if plan[1] is not None else a_norm)
        return part

    def _sampled_norm(
        self, module: nn.Module, inputs: tuple[Any, ...], g: torch.Tensor, batch_size: int
    ) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
        """Opacus's per-sample gradients of one layer and their row norms (of the mean loss)."""
        sampler = GradSampleModule.GRAD_SAMPLERS[type(module)]
        # Opacus's samplers expect the backprops of the summed loss.
        samples = sampler(module, [t.detach() for t in inputs], g * batch_size)
        norm2 = torch.zeros(batch_size, dtype=self._dtype, device=self._device)
        for gs in samples.values():
            flat_gs = gs.reshape(batch_size, -1).to(self._dtype)
            norm2.add_(torch.linalg.vecdot(flat_gs, flat_gs), alpha=1.0 / batch_size**2)
        return samples, norm2.sqrt_()

    def zero_summed_grad(self) -> None:
        """An empty Poisson batch: the clipped sum is zero, noise is still to be added."""
        self._records = []
        self.flat_summed_grad.zero_()
        self._publish()

    def _publish(self) -> None:
        for p, v in zip(self.params, self.views):
            p.summed_grad = v  # type: ignore[attr-defined]  # Opacus keeps the clipped sum on torch Parameters
        self.fresh = True  # one noisy step may consume it

    def _zero_unwritten(
        self,
        linear: list[tuple[torch.Tensor, torch.Tensor, _Plan]],
        fallback: list[dict[nn.Parameter, torch.Tensor]],
    ) -> None:
        """Layers absent from this forward (or cut off from the loss) get a zero gradient."""
        done = {id(v) for _, _, plan in linear for v in plan if v is not None}
        done.update(id(self._view_of[id(p)]) for samples in fallback for p in samples)
        for v in self.views:
            if id(v) not in done:
                v.zero_()

    def _check_records(self, records: list[_Record]) -> None:
        seen: set[int] = set()
        for module, _, output, version in records:
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"{_describe(self._names.get(id(module), ''), module)} returned "
                    f"{type(output).__name__}, not a tensor; use clipping='hooks'"
                )
            if id(module) in seen:
                raise ConfigError(
                    f"{_describe(self._names.get(id(module), ''), module)} ran more than once in one "
                    "forward pass (shared weights); per-sample norms do not decompose, use clipping='hooks'"
                )
            seen.add(id(module))
            if output._version != version:
                raise ConfigError(
                    f"the output of {_describe(self._names.get(id(module), ''), module)} was modified "
                    "in place (e.g. ReLU(inplace=True)); use out-of-place activations or clipping='hooks'"
                )


class DPOptimizerFastClipping(DPOptimizer):  # type: ignore[misc]  # Opacus is untyped
    """Opacus ``DPOptimizer`` whose clipped sum was already written by the clipper.

    Opacus's own steps follow in substance: Gaussian noise of std
    ``noise_multiplier * max_grad_norm`` as Opacus's ``_generate_noise`` draws it
    (floating-point safe when ``secure_mode``; see :class:`NoiseBlocks`), division by
    ``expected_batch_size``, the step hook, the wrapped optimizer's step. Shortcuts that keep
    small models fast:

    * they act on the clipper's flat buffer once, not once per parameter (``p.grad`` and
      ``p.summed_grad`` are views of it; the noise is added in place);
    * noise is data-independent, so ``noise_block_steps`` steps' worth is drawn at once
      (four calls of the Gaussian sampler for the whole block in secure mode, into buffers kept
      between blocks) and used one row per step -- the same distribution; with ``noise_ahead``
      the next block is drawn on a helper thread meanwhile (call :meth:`close_noise` when the
      steps stop);
    * the block is divided by the expected batch size when drawn, so :meth:`pre_step`
      computes ``(sum + noise) / B`` as ``sum / B + noise / B`` in one pass;
    * ``p.grad`` stays a view of the buffer from one step to the next: it is set only when it is
      not that view already (after :meth:`zero_grad`), since assigning ``.grad`` costs checks.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clipper: FastGradientClipper,
        noise_block_steps: int = 1,
        noise_ahead: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.clipper = clipper
        self._params = list(DPOptimizer.params.fget(self))
        if [id(p) for p in self._params] != [id(p) for p in clipper.params]:
            raise ValueError("optimizer and clipper must manage the same parameters in the same order")
        self.noise_block_steps = max(1, int(noise_block_steps))
        self.noise_ahead = noise_ahead
        self._noise: NoiseBlocks | None = None  # built on the first step, then reused

    @property
    def params(self) -> list[nn.Parameter]:
        # Opacus rebuilds this list on every access; the parameter set never changes here.
        cached: list[nn.Parameter] | None = self.__dict__.get("_params")
        if cached is not None:
            return cached
        built: list[nn.Parameter] = DPOptimizer.params.fget(self)
        return built

    @property
    def accumulated_iterations(self) -> int:
        return 1

    def clip_and_accumulate(self) -> None:
        """Clipping happened in :class:`FastGradientClipper`; nothing left to do."""

    def _divisor(self) -> float:
        """What Opacus's ``scale_grad`` divides by: the expected batch size for a mean loss."""
        if self.loss_reduction == "mean":
            return float(self.expected_batch_size * self.accumulated_iterations)
        return 1.0

    def _next_noise(self) -> torch.Tensor:
        """The next step's noise, already divided by :meth:`_divisor` (one row of a block)."""
        std = self.noise_multiplier * self.max_grad_norm
        noise = self._noise
        if noise is None or noise.std != std or noise.generator is not self.generator:
            if noise is not None:
                noise.close()
            flat = self.clipper.flat_summed_grad  # (re)built when the noise settings change
            self._noise = noise = NoiseBlocks(
                flat.numel(),
                std=std,
                divisor=self._divisor(),
                block_rows=self.noise_block_steps,
                generator=self.generator,
                dtype=flat.dtype,
                device=flat.device,
                secure_mode=self.secure_mode,
                ahead=self.noise_ahead and self.generator is not None,
            )
        return noise.next_row()

    def close_noise(self) -> None:
        """Let a block being drawn ahead finish, so the generator is idle when the steps stop
        (the block is kept for the next step, if there is one)."""
        if self._noise is not None:
            self._noise.close()

    def _take_fresh(self) -> torch.Tensor:
        if not self.clipper.fresh:
            raise ValueError(
                "no fresh clipped gradient to privatise: run the clipper once before each "
                "step() and call zero_grad() after it"
            )
        self.clipper.fresh = False
        for p, view in zip(self._params, self.clipper.views):
            if p.grad is not view:  # set once; kept while the trainer skips zero_grad between steps
                p.grad = view
        return self.clipper.flat_summed_grad

    def add_noise(self) -> None:
        self._take_fresh().add_(self._next_noise(), alpha=self._divisor())

    def scale_grad(self) -> None:
        self.clipper.flat_summed_grad.div_(self._divisor())  # every p.grad is a view of it

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Opacus's add_noise + scale_grad as one pass: (sum + noise) / divisor, then the hook."""
        flat = self._take_fresh()
        torch.add(self._next_noise(), flat, alpha=1.0 / self._divisor(), out=flat)
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The buffer is overwritten by the next clipping; only the references go.
        for p in self._params:
            p.summed_grad = None
            p.grad = None
