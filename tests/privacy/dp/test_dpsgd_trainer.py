"""The DP and plain trainers: proximal term, learning, epoch statistics, the wrapped model, configuration checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedcustomer.errors import ConfigError, DataError
from fedcustomer.models.metrics import classification_metrics
from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP
from fedcustomer.privacy.dp.dpsgd import EpochStats, PlainTrainer
from tests.privacy.dp.dpsgd_helpers import data, manual_clipped_mean_grads, mlp, trainer, zero_gradient_loss

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_finite_check_agrees_with_isfinite_at_every_edge(dtype):
    """The trainers' per-round finiteness check (sum first, element-wise only if the sum is not finite)
    gives torch.isfinite's answer, also when finite values overflow the sum or +inf and -inf cancel."""
    from fedcustomer.privacy.dp.dpsgd import _all_finite

    big = torch.finfo(dtype).max
    cases = [
        torch.zeros(5, 3, dtype=dtype),
        torch.full((4, 3), big, dtype=dtype),  # finite, but the sum overflows to inf
        torch.tensor([big, -big, big, big], dtype=dtype),
        torch.tensor([float("inf"), float("-inf"), 1.0], dtype=dtype),  # the sum is NaN
        torch.tensor([1.0, float("nan")], dtype=dtype),
        torch.tensor([float("-inf")], dtype=dtype),
        torch.zeros(3, 0, dtype=dtype),
    ]
    generator = torch.Generator().manual_seed(7)
    for _ in range(200):
        t = (torch.randn(6, 4, generator=generator) * 1e3).to(dtype)
        mask = torch.rand(6, 4, generator=generator)
        t[mask < 0.05] = float("nan")
        t[(mask >= 0.05) & (mask < 0.08)] = float("inf")
        t[(mask >= 0.08) & (mask < 0.1)] = float("-inf")
        cases.append(t)
    for t in cases:
        assert _all_finite(t) == bool(torch.isfinite(t).all())


def test_matrix_whose_finite_values_overflow_the_sum_trains():
    """Finite values whose sum overflows are accepted (the check falls back to the exact test)."""
    big = torch.finfo(torch.float32).max / 4
    X = torch.full((8, 6), big)
    trainer(mlp(), X, torch.zeros(8), batch_size=2)
