"""DP-SGD engine: fast clipping equals Opacus, steps are what the accountant is charged."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from fedcustomer.errors import ConfigError, DataError
from fedcustomer.models.metrics import classification_metrics
from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP
from fedcustomer.privacy.dp import dpsgd
from fedcustomer.privacy.dp.dpsgd import (
    DPTrainer,
    EpochStats,
    GeometricPoissonSampler,
    PlainTrainer,
    secure_generator,
)
from fedcustomer.privacy.dp.fast_clipping import FastGradientClipper

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

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


# -- one step equals the textbook DP-SGD step ----------------------------------------------
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


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_one_step_with_tiny_noise_equals_manual_clipped_mean_sgd_step(clipping):
    X, y = data(n=24)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    expected_grads = manual_clipped_mean_grads(copy.deepcopy(model), X, y, nn.BCEWithLogitsLoss(), 0.5)
    # batch_size = n makes q = 1: every row is in the single batch of the epoch.
    t = trainer(
        model, X, y, batch_size=len(X), lr=0.3, noise_multiplier=1e-7, max_grad_norm=0.5, clipping=clipping
    )
    stats = t.train_epoch()
    assert stats.steps == 1 and stats.examples_seen == len(X)
    for p0, g, p1 in zip(before, expected_grads, t.model.parameters()):
        assert torch.allclose(p1.detach(), p0 - 0.3 * g, atol=1e-6)
    assert any(float(g.abs().max()) > 1e-3 for g in expected_grads)


# -- noise -----------------------------------------------------------------------------------
def zero_gradient_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out * 0.0).mean()


@pytest.mark.parametrize("clipping", ("fast", "hooks"))
def test_noise_std_on_zero_gradient_model_is_sigma_times_bound_over_batch(clipping):
    torch.manual_seed(0)
    model = nn.Linear(100, 100)  # 10,100 coordinates of pure noise
    X, y = torch.randn(40, 100), torch.zeros(40)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    t = trainer(
        model,
        X,
        y,
        zero_gradient_loss,
        batch_size=40,
        lr=1.0,
        noise_multiplier=1.3,
        max_grad_norm=2.0,
        clipping=clipping,
    )
    t.train_epoch()  # one step; SGD's first momentum step is a plain step
    delta = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    expected = 1.3 * 2.0 / 40
    # std of a sample std with 10,100 draws is ~0.7 %; allow 5 %.
    assert abs(float(delta.std()) / expected - 1.0) < 0.05
    assert abs(float(delta.mean())) < 4 * expected / math.sqrt(delta.numel())


@pytest.mark.parametrize("clipping", ("fast", "hooks"))
def test_noise_is_opacus_floating_point_safe_noise_from_the_noise_generator(clipping):
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    X, y = torch.randn(10, 5), torch.zeros(10)
    before = [p.detach().clone() for p in model.parameters()]
    trainer(
        model,
        X,
        y,
        zero_gradient_loss,
        batch_size=10,
        lr=1.0,
        noise_multiplier=0.7,
        max_grad_norm=3.0,
        clipping=clipping,
        noise_generator=gen(42),
    ).train_epoch()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    g = gen(42)
    if clipping == "fast":  # one draw for the whole (1-step) block, parameters flattened in order
        noise = _generate_noise(0.7 * 3.0, torch.empty(1, delta.numel()), g, secure_mode=True)[0]
    else:  # Opacus draws per parameter
        noise = torch.cat([_generate_noise(0.7 * 3.0, b, g, secure_mode=True).flatten() for b in before])
    assert torch.allclose(delta, -noise / 10, atol=1e-6)
    plain = _generate_noise(0.7 * 3.0, torch.empty(1, delta.numel()), gen(42), secure_mode=False)[0]
    assert not torch.allclose(delta, -plain / 10, atol=1e-3)  # the insecure sampler would differ


def test_noise_comes_from_the_noise_generator_only():
    runs = []
    for noise_seed in (5, 5, 6):
        model = mlp()
        trainer(model, noise_generator=gen(noise_seed), sampling_generator=gen(9)).train_epoch()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_secure_generator_is_seeded_from_os_urandom(monkeypatch):
    monkeypatch.setattr(dpsgd.os, "urandom", lambda n: bytes(range(1, n + 1)))
    g = secure_generator()
    assert g.initial_seed() == int.from_bytes(bytes(range(1, 9)), "little")


def test_secure_generators_differ_between_calls():
    a, b = secure_generator(), secure_generator()
    assert a.initial_seed() != b.initial_seed()
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))


def test_default_generators_are_os_seeded_not_the_global_torch_seed():
    X, y = data()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = mlp()
        DPTrainer(
            model,
            X,
            y,
            nn.BCEWithLogitsLoss(),
            batch_size=16,
            lr=0.1,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
        ).train_epoch()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(results[0], results[1])


# -- Poisson sampling and steps --------------------------------------------------------------
@pytest.mark.parametrize("n,batch", [(64, 16), (300, 100), (1000, 7), (50, 50), (24000, 256)])
def test_steps_per_epoch_is_int_one_over_q_and_every_step_is_counted(n, batch):
    X, y = torch.randn(n, 3), torch.zeros(n)
    t = trainer(LogisticRegression(3), X, y, batch_size=batch)
    assert t.sample_rate == batch / n
    assert t.steps_per_epoch == int(1 / (batch / n))
    if n <= 1000:
        stats = t.train_epoch()
        stats2 = t.train_epoch()
        assert stats.steps == stats2.steps == t.steps_per_epoch
        assert t.steps_taken == 2 * t.steps_per_epoch


@pytest.mark.parametrize("sampler", dpsgd.SAMPLERS)
def test_poisson_batch_sizes_vary_around_the_expected_size(sampler):
    sizes = []

    def recording_loss(out, target):
        sizes.append(len(out))
        return nn.functional.binary_cross_entropy_with_logits(out, target)

    X, y = torch.randn(400, 3), torch.zeros(400)
    t = trainer(LogisticRegression(3), X, y, recording_loss, batch_size=40, sampler=sampler)
    for _ in range(10):
        t.train_epoch()
    assert len(set(sizes)) > 5
    assert abs(np.mean(sizes) - 40) < 4 * math.sqrt(40 * 0.9 / len(sizes)) + 0.5


def sampler_stats(n: int, q: float, draws: int, chunk: int | None = None, seed: int = 0):
    s = GeometricPoissonSampler(num_samples=n, sample_rate=q, generator=gen(seed), steps=draws)
    if chunk is not None:
        s._chunk = lambda: chunk  # force the "ran out of gaps" continuation path
    counts, sizes = torch.zeros(n), []
    for idx in s:
        assert idx.dtype == torch.long
        assert bool((idx[1:] > idx[:-1]).all()), "indices must be strictly increasing (no repeats)"
        assert len(idx) == 0 or (int(idx[0]) >= 0 and int(idx[-1]) < n)
        counts[idx] += 1
        sizes.append(len(idx))
    return counts / draws, np.array(sizes)


@pytest.mark.parametrize("chunk", [None, 3])
def test_geometric_sampler_includes_every_row_with_probability_q(chunk):
    n, q, draws = 40, 0.2, 4000
    freq, sizes = sampler_stats(n, q, draws, chunk)
    tol = 4.5 * math.sqrt(q * (1 - q) / draws)
    assert float((freq - q).abs().max()) < tol  # first and last rows included
    assert abs(sizes.mean() - n * q) < 4.5 * math.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.15  # binomial variance


def test_geometric_sampler_with_q_one_takes_every_row():
    s = GeometricPoissonSampler(num_samples=7, sample_rate=1.0, generator=gen(0))
    assert [idx.tolist() for idx in s] == [list(range(7))]


def test_geometric_sampler_has_opacus_step_count():
    assert len(GeometricPoissonSampler(num_samples=300, sample_rate=100 / 300, generator=gen(0))) == 3


# -- empty batches ---------------------------------------------------------------------------
@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_empty_batch_counts_as_a_step_and_still_adds_noise(clipping):
    X, y = data()
    model = mlp()
    t = trainer(model, X, y, clipping=clipping)
    t._loader = [(X[:0], y[:0])]  # what Poisson sampling yields when it draws no row
    before = [p.detach().clone() for p in model.parameters()]
    stats = t.train_epoch()
    assert stats.steps == 1 and stats.examples_seen == 0 and math.isnan(stats.mean_loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert t.steps_taken == 1


def test_tiny_sample_rate_with_many_empty_batches_trains_without_error():
    sizes = []

    def recording_loss(out, target):
        sizes.append(len(out))
        return nn.functional.binary_cross_entropy_with_logits(out, target)

    X, y = torch.randn(30, 3), torch.zeros(30)
    t = trainer(LogisticRegression(3), X, y, recording_loss, batch_size=1)
    stats = t.train_epoch()
    assert stats.steps == 30
    assert stats.examples_seen == sum(sizes)
    assert len(sizes) < 30  # some steps drew no row (P(none empty) ~ 1e-6), yet all were counted
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


# -- FedProx ---------------------------------------------------------------------------------
def distance(model: nn.Module, anchor: list[torch.Tensor]) -> float:
    return float(sum((p.detach() - a).square().sum() for p, a in zip(model.parameters(), anchor)))


@pytest.mark.parametrize("clipping", ("fast", "hooks"))
def test_proximal_term_pulls_weights_toward_the_anchor(clipping):
    X, y = data()
    anchor = [torch.zeros_like(p) for p in mlp().parameters()]
    moved = {}
    for mu in (0.0, 1.0):
        model = mlp()
        start = distance(model, anchor)
        t = trainer(
            model,
            X,
            y,
            zero_gradient_loss,
            lr=0.05,
            noise_multiplier=1e-6,
            clipping=clipping,
            proximal_mu=mu,
            anchor=anchor,
        )
        t.train_epoch()
        moved[mu] = distance(model, anchor) / start
    assert moved[1.0] < 0.9  # pulled in
    assert abs(moved[0.0] - 1.0) < 1e-6  # no data gradient, no pull: unchanged


def test_proximal_default_anchor_is_the_initial_weights():
    X, y = data()
    model = mlp()
    initial = [p.detach().clone() for p in model.parameters()]
    plain = PlainTrainer(copy.deepcopy(model), X, y, nn.BCEWithLogitsLoss(), batch_size=16, lr=0.5, seed=0)
    prox = PlainTrainer(model, X, y, nn.BCEWithLogitsLoss(), batch_size=16, lr=0.5, seed=0, proximal_mu=5.0)
    for _ in range(3):
        plain.train_epoch()
        prox.train_epoch()
    assert distance(prox.model, initial) < distance(plain.model, initial)


def test_plain_trainer_proximal_step_equals_manual_formula():
    X, y = data(n=8)
    model = LogisticRegression(6)
    anchor = [torch.ones_like(p) for p in model.parameters()]
    grads = [
        g * len(X) for g in manual_clipped_mean_grads(copy.deepcopy(model), X, y, nn.BCEWithLogitsLoss(), 1e9)
    ]
    before = [p.detach().clone() for p in model.parameters()]
    PlainTrainer(
        model, X, y, nn.BCEWithLogitsLoss(), batch_size=8, lr=0.1, proximal_mu=0.5, anchor=anchor, seed=0
    ).train_epoch()
    for p0, g, a, p1 in zip(before, grads, anchor, model.parameters()):
        assert torch.allclose(p1.detach(), p0 - 0.1 * (g / len(X) + 0.5 * (p0 - a)), atol=1e-6)


# -- training works --------------------------------------------------------------------------
def synthetic_logistic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    w = np.array([1.5, -1.0, 0.8, 0.0, 0.5], dtype=np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ w)))).astype(np.float32)
    return torch.from_numpy(X), torch.from_numpy(y)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.02)])
def test_dp_trainer_learns_a_simple_logistic_problem(optimizer, lr):
    X, y = synthetic_logistic(3000, seed=7)
    Xte, yte = synthetic_logistic(2000, seed=8)
    torch.manual_seed(0)
    t = trainer(
        LogisticRegression(5),
        X,
        y,
        batch_size=64,
        lr=lr,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        optimizer=optimizer,
    )
    losses = [t.train_epoch().mean_loss for _ in range(3)]
    with torch.no_grad():
        p = torch.sigmoid(t.model(Xte)).numpy()
    auc = classification_metrics(yte.numpy(), p)["auc"]
    assert auc > 0.7
    assert losses[-1] < losses[0]


def test_epoch_stats_report_loss_and_examples():
    X, y = data(n=200)
    t = trainer(mlp(), X, y, batch_size=20)
    stats = t.train_epoch()
    assert isinstance(stats, EpochStats)
    assert stats.steps == 10 and 100 < stats.examples_seen < 300
    assert 0.1 < stats.mean_loss < 2.0
    with pytest.raises(AttributeError):
        stats.steps = 3  # frozen


def test_plain_trainer_visits_every_row_once_per_epoch():
    X, y = data(n=50)
    t = PlainTrainer(mlp(), X, y, nn.BCEWithLogitsLoss(), batch_size=16, lr=0.1, seed=0)
    stats = t.train_epoch()
    assert stats == EpochStats(steps=4, mean_loss=stats.mean_loss, examples_seen=50)
    assert t.steps_per_epoch == 4


def test_model_property_is_the_original_module_and_fast_hooks_are_removed():
    model = mlp()
    t = trainer(model)
    t.train_epoch()
    assert t.model is model
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in model.modules())


def test_hooks_mode_model_property_is_unwrapped():
    model = mlp()
    t = trainer(model, clipping="hooks")
    t.train_epoch()
    assert t.model is model and type(t.model) is RepaymentMLP


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


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(noise_multiplier=0.0), "noise_multiplier must be > 0"),
        (dict(noise_multiplier=-1.0), "noise_multiplier must be > 0"),
        (dict(noise_multiplier=float("nan")), "noise_multiplier must be a finite"),
        (dict(noise_multiplier="1"), "noise_multiplier must be a finite"),
        (dict(max_grad_norm=0.0), "max_grad_norm must be > 0"),
        (dict(max_grad_norm=-2), "max_grad_norm must be > 0"),
        (dict(max_grad_norm=float("inf")), "max_grad_norm must be a finite"),
        (dict(batch_size=0), "batch_size must be between 1 and the number of rows"),
        (dict(batch_size=65), r"between 1 and the number of rows \(64\)"),
        (dict(batch_size=2.5), "batch_size must be an integer"),
        (dict(batch_size=True), "batch_size must be an integer"),
        (dict(lr=0.0), "lr must be > 0"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(clipping="magic"), "unknown clipping"),
        (dict(sampler="uniform"), "unknown sampler"),
        (dict(proximal_mu=-0.1), "proximal_mu must be a finite number >= 0"),
        (dict(proximal_mu=1.0, anchor=[torch.zeros(1)]), "anchor has 1 tensors"),
        (dict(loss_fn=nn.BCEWithLogitsLoss(reduction="sum")), "reduction='mean'"),
        (dict(loss_fn=zero_gradient_loss, clipping="ghost"), "clipping='ghost' needs a torch loss module"),
        (dict(model=nn.ReLU()), "no trainable parameters"),
    ],
)
def test_invalid_configuration_raises_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        trainer(**kw)


def test_anchor_with_wrong_shape_names_the_parameter():
    model = mlp()
    anchor = [torch.zeros_like(p) for p in model.parameters()]
    anchor[2] = torch.zeros(3)
    with pytest.raises(ConfigError, match=r"anchor\[2\] has shape \(3,\)"):
        trainer(model, proximal_mu=0.1, anchor=anchor)


@pytest.mark.parametrize(
    "X,y,match",
    [
        (torch.zeros(0, 6), torch.zeros(0), "no rows"),
        (torch.zeros(10, 6), torch.zeros(9), "10 rows but y has 9 labels"),
        (np.zeros((10, 6)), torch.zeros(10), "must be torch tensors"),
        (torch.tensor([[0.0] * 6, [float("nan")] * 6]), torch.zeros(2), r"X has a NaN.*row 1"),
        (
            torch.zeros(4, 6),
            torch.tensor([0.0, 1.0, float("inf"), 0.0]),
            r"y has a NaN or infinite value \(first at row 2\)",
        ),
    ],
)
@pytest.mark.parametrize("private", [True, False])
def test_invalid_data_raises_data_error(X, y, match, private):
    with pytest.raises(DataError, match=match):
        if private:
            trainer(mlp(), X, y, batch_size=1)
        else:
            PlainTrainer(mlp(), X, y, nn.BCEWithLogitsLoss(), batch_size=1, lr=0.1)


def test_plain_trainer_validates_its_configuration():
    X, y = data()
    with pytest.raises(ConfigError, match="batch_size"):
        PlainTrainer(mlp(), X, y, nn.BCEWithLogitsLoss(), batch_size=100, lr=0.1)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        PlainTrainer(mlp(), X, y, nn.BCEWithLogitsLoss(), batch_size=8, lr=0.1, optimizer="lbfgs")
    with pytest.raises(ConfigError, match="lr must be > 0"):
        PlainTrainer(mlp(), X, y, nn.BCEWithLogitsLoss(), batch_size=8, lr=-1)
