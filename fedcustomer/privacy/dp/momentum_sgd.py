"""SGD with momentum for the DP-SGD trainers, without torch's optimizer machinery.

Why: every ``torch.optim`` optimizer imports ``torch._dynamo`` (the compiler) the first time it
is built or stepped, because its methods are wrapped to keep the compiler out. That import
takes about a second, and a partner's process paid it in its first round of every job (the
in-process grid, each Ray worker of the simulation engine, each deployed ClientApp process).
Nothing here is compiled, so this optimizer does the same arithmetic as
``torch.optim.SGD(params, lr, momentum)`` (dampening 0, no Nesterov, no weight decay: the
single-tensor path torch takes on CPU, operation for operation, so the weights are
bit-identical) and is a plain object Opacus's ``DPOptimizer`` can wrap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch


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

    def __repr__(self) -> str:
        group = self.param_groups[0]
        return f"MomentumSGD(lr={group['lr']}, momentum={group['momentum']})"

    @torch.no_grad()  # type: ignore[untyped-decorator,misc,unused-ignore]
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update: ``buf = momentum * buf + grad`` (``buf = grad`` at first), ``p -= lr * buf``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        return loss

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
