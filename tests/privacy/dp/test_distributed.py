"""Distributed DP-SGD's step: noise shares, clipped sums, quantisation bounds, both guarantees."""

import math

import pytest
import torch
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.privacy.dp.accounting import GaussianSteps, epsilon
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger


def _step(**kw) -> dd.DistributedStep:
    base = dict(noise_multiplier=1.3, sample_rate=0.05, max_grad_norm=0.7, min_survivors=4)
    return dd.DistributedStep(**(base | kw))


def test_partner_noise_shares_sum_to_the_full_noise_variance() -> None:
    step = _step()
    zeros = [torch.zeros(50_000, dtype=torch.float64)]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(step.min_survivors)]
    total = sum(dd.add_noise_share(zeros, step, g)[0] for g in gens)
    expected = (step.noise_multiplier * step.max_grad_norm) ** 2
    # sd of a variance estimate over N draws is var * sqrt(2 / N) ~ 0.6%: 3% is > 4 sd
    assert float(total.var()) == pytest.approx(expected, rel=0.03)
    assert abs(float(total.mean())) < 5 * math.sqrt(expected / 50_000)
    one = dd.add_noise_share(zeros, step, torch.Generator().manual_seed(7))[0]
    assert float(one.var()) == pytest.approx(expected / step.min_survivors, rel=0.03)


def test_fewer_contributions_than_n_min_carry_short_noise() -> None:
    step = _step(min_survivors=3)
    zeros = [torch.zeros(50_000, dtype=torch.float64)]
    short = sum(dd.add_noise_share(zeros, step, torch.Generator().manual_seed(i))[0] for i in range(2))
    expected = (step.noise_multiplier * step.max_grad_norm) ** 2
    assert float(short.var()) == pytest.approx(expected * 2 / 3, rel=0.03)


def test_clipped_sum_is_the_sum_of_clipped_per_example_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    X, y = torch.randn(40, 5) * 3, (torch.rand(40, 1) > 0.5).float()
    loss = nn.BCEWithLogitsLoss()
    step = _step(sample_rate=1.0, max_grad_norm=0.1)
    sums, batch = dd.clipped_gradient_sum(model, loss, X, y, step, torch.Generator().manual_seed(1))
    assert batch == 40
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(40):
        model.zero_grad()
        loss(model(X[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, 0.1 / (float(norm) + 1e-6))
        for e, g in zip(expected, grads):
            e += g * factor
    for s, e in zip(sums, expected):
        assert torch.allclose(s, e, atol=1e-5)
    total = math.sqrt(sum(float((s**2).sum()) for s in sums))
    assert total <= 40 * 0.1 + 1e-5


def test_poisson_sample_rate_is_respected() -> None:
    model = nn.Linear(3, 1)
    X, y = torch.randn(20_000, 3), torch.rand(20_000, 1)
    step = _step(sample_rate=0.02)
    sizes = [
        dd.clipped_gradient_sum(model, nn.MSELoss(), X, y, step, torch.Generator().manual_seed(s))[1]
        for s in range(20)
    ]
    assert sum(sizes) / len(sizes) == pytest.approx(400, rel=0.05)


def test_charged_guarantee_follows_the_partners_trust() -> None:
    untrusted, trusted = _step(), _step(trust_secagg=True)
    assert untrusted.charged_steps() == GaussianSteps(1.3 / 2, 0.05, 1)
    assert trusted.charged_steps() == GaussianSteps(1.3, 0.05, 1)
    assert untrusted.details()["charged"] == "single_update"
    assert trusted.details()["charged"] == "coordinator"


def test_both_epsilons_recompose_the_ledger_under_each_view(tmp_path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(100.0, 1e-5))
    earlier = GaussianSteps(2.0, 0.1, 30)  # a local-noise job before
    ledger.charge_gaussian("earlier", earlier)
    step = _step(trust_secagg=True)
    for r in range(5):
        ledger.charge_gaussian(
            f"r{r}",
            step.charged_steps(),
            mechanism=dd.MECHANISM,
            details=step.details(),
            event_probability=step.charged_event_probability(),
        )
    eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), 1e-5)
    assert eps_a == pytest.approx(epsilon([earlier, GaussianSteps(1.3, 0.05, 5)], 1e-5))
    assert eps_b == pytest.approx(epsilon([earlier, GaussianSteps(0.65, 0.05, 5)], 1e-5))
    assert eps_a == pytest.approx(ledger.spent().epsilon, rel=1e-12)  # trusted: the ledger charged view (a)
    assert eps_b > eps_a
    with_next = dd.both_epsilons(ledger.all_charges(), 1e-5, extra=step)
    assert with_next[0] == pytest.approx(epsilon([earlier, GaussianSteps(1.3, 0.05, 6)], 1e-5))


