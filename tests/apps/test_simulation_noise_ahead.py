"""The simulation engine turns DP-SGD's noise helper off when its workers fill every core."""

from __future__ import annotations

import os

import pytest

from fedcustomer.apps.simulation import _noise_ahead_off
from fedcustomer.privacy.dp.secure_noise import NOISE_AHEAD_ENV


def test_busy_cores_turn_it_off_for_the_job_and_back_after(monkeypatch):
    monkeypatch.delenv(NOISE_AHEAD_ENV, raising=False)
    setting = _noise_ahead_off(True)
    assert os.environ[NOISE_AHEAD_ENV] == "off"
    setting.restore()
    assert NOISE_AHEAD_ENV not in os.environ


def test_a_free_core_leaves_it_to_the_default(monkeypatch):
    monkeypatch.delenv(NOISE_AHEAD_ENV, raising=False)
    _noise_ahead_off(False).restore()
    assert NOISE_AHEAD_ENV not in os.environ


@pytest.mark.parametrize("chosen", ["on", "auto"])
def test_the_callers_own_setting_is_kept(monkeypatch, chosen):
    monkeypatch.setenv(NOISE_AHEAD_ENV, chosen)
    setting = _noise_ahead_off(True)
    assert os.environ[NOISE_AHEAD_ENV] == chosen
    setting.restore()
    assert os.environ[NOISE_AHEAD_ENV] == chosen
