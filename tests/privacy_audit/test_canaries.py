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


def test_noise_ten_times_too_small_is_flagged() -> None:
    partners, claimed = _partners(1.0)
    report = canary_report(
        replay(RECIPE, partners, canaries=500, trainer_cls=TenfoldTooLittleNoise), claimed, DELTA
    )
    assert report["flagged"], report
    assert report["epsilon_lower_bound"] > claimed


@pytest.mark.parametrize("eps", [1.0, 3.0])
def test_the_real_dpsgd_is_not_flagged(eps: float) -> None:
    partners, claimed = _partners(eps)
    result = replay(RECIPE, partners, canaries=500)
    report = canary_report(result, claimed, DELTA)
    assert not report["flagged"], report
    assert report["epsilon_lower_bound"] < claimed
    assert report["canaries"] == 500 and report["white_box"]["guesses"] > 0
    assert set(result.owner.tolist()) == {0, 1}  # canaries live at both partners


def test_replay_refuses_what_it_cannot_audit() -> None:
    partners, _ = _partners(1.0, count=1)
    with pytest.raises(ConfigError, match="at least 2"):
        replay(RECIPE, partners, canaries=1)
    no_dp = [PartnerData("p0", partners[0].X, partners[0].y, None, ROUNDS)]
    with pytest.raises(ConfigError, match="without DP"):
        replay(RECIPE, no_dp)
    with pytest.raises(ConfigError, match="no partner trained"):
        replay(RECIPE, [PartnerData("p0", partners[0].X, partners[0].y, 1.0, 0)])