def test_quantisation_never_wraps_and_the_range_covers_the_tails() -> None:
    for n in (3, 10, 100, 1000):
        levels = dd.quantization_levels(n)
        assert n * levels < dd.MODULUS and levels <= 1 << 30
        assert levels & (levels - 1) == 0
    with pytest.raises(ConfigError):
        dd.quantization_levels(0)
    rows, q = 8000, 0.05
    bound = dd.batch_bound(rows, q)
    assert rows * q < bound <= rows
    # the bound holds far beyond what sampling shows in practice
    draws = torch.distributions.Binomial(rows, torch.full((100_000,), q)).sample()
    assert float(draws.max()) < bound
    k = dd.noise_tail_k(10_000)
    assert 10_000 * math.exp(-(k**2) / 2) <= dd.TAIL_PROBABILITY * 1.0001
    step = _step()
    neighbour = dd.batch_bound(rows + 1, q)  # the data set with one more customer is covered too
    assert neighbour >= bound
    assert dd.required_clip_range(step, rows, 10_000) == pytest.approx(0.7 * neighbour + k * step.share_std)


def test_the_clip_range_covers_a_full_neighbouring_batch_and_the_row_count() -> None:
    # q = 1: every row is sampled, so the neighbour's batch is rows + 1, not rows
    full = dd.DistributedStep(1.0, 1.0, 1.0, 3)
    k = dd.noise_tail_k(10)
    assert dd.required_clip_range(full, 100, 10) == pytest.approx(101 + k * full.share_std)
    # a tiny clip norm: the coarse count (50,000 rows: 500 hundreds) sets the range, or it would be clipped
    tiny = dd.DistributedStep(1.0, 0.01, 0.01, 3)
    assert dd.required_clip_range(tiny, 50_000, 10) >= 501
    assert dd.coarse_count_bound(50_000) >= round(50_000 / dd.COUNT_UNIT) + 1
    assert dd.coarse_count_bound(149) >= round(150 / dd.COUNT_UNIT)


def test_the_step_divides_the_sum_by_the_expected_batch() -> None:
    model = nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    summed = [torch.ones_like(p) * 10 for p in model.parameters()]
    batch = dd.expected_batch(0.1, 200)
    dd.apply_step(model, opt, summed, batch)
    for b, p in zip(before, model.parameters()):
        assert torch.allclose(p.detach(), b - 0.5 * 10 / 20)


def test_bad_parameters_are_refused() -> None:
    for bad in (
        dict(noise_multiplier=0.0),
        dict(sample_rate=0.0),
        dict(sample_rate=1.5),
        dict(min_survivors=0),
    ):
        with pytest.raises(ConfigError):
            _step(**bad)


def test_calibrated_sigma_spends_the_target_against_the_coordinator() -> None:
    sigma = dd.calibrate_sigma(0.05, 200, 3.0, 1e-5, sigma_max=50.0)
    eps_a, eps_b = dd.run_epsilons(_step(noise_multiplier=sigma, min_survivors=3), 200, 1e-5)
    assert eps_a == pytest.approx(3.0, abs=0.01) and eps_a <= 3.0
    assert eps_b > eps_a
