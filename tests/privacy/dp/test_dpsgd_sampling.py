"""DP-SGD batch sampling: Poisson batches, the geometric sampler, and steps counted as the accountant is charged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.models.repayment import LogisticRegression
from fedcustomer.privacy.dp import dpsgd
from fedcustomer.privacy.dp.poisson_sampling import GeometricPoissonSampler
from tests.privacy.dp.dpsgd_helpers import CLIPPINGS, data, gen, mlp, trainer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


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


def test_a_given_sample_rate_is_the_one_sampled_with_and_a_bad_one_is_refused():
    # A node passes batch / (rows rounded to 100) so its released rate does not give away its exact rows.
    t = trainer(sample_rate=0.2)
    assert t.sample_rate == 0.2 and t.steps_per_epoch == 5 and t.train_epoch().steps == 5
    for bad in (0, -0.1, 1.5, True, "0.2", float("nan")):
        with pytest.raises(ConfigError, match="sample_rate"):
            trainer(sample_rate=bad)
