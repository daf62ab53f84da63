"""The vertical canary replays flag a mechanism with 10x too little noise, and not the real ones."""

from typing import Any

import numpy as np
import pytest
import torch

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accounting import calibrate_noise
from fedcustomer.privacy_audit.canaries import canary_report
from fedcustomer.privacy_audit.vertical_replay import (
    CanaryDPOptimizer,
    DPSGDSetting,
    Recipe,
    label_canaries,
    replay_dpsgd,
)
from fedcustomer.vertical.labels import LabelRelease, label_release_for, protect_labels

ROWS, BATCH, ROUNDS, DELTA, CANARIES = 800, 40, 3, 1e-5, 300


class TenfoldTooLittleNoise(CanaryDPOptimizer):
    """A broken vertical DP-SGD, for tests only: Opacus's noise scaled down 10x, the ledger charged in full."""

    def __init__(self, *args: Any, noise_multiplier: float, **kwargs: Any) -> None:
        super().__init__(*args, noise_multiplier=noise_multiplier / 10, **kwargs)


def tenfold_fewer_flips(
    release: LabelRelease | None, y: torch.Tensor | None, g: torch.Generator
) -> np.ndarray:
    """A broken label release, for tests only: randomised response flipping 10x too few labels."""
    assert release is not None and release.keep_probability is not None
    flip = (1 - release.keep_probability) / 10
    return protect_labels(
        LabelRelease("randomized_response", release.epsilon, keep_probability=1 - flip), y, g
    )


def _setting(role: str, eps: float) -> DPSGDSetting:
    q, steps = BATCH / ROWS, ROWS // BATCH
    sigma = calibrate_noise([], q, steps * ROUNDS, eps, DELTA)
    return DPSGDSetting("bank" if role == "active" else "retailer", role, sigma, q, steps, ROUNDS, 1.0, DELTA)


def _rows(role: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, 6 if role == "active" else 5)).astype(np.float32)
    return X, (rng.random(ROWS) < 0.3).astype(np.float32)


@pytest.mark.parametrize("role", ["active", "passive"])
def test_vertical_dpsgd_with_noise_ten_times_too_small_is_flagged(role: str) -> None:
    setting = _setting(role, 1.0)
    X, y = _rows(role)
    result = replay_dpsgd(
        setting, Recipe("repayment"), X, y, canaries=CANARIES, optimizer_cls=TenfoldTooLittleNoise
    )
    report = canary_report(result, setting.claimed_epsilon(), DELTA)
    assert report["claimed_epsilon"] == pytest.approx(1.0, abs=0.02)
    assert report["flagged"] and report["epsilon_lower_bound"] > 1.0, report  # seen: 1.7-2.0


@pytest.mark.parametrize("role, eps", [("active", 1.0), ("passive", 3.0)])
@pytest.mark.parametrize("kind", ["gradient", "record"])
def test_the_real_vertical_dpsgd_is_not_flagged(role: str, eps: float, kind: str) -> None:
    setting = _setting(role, eps)
    X, y = _rows(role)
    result = replay_dpsgd(setting, Recipe("repayment"), X, y, canaries=CANARIES, kind=kind)
    report = canary_report(result, setting.claimed_epsilon(), DELTA)
    assert not report["flagged"] and report["epsilon_lower_bound"] < eps, report  # seen: 0-0.3


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_label_release_flipping_ten_times_too_few_labels_is_flagged_and_the_real_one_not(eps: float) -> None:
    release = label_release_for("repayment", eps, DELTA, 12.0)
    real = canary_report(label_canaries(release, "repayment", canaries=1000), eps, 0.0)
    assert not real["flagged"] and 0 < real["epsilon_lower_bound"] < eps, real  # seen: 0.66 at 1, 1.61 at 2
    broken = label_canaries(release, "repayment", canaries=1000, protect=tenfold_fewer_flips)
    report = canary_report(broken, eps, 0.0)
    assert report["flagged"] and report["epsilon_lower_bound"] > eps, report  # seen: 2.9 at 1, 3.7 at 2


def test_clv_label_noise_is_audited_too() -> None:
    release = label_release_for("clv", 1.0, DELTA, 12.0)
    report = canary_report(label_canaries(release, "clv", canaries=400), 1.0, DELTA)
    assert not report["flagged"] and report["epsilon_lower_bound"] < 1.0


def test_too_few_canaries_are_refused() -> None:
    X, y = _rows("active")
    with pytest.raises(ConfigError, match="at least 2"):
        replay_dpsgd(_setting("active", 1.0), Recipe("repayment"), X, y, canaries=1)
    with pytest.raises(ConfigError, match="canary kind"):
        replay_dpsgd(_setting("active", 1.0), Recipe("repayment"), X, y, canaries=10, kind="other")
    with pytest.raises(ConfigError, match="at least 2"):
        label_canaries(label_release_for("repayment", 1.0, DELTA, 12.0), "repayment", canaries=1)
