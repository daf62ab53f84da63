"""Noise blocks: Opacus's secure-mode values from the same generator, and the right distribution."""

from __future__ import annotations

import math
import multiprocessing
import os

import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import dpsgd, secure_noise
from fedcustomer.privacy.dp.secure_noise import NoiseBlocks
from tests.privacy.dp.dpsgd_helpers import mlp, trainer

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blocks(numel: int, rows: int, *, std: float, divisor: float, seed: int, **kw) -> NoiseBlocks:
    kw.setdefault("dtype", torch.float32)
    return NoiseBlocks(
        numel,
        std=std,
        divisor=divisor,
        block_rows=rows,
        generator=gen(seed),
        device=torch.device("cpu"),
        **kw,
    )


def take(noise: NoiseBlocks, count: int) -> torch.Tensor:
    return torch.stack([noise.next_row().clone() for _ in range(count)])


@pytest.mark.parametrize("numel,rows", [(37, 3), (3649, 5), (16, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_equal_opacus_secure_noise_from_the_same_generator(numel, rows, dtype):
    """Two blocks: each is one _generate_noise call on a (rows, numel) reference, in stream order."""
    noise = blocks(numel, rows, std=1.3, divisor=40.0, seed=11, dtype=dtype)
    got = take(noise, 2 * rows)
    g = gen(11)
    reference = torch.empty(rows, numel, dtype=dtype)
    expected = torch.cat([_generate_noise(1.3, reference, g, secure_mode=True) / 40.0 for _ in range(2)])
    assert got.dtype == dtype
    assert torch.allclose(got, expected, rtol=1e-6, atol=0.0)
    # The generator ends where Opacus's two calls leave it.
    assert torch.equal(torch.rand(4, generator=noise.generator), torch.rand(4, generator=g))


def test_plain_mode_equals_opacus_single_draw():
    noise = blocks(50, 2, std=0.7, divisor=8.0, seed=3, secure_mode=False)
    expected = _generate_noise(0.7, torch.empty(2, 50), gen(3), secure_mode=False) / 8.0
    assert torch.allclose(take(noise, 2), expected, rtol=1e-6, atol=0.0)


def test_secure_noise_is_not_a_single_gaussian_draw():
    secure = take(blocks(64, 1, std=1.0, divisor=1.0, seed=5), 1)
    plain = take(blocks(64, 1, std=1.0, divisor=1.0, seed=5, secure_mode=False), 1)
    assert not torch.allclose(secure, plain, atol=1e-3)


def test_noise_has_std_over_divisor_and_is_gaussian():
    """400,000 values: the sample std is within 1 % (about 9 standard errors), kurtosis near 3."""
    std, divisor, rows, numel = 1.7, 4.0, 8, 50_000
    values = take(blocks(numel, rows, std=std, divisor=divisor, seed=2026), rows).double().flatten()
    n = values.numel()
    expected = std / divisor
    assert abs(float(values.std()) / expected - 1.0) < 0.01
    assert abs(float(values.mean())) < 5 * expected / math.sqrt(n)
    z = values / values.std()
    assert abs(float(z.pow(4).mean()) - 3.0) < 0.05  # Gaussian tails (about 6 standard errors)
    # Rows of one block and of the next are independent draws: correlation near zero.
    corr = torch.corrcoef(torch.stack([values[:numel], values[-numel:]]))[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(numel)


def test_wrong_constructions_would_fail_the_std_test():
    """The tolerance can fail: one draw not halved, or two draws halved, are far outside it."""
    g = gen(2026)
    one = torch.normal(0.0, 1.7, size=(400_000,), generator=g) / 4.0
    two = torch.normal(0.0, 1.7, size=(400_000,), generator=g) / 4.0
    for wrong in (one * 2, (one + two) / 2):  # four draws not halved; two draws halved
        assert abs(float(wrong.double().std()) / (1.7 / 4.0) - 1.0) > 0.05


def test_zero_std_gives_zeros_and_draws_nothing():
    noise = blocks(10, 2, std=0.0, divisor=3.0, seed=9)
    assert not take(noise, 3).any()
    assert torch.equal(torch.rand(3, generator=noise.generator), torch.rand(3, generator=gen(9)))


def test_rows_are_views_of_a_reused_buffer_and_blocks_differ():
    noise = blocks(20, 2, std=1.0, divisor=1.0, seed=1)
    first = noise.next_row()
    kept = first.clone()
    noise.next_row()
    third = noise.next_row()  # a new block, drawn into the same buffer
    assert third.data_ptr() == first.data_ptr()
    assert not torch.equal(third, kept)


@pytest.mark.parametrize("kw", [dict(numel=0), dict(rows=0)])
def test_rejects_empty_shapes(kw):
    args = dict(numel=4, rows=2) | kw
    with pytest.raises(ValueError, match=">= 1"):
        blocks(args["numel"], args["rows"], std=1.0, divisor=1.0, seed=0)


def zero_gradient_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out * 0.0).mean()


def test_trainer_noise_over_several_blocks_is_opacus_noise_block_after_block(monkeypatch):
    """Five steps in blocks of two: the updates are SGD (momentum 0.9) on Opacus's noise rows, in order."""
    monkeypatch.setattr(dpsgd, "NOISE_BLOCK_ELEMENTS", 2 * 18)  # nn.Linear(5, 3): 18 values, 2 rows a block
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    X, y = torch.randn(10, 5), torch.zeros(10)
    t = dpsgd.DPTrainer(
        model,
        X,
        y,
        zero_gradient_loss,
        batch_size=2,
        lr=0.5,
        noise_multiplier=0.7,
        max_grad_norm=3.0,
        noise_generator=gen(42),
        sampling_generator=gen(1),
    )
    assert t._optimizer.noise_block_steps == 2 and t.steps_per_epoch == 5
    t.train_epoch()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    g = gen(42)
    rows = torch.cat([_generate_noise(0.7 * 3.0, torch.empty(2, 18), g, secure_mode=True) for _ in range(3)])
    expected, buf = before.clone(), torch.zeros(18)
    for step in range(5):
        buf = rows[step] / 2 if step == 0 else 0.9 * buf + rows[step] / 2
        expected -= 0.5 * buf
    assert torch.allclose(after, expected, atol=1e-5)
    # The epoch leaves no gradient behind: p.grad is kept between steps only while training.
    assert all(p.grad is None and getattr(p, "summed_grad", None) is None for p in model.parameters())


def test_changed_noise_multiplier_takes_effect_at_the_next_step():
    torch.manual_seed(0)
    X, y = torch.randn(20, 5), torch.zeros(20)
    t = dpsgd.DPTrainer(
        nn.Linear(5, 3),
        X,
        y,
        zero_gradient_loss,
        batch_size=4,
        lr=0.1,
        noise_multiplier=0.7,
        max_grad_norm=3.0,
    )
    t.train_epoch()
    assert t._optimizer._noise.std == pytest.approx(0.7 * 3.0)
    t._optimizer.noise_multiplier = 2.0  # e.g. recalibrated between epochs
    t.train_epoch()
    assert t._optimizer._noise.std == pytest.approx(2.0 * 3.0)


# ---- noise drawn ahead on the helper thread ---------------------------------------------------


def test_drawn_ahead_equals_drawn_inline_across_blocks_and_pauses():
    """Same generator, same stream: the helper draws the same blocks in the same order, also when
    the steps pause (close) between blocks and in the middle of one."""
    inline = blocks(3649, 4, std=1.3, divisor=40.0, seed=7)
    ahead = blocks(3649, 4, std=1.3, divisor=40.0, seed=7, ahead=True)
    expected = take(inline, 13)
    got = []
    for count in (3, 1, 6, 3):  # pauses mid-block and at a block's end
        got.append(take(ahead, count))
        ahead.close()
        ahead.close()  # idempotent
    assert torch.equal(torch.cat(got), expected)


def test_drawn_ahead_runs_beside_the_steps_and_close_leaves_the_generator_idle():
    noise = blocks(1000, 2, std=1.0, divisor=1.0, seed=4, ahead=True)
    noise.next_row()
    assert noise._pending is not None  # the second block is on its way while the first is used
    noise.close()
    assert noise._pending is None and noise._ready
    state = noise.generator.get_state()
    take(noise, 1)  # the rest of the first block: nothing drawn
    assert torch.equal(noise.generator.get_state(), state)


@pytest.fixture
def second_fill_fails(monkeypatch) -> list[int]:
    """Every block drawn counts a call; the second draw (the first on the helper) fails."""
    fill, calls = NoiseBlocks._fill, []

    def failing_second_fill(self, block):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("generator failed")
        fill(self, block)

    monkeypatch.setattr(NoiseBlocks, "_fill", failing_second_fill)
    return calls


def test_a_failed_draw_ahead_is_raised_at_the_step_that_needs_its_block(second_fill_fails):
    noise = blocks(50, 2, std=1.0, divisor=1.0, seed=4, ahead=True)
    take(noise, 2)  # the first block, drawn on this thread
    with pytest.raises(RuntimeError, match="generator failed"):
        noise.next_row()


def test_a_failed_draw_ahead_is_dropped_by_close_and_drawn_again(second_fill_fails):
    noise = blocks(50, 2, std=1.0, divisor=1.0, seed=4, ahead=True)
    take(noise, 2)
    noise.close()  # the failed block is not kept
    assert not noise._ready
    assert take(noise, 2).abs().sum() > 0  # drawn again, on this thread
    assert len(second_fill_fails) >= 3


def test_drawing_ahead_needs_a_generator_of_its_own():
    with pytest.raises(ValueError, match="generator of its own"):
        NoiseBlocks(
            4,
            std=1.0,
            divisor=1.0,
            block_rows=2,
            generator=None,
            dtype=torch.float32,
            device=torch.device("cpu"),
            ahead=True,
        )


@pytest.mark.parametrize(
    "setting,threads,expected",
    [("on", 64, True), ("off", 1, False), (" OFF ", 1, False), ("auto", 10_000, False)],
)
def test_draw_ahead_setting(monkeypatch, setting, threads, expected):
    monkeypatch.setenv(secure_noise.NOISE_AHEAD_ENV, setting)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert secure_noise.draw_ahead_wanted() is expected


def test_draw_ahead_auto_follows_the_free_cores(monkeypatch):
    monkeypatch.delenv(secure_noise.NOISE_AHEAD_ENV, raising=False)
    monkeypatch.setattr(secure_noise.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert secure_noise.draw_ahead_wanted()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not secure_noise.draw_ahead_wanted()


def test_draw_ahead_setting_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv(secure_noise.NOISE_AHEAD_ENV, "sometimes")
    with pytest.raises(ConfigError, match="FEDCUSTOMER_NOISE_AHEAD must be one of auto, on, off"):
        secure_noise.draw_ahead_wanted()


def _draw_in_child(queue) -> None:
    noise = blocks(100, 2, std=1.0, divisor=1.0, seed=3, ahead=True)
    queue.put(float(take(noise, 5).abs().sum()))
    noise.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_draws_ahead_on_its_own_helper():
    """The parent's helper thread is not copied by fork; the child starts its own instead of
    queueing blocks for a thread that does not exist (which would hang its first step)."""
    parent = blocks(100, 2, std=1.0, divisor=1.0, seed=3, ahead=True)
    expected = float(take(parent, 5).abs().sum())  # the parent's helper is running now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_draw_in_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=600) == pytest.approx(expected)  # a guard against a hang, not a timing
    finally:
        child.join(timeout=600)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    parent.close()


def test_trainer_drawing_ahead_trains_bit_for_bit_as_drawing_inline(monkeypatch):
    """Two epochs of the same seeded trainer, one step a block, noise drawn ahead and inline: equal weights."""
    monkeypatch.setattr(dpsgd, "NOISE_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(dpsgd, "NOISE_AHEAD_MIN_ELEMENTS", 1)
    weights = {}
    for ahead in (False, True):
        model = mlp(seed=3)
        t = trainer(model, noise_multiplier=0.7, noise_ahead=ahead)
        assert t._optimizer.noise_ahead is ahead and t._optimizer.noise_block_steps == 1
        t.train_epoch()
        t.train_epoch()
        assert t._optimizer._noise._pending is None  # each epoch ends with the helper idle
        weights[ahead] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights[False], weights[True])


def test_trainer_does_not_draw_ahead_from_a_generator_it_shares(monkeypatch):
    monkeypatch.setattr(dpsgd, "NOISE_AHEAD_MIN_ELEMENTS", 1)
    shared = gen(5)
    assert (
        trainer(noise_generator=shared, sampling_generator=shared, noise_ahead=True)._optimizer.noise_ahead
        is False
    )
    assert trainer(noise_ahead=True)._optimizer.noise_ahead is True
