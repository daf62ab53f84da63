"""SGD with momentum for the DP-SGD trainers, without torch's optimizer machinery.

Why: every ``torch.optim`` optimizer imports ``torch._dynamo`` (the compiler) the first time it
is built or stepped, because its methods are wrapped to keep the compiler out. That import
takes about a second, and a partner's process paid it in its first round of every job (the
in-process grid, each Ray worker of the simulation engine, each deployed ClientApp process).
Nothing here is compiled, so this optimizer does the same arithmetic as
``torch.optim.SGD(params, lr, momentum)`` (dampening 0, no Nesterov, no weight decay: the
single-tensor path torch takes on CPU, operation for operation, so the weights are
bit-identical) and is a plain object Opacus's ``DPOptimizer`` can wrap.

With :meth:`MomentumSGD.bind_flat` (the DP-SGD trainer's fast-clipping path, one epoch at a time) the
parameters, their gradients and the momentum buffers are views of three flat tensors of one layout,
and a step is the same element-wise arithmetic done as two or three operations for the whole model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from fedcustomer.privacy.dp.flat_params import FlatParameters


class MomentumSGD(torch.optim.Optimizer):
    """``torch.optim.SGD(params, lr=lr, momentum=momentum)``, stepped without ``torch._dynamo``.

    It subclasses ``Optimizer`` only so it can stand where one is expected (Opacus's wrappers
    read ``param_groups``, ``state`` and ``defaults``); the base ``__init__`` is not called,
    since it is the wrapped method that imports the compiler and patches ``step`` with a
    profiler hook.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float) -> None:
        # The base __init__ is skipped on purpose (see the class docstring); these are the
        # attributes Opacus and torch's own helpers read.
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not (lr >= 0.0 and momentum >= 0.0):
            raise ValueError(f"invalid lr {lr} or momentum {momentum}")
        self.defaults: dict[str, Any] = {"lr": lr, "momentum": momentum, "dampening": 0.0, "nesterov": False}
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults}]
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self._flat: _FlatStep | None = None

    def __repr__(self) -> str:
        group = self.param_groups[0]
        return f"MomentumSGD(lr={group['lr']}, momentum={group['momentum']})"

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update: ``buf = momentum * buf + grad`` (``buf = grad`` at first), ``p -= lr * buf``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flat = self._flat
        if flat is not None:
            if flat.ready(self.param_groups[0]["params"]):
                self._flat_step(flat)  # no tensor of it requires grad: no autograd to turn off
                return loss
            self.unbind_flat()  # gradients or parameters moved elsewhere: per parameter from now on
        self._step_each()
        return loss

    @torch.no_grad()  # type: ignore[untyped-decorator,misc,unused-ignore]
    def _step_each(self) -> None:
        """The per-parameter update, torch's single-tensor SGD path."""
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1)
                    grad = buf
                p.add_(grad, alpha=-lr)

    # -- flat mode ---------------------------------------------------------------------------
    def bind_flat(
        self, params: FlatParameters, flat_grad: torch.Tensor, grad_views: Sequence[torch.Tensor]
    ) -> bool:
        """Step on flat buffers while ``params`` is bound and every ``p.grad`` is its ``grad_views`` entry.

        ``params`` must list this optimizer's parameters in order, and ``grad_views`` must be views of
        ``flat_grad`` in the same layout. The momentum buffers become views of one flat tensor (gathered
        from the current state). Returns False, leaving the per-parameter path in use, when that is not
        possible: several parameter groups, or momentum buffers for some parameters but not all.
        A step whose gradients are not those views (or after a parameter's ``.data`` was reassigned)
        unbinds and takes the per-parameter path, which gives the same result.
        """
        self.unbind_flat()
        own = self.param_groups[0]["params"]
        if len(self.param_groups) != 1 or [id(p) for p in own] != [id(p) for p in params.params]:
            return False
        if flat_grad.numel() != sum(params.sizes) or len(grad_views) != len(own):
            raise ValueError("the flat gradient does not have the parameters' layout")
        buffers = [self.state[p].get("momentum_buffer") for p in own]
        if all(b is None for b in buffers):
            momentum = None
        elif any(b is None for b in buffers):
            return False
        else:
            momentum = torch.cat([b.reshape(-1) for b in buffers])
        self._flat = _FlatStep(params, flat_grad, list(grad_views), momentum)
        if momentum is not None:
            self._flat.publish_momentum(self.state)
        return True

    def unbind_flat(self) -> None:
        """Back to the per-parameter path; the momentum state becomes per-parameter tensors again."""
        flat, self._flat = self._flat, None
        if flat is not None and flat.momentum is not None:
            for p in flat.params.params:
                self.state[p]["momentum_buffer"] = self.state[p]["momentum_buffer"].clone()

    def _flat_step(self, flat: _FlatStep) -> None:
        """``buf = momentum * buf + grad`` (``buf = grad`` at first), ``p -= lr * buf``, on the flat tensors."""
        group = self.param_groups[0]
        lr, momentum = group["lr"], group["momentum"]
        grad = flat.grad
        if momentum != 0:
            if flat.momentum is None:
                flat.momentum = grad.clone()
                flat.publish_momentum(self.state)
            else:
                flat.momentum.mul_(momentum).add_(grad, alpha=1)
            grad = flat.momentum
        flat.params.flat.add_(grad, alpha=-lr)  # type: ignore[union-attr]  # ready() checked it is bound

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.requires_grad_(False)
                    p.grad.zero_()


class _FlatStep:
    """The flat tensors of a bound :class:`MomentumSGD`: parameters, gradient and momentum."""

    def __init__(
        self,
        params: FlatParameters,
        grad: torch.Tensor,
        grad_views: list[torch.Tensor],
        momentum: torch.Tensor | None,
    ) -> None:
        self.params, self.grad, self.grad_views, self.momentum = params, grad, grad_views, momentum

    def ready(self, own: list[torch.Tensor]) -> bool:
        """Every gradient is its flat view and every parameter still lives in the flat tensor."""
        for p, view in zip(own, self.grad_views):
            if p.grad is not view:
                return False
        return self.params.intact()

    def publish_momentum(self, state: defaultdict[torch.Tensor, Any]) -> None:
        """Per-parameter ``momentum_buffer`` entries as views of the flat momentum (what torch reads)."""
        assert self.momentum is not None
        for p, v in zip(self.params.params, torch.split(self.momentum, self.params.sizes)):
            state[p]["momentum_buffer"] = v.view(p.shape)
