"""DP-SGD per-sample clipping: the fast clipper equals Opacus's hooks, and refuses what it cannot clip exactly."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP
from fedcustomer.privacy.dp.fast_clipping import FastGradientClipper
from tests.privacy.dp.dpsgd_helpers import data, gen, mlp, trainer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def opacus_reference(model: nn.Module, X, y, loss_fn, max_grad_norm: float):
    """Per-sample norms and clipped sums computed by Opacus's own hooks + DPOptimizer."""
    ref = copy.deepcopy(model)
    gsm = GradSampleModule(ref, batch_first=True, loss_reduction="mean")
    opt = DPOptimizer(
        torch.optim.SGD(ref.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=len(X),
    )
    loss_fn(gsm(X), y).backward()
    params = [p for p in ref.parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.reshape(len(X), -1).norm(dim=1) for p in params], 1).norm(dim=1)
    opt.clip_and_accumulate()
    sums = [p.summed_grad.clone() for p in params]
    gsm._close()
    return norms, sums


def fast_result(model: nn.Module, X, y, loss_fn, max_grad_norm: float):
    clipper = FastGradientClipper(model)
    clipper.attach()
    try:
        loss = loss_fn(model(X), y)
        norms = clipper.clip_and_accumulate(loss, batch_size=len(X), max_grad_norm=max_grad_norm)
    finally:
        clipper.detach()
    return norms, [p.summed_grad.clone() for p in model.parameters() if p.requires_grad]


def assert_same(fast, ref):
    (fn, fs), (rn, rs) = fast, ref
    assert torch.allclose(fn, rn, rtol=1e-5, atol=1e-6)
    assert len(fs) == len(rs)
    for a, b in zip(fs, rs):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# -- fast clipping equals Opacus ---------------------------------------------------------
