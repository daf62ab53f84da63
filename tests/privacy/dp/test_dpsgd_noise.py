"""DP-SGD steps and noise: a step is the clipped mean plus Opacus's noise, drawn from the secure generator only."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from fedcustomer.privacy.dp import dpsgd
from fedcustomer.privacy.dp.dpsgd import DPTrainer, secure_generator
from tests.privacy.dp.dpsgd_helpers import (
    CLIPPINGS,
    data,
    gen,
    manual_clipped_mean_grads,
    mlp,
    trainer,
    zero_gradient_loss,
)

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


# -- one step equals the textbook DP-SGD step ----------------------------------------------


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
