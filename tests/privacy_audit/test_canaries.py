"""The canary replay flags a trainer whose noise is 10x too small, and not the real one."""

from typing import Any

import numpy as np
import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accounting import GaussianSteps, calibrate_noise, epsilon
from fedcustomer.privacy_audit.canaries import (
    CanaryTrainer,
    PartnerData,
    Recipe,
    canary_report,
    replay,
)

ROWS, BATCH, ROUNDS, DELTA = 1000, 50, 3, 1e-5
RECIPE = Recipe(task="repayment", arch="logreg", lr=0.5, batch_size=BATCH, local_epochs=1, max_grad_norm=0.5)


class TenfoldTooLittleNoise(CanaryTrainer):
    """A broken DP-SGD, for tests only: noise scaled down 10x while the ledger is charged in full."""

    def __init__(self, *args: Any, noise_multiplier: float, **kwargs: Any) -> None:
        super().__init__(*args, noise_multiplier=noise_multiplier / 10, **kwargs)


class ClippingSkipped(CanaryTrainer):
    """A broken DP-SGD, for tests only: per-sample gradients are summed unclipped, noise as charged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self._clipper is not None  # the fast path the project uses

    def _backward(self, xb: Any, yb: Any) -> Any:
        loss = self.loss_fn(self._module(xb), yb)
        self._clipper.clip_and_accumulate(loss, batch_size=len(xb), max_grad_norm=1e9)  # type: ignore[union-attr]
        self._inject()
        return loss.detach()


def _partners(eps: float, count: int = 2) -> tuple[list[PartnerData], float]:
    q, steps = BATCH / ROWS, ROWS // BATCH
    sigma = calibrate_noise([], q, steps * ROUNDS, eps, DELTA)
    claimed = epsilon([GaussianSteps(sigma, q, steps)] * ROUNDS, DELTA)
    rng = np.random.default_rng(0)
    partners = [
        PartnerData(
            f"p{i}",
            rng.normal(size=(ROWS, 8)).astype(np.float32),
            (rng.random(ROWS) < 0.3).astype(np.float32),
            sigma,
            ROUNDS,
            claimed,
        )
        for i in range(count)
    ]
    return partners, claimed


@pytest.mark.parametrize("kind", ["gradient", "record"])
def test_noise_ten_times_too_small_is_flagged(kind: str) -> None:
    partners, claimed = _partners(1.0)
    result = replay(RECIPE, partners, canaries=500, trainer_cls=TenfoldTooLittleNoise, kind=kind)
    report = canary_report(result, None, DELTA)
    assert report["claimed_epsilon"] == pytest.approx(claimed, abs=0.02)  # what the replay ran
    assert report["flagged"], report
    assert report["epsilon_lower_bound"] > claimed  # seen: 1.9-2.1 against 1.0


def test_skipped_clipping_is_flagged_by_record_canaries() -> None:
    partners, claimed = _partners(1.0)
    report = canary_report(
        replay(RECIPE, partners, canaries=500, trainer_cls=ClippingSkipped, kind="record"), None, DELTA
    )
    assert report["flagged"] and report["mechanism"] == "dpsgd: record canaries", report  # seen: 2.69 vs 0.99
    # gradient canaries enter after clipping: they cannot see this bug (the docs say so)
    gradient = canary_report(
        replay(RECIPE, partners, canaries=500, trainer_cls=ClippingSkipped, kind="gradient"), claimed, DELTA
    )
    assert not gradient["flagged"]


@pytest.mark.parametrize("kind", ["gradient", "record"])
@pytest.mark.parametrize("eps", [1.0, 3.0])
def test_the_real_dpsgd_is_not_flagged(eps: float, kind: str) -> None:
    partners, claimed = _partners(eps)
    result = replay(RECIPE, partners, canaries=500, kind=kind)
    report = canary_report(result, None, DELTA)
    assert not report["flagged"], report
    assert report["epsilon_lower_bound"] < report["claimed_epsilon"] <= claimed + 1e-9
    assert report["canaries"] == 500 and report["white_box"]["guesses"] > 0
    assert set(result.owner.tolist()) == {0, 1}  # canaries live at both partners


def test_replay_refuses_what_it_cannot_audit() -> None:
    partners, _ = _partners(1.0, count=1)
    with pytest.raises(ConfigError, match="at least 2"):
        replay(RECIPE, partners, canaries=1)
    no_dp = [PartnerData("p0", partners[0].X, partners[0].y, None, ROUNDS)]
    with pytest.raises(ConfigError, match="without DP"):
        replay(RECIPE, no_dp)
    with pytest.raises(ConfigError, match="canary kind"):
        replay(RECIPE, partners, kind="input")
    with pytest.raises(ConfigError, match="no partner trained"):
        replay(RECIPE, [PartnerData("p0", partners[0].X, partners[0].y, 1.0, 0)])