class WithLayerNorm(nn.Module):
    """Linear + an Opacus-sampled layer (LayerNorm) + Linear without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 1, bias=False)

    def forward(self, x):
        return self.out(self.norm(torch.relu(self.inp(x)))).squeeze(-1)


def frozen_first_layer() -> nn.Module:
    model = mlp()
    model.net[0].weight.requires_grad_(False)
    return model


def frozen_hidden_bias() -> nn.Module:
    model = mlp()
    model.net[2].bias.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: mlp(),
        lambda: LogisticRegression(6),
        lambda: mlp(hidden=(5,)),
        WithLayerNorm,
        frozen_first_layer,
        frozen_hidden_bias,
    ],
    ids=["mlp", "logreg", "mlp-1-hidden", "layernorm-fallback", "frozen-weight", "frozen-bias"],
)
def test_fast_norms_and_clipped_sums_equal_opacus_hooks_with_mixed_clipping(make_model):
    torch.manual_seed(3)
    model = make_model()
    X, y = data(n=32)
    loss_fn = nn.BCEWithLogitsLoss()
    ref_norms, _ = opacus_reference(model, X, y, loss_fn, 1.0)
    # A bound between the smallest and largest norm: some samples clipped, some not.
    bound = float(ref_norms.median())
    assert (ref_norms > bound).any() and (ref_norms < bound).any()
    assert_same(fast_result(model, X, y, loss_fn, bound), opacus_reference(model, X, y, loss_fn, bound))


def test_fast_equals_opacus_when_nothing_is_clipped_and_when_everything_is():
    model, (X, y), loss_fn = mlp(), data(n=20), nn.BCEWithLogitsLoss()
    for bound in (1e6, 1e-4):
        assert_same(fast_result(model, X, y, loss_fn, bound), opacus_reference(model, X, y, loss_fn, bound))


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    batch=st.integers(1, 12),
    bound=st.floats(0.01, 10.0),
    seed=st.integers(0, 1000),
)
def test_fast_clipping_matches_opacus_for_random_relu_mlps(widths, batch, bound, seed):
    torch.manual_seed(seed)
    model = RepaymentMLP(4, hidden=widths)
    g = gen(seed)
    X, y = torch.randn(batch, 4, generator=g), (torch.rand(batch, generator=g) < 0.5).float()
    loss_fn = nn.BCEWithLogitsLoss()
    assert_same(fast_result(model, X, y, loss_fn, bound), opacus_reference(model, X, y, loss_fn, bound))


@pytest.mark.parametrize("batch", [1, 2, 57, 256])
def test_fast_clipping_equals_opacus_on_the_benchmark_shape_below_and_above_the_bound(batch):
    """23-64-32-1 as in the benchmark: per-layer norms combined by hypot, clip factors in the matmuls."""
    torch.manual_seed(batch)
    model = RepaymentMLP(23, hidden=(64, 32))
    X, y = data(n=batch, d=23, seed=batch)
    loss_fn = nn.BCEWithLogitsLoss()
    ref_norms, _ = opacus_reference(model, X, y, loss_fn, 1.0)
    low, high = float(ref_norms.min()), float(ref_norms.max())
    bounds = [0.5 * low, 2.0 * high] if batch == 1 else [math.sqrt(low * high)]
    for bound in bounds:
        fast = fast_result(model, X, y, loss_fn, bound)
        assert_same(fast, opacus_reference(model, X, y, loss_fn, bound))
    if batch > 1:  # the geometric mean lies strictly between: rows on both sides of the bound
        assert (ref_norms > bounds[0]).any() and (ref_norms < bounds[0]).any()


def test_fast_clipping_of_an_empty_batch_is_zero():
    model, (X, y) = mlp(), data(n=8)
    norms, sums = fast_result(model, X[:0], y[:0], nn.BCEWithLogitsLoss(), 1.0)
    assert norms.shape == (0,)
    assert all(not s.any() for s in sums)


def test_clipped_norm_of_each_sample_is_at_most_the_bound():
    model, (X, y) = mlp(), data(n=24)
    clipper = FastGradientClipper(model)
    clipper.attach()
    sums = []
    for i in range(len(X)):  # one-sample batches: the summed grad is that sample's clipped grad
        norms = clipper.clip_and_accumulate(
            nn.BCEWithLogitsLoss()(model(X[i : i + 1]), y[i : i + 1]), batch_size=1, max_grad_norm=0.3
        )
        sums.append((float(norms[0]), float(clipper.flat_summed_grad.norm())))
    clipper.detach()
    assert all(clipped <= 0.3 + 1e-5 for _, clipped in sums)
    assert any(raw > 0.3 for raw, _ in sums)
    assert all(math.isclose(clipped, raw, rel_tol=1e-4) for raw, clipped in sums if raw < 0.29)


# -- fast clipping refuses what it cannot do -------------------------------------------------
class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return x @ self.w


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x)))).squeeze(-1)


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(self.a(torch.relu(self.a(x)))).squeeze(-1)


def test_fast_clipping_refuses_a_layer_without_a_per_sample_rule():
    with pytest.raises(ConfigError, match=r"Custom.*clipping='hooks'"):
        trainer(Custom())


def test_hooks_clipping_accepts_a_custom_layer_through_opacus_fallback():
    stats = trainer(Custom(), clipping="hooks").train_epoch()
    assert stats.steps == 4


def test_fast_clipping_refuses_tied_weights():
    with pytest.raises(ConfigError, match="shares a parameter"):
        trainer(Tied())


def test_fast_clipping_refuses_a_layer_called_twice_per_forward():
    with pytest.raises(ConfigError, match="more than once"):
        trainer(Twice()).train_epoch()


def test_fast_clipping_refuses_in_place_activation_and_leaves_no_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(inplace=True), nn.Linear(4, 1), nn.Flatten(0))
    with pytest.raises(ConfigError, match="in place"):
        trainer(model).train_epoch()
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in model.modules())


def test_optimizer_refuses_a_step_without_fresh_clipping():
    t = trainer()
    with pytest.raises(ValueError, match="fresh clipped gradient"):
        t._optimizer.step()
