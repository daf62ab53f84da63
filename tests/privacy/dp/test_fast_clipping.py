"""Fast clipping's backward: the direct engine call gives what torch.autograd.grad gives, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedcustomer.models.repayment import RepaymentMLP
from fedcustomer.privacy.dp import fast_clipping
from fedcustomer.privacy.dp.fast_clipping import FastGradientClipper

torch.set_num_threads(1)


def _public_grads(loss: torch.Tensor, outputs: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    return torch.autograd.grad(loss, outputs, allow_unused=True)


def _run(model: nn.Module, batches, loss_fn, *, public: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Norms and clipped sums of each batch (the model is not stepped)."""
    clipper = FastGradientClipper(model)
    if public:
        clipper._output_grads = _public_grads  # type: ignore[method-assign]
    clipper.attach()
    out = []
    try:
        for X, y in batches:
            norms = clipper.clip_and_accumulate(loss_fn(model(X), y), batch_size=len(X), max_grad_norm=0.5)
            out.append((norms.clone(), clipper.flat_summed_grad.clone()))
    finally:
        clipper.detach()
    return out


def _batches(n: int = 5, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sizes = [17, 1, 40, 8, 29][:n]
    return [(torch.randn(b, d, generator=gen), (torch.rand(b, generator=gen) > 0.5).float()) for b in sizes]


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return RepaymentMLP(6, hidden=(9, 5))


def test_engine_call_equals_torch_autograd_grad_bit_for_bit_over_several_batches(monkeypatch) -> None:
    calls = []
    engine = fast_clipping._ENGINE

    class Spy:
        def run_backward(self, *args):
            calls.append(1)
            return engine.run_backward(*args)

    monkeypatch.setattr(fast_clipping, "_ENGINE", Spy())
    model, batches = _mlp(), _batches()
    direct = _run(model, batches, nn.BCEWithLogitsLoss(), public=False)
    public = _run(copy.deepcopy(model), batches, nn.BCEWithLogitsLoss(), public=True)
    assert len(calls) == len(batches)  # every batch took the engine path
    for (dn, ds), (pn, ps) in zip(direct, public):
        assert torch.equal(dn, pn) and torch.equal(ds, ps)
    assert any(bool(ds.abs().sum() > 0) for _, ds in direct)


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda out, y: nn.functional.binary_cross_entropy_with_logits(out, y).double(),  # other dtype
        lambda out, y: nn.functional.binary_cross_entropy_with_logits(out, y).reshape(1),  # not 0-dim
    ],
)
def test_other_losses_take_the_public_path_with_the_same_result(monkeypatch, loss_fn) -> None:
    class Refuse:
        def run_backward(self, *args):
            raise AssertionError("the engine path was taken")

    monkeypatch.setattr(fast_clipping, "_ENGINE", Refuse())
    model, batches = _mlp(), _batches(3)
    direct = _run(model, batches, loss_fn, public=False)
    public = _run(copy.deepcopy(model), batches, loss_fn, public=True)
    for (dn, ds), (pn, ps) in zip(direct, public):
        assert torch.equal(dn, pn) and torch.equal(ds, ps)


def test_without_the_engine_attribute_the_public_path_is_used(monkeypatch) -> None:
    monkeypatch.setattr(fast_clipping, "_ENGINE", None)
    model, batches = _mlp(), _batches(2)
    direct = _run(model, batches, nn.BCEWithLogitsLoss(), public=False)
    public = _run(copy.deepcopy(model), batches, nn.BCEWithLogitsLoss(), public=True)
    for (dn, ds), (pn, ps) in zip(direct, public):
        assert torch.equal(dn, pn) and torch.equal(ds, ps)


def test_a_loss_that_needs_no_gradient_is_refused_as_torch_refuses_it() -> None:
    model = _mlp()
    clipper = FastGradientClipper(model)
    clipper.attach()
    try:
        model(torch.randn(4, 6))  # records the layers' outputs
        with pytest.raises(RuntimeError, match="does not require grad"):
            clipper.clip_and_accumulate(torch.zeros(()), batch_size=4, max_grad_norm=1.0)
    finally:
        clipper.detach()
