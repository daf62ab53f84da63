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


def test_a_setting_the_workers_would_refuse_stops_the_job_before_anything_is_prepared(monkeypatch, tmp_path):
    from fedcustomer.apps import simulation
    from fedcustomer.errors import ConfigError
    from fedcustomer.server.job import JobConfig

    prepared = []
    monkeypatch.setattr(simulation, "prepare_partners", lambda *a, **k: prepared.append(a))
    monkeypatch.setenv(NOISE_AHEAD_ENV, "sometimes")
    with pytest.raises(ConfigError, match="FEDCUSTOMER_NOISE_AHEAD must be one of auto, on, off"):
        simulation.run_simulated_job(JobConfig(out=str(tmp_path / "run")))
    assert not prepared and not (tmp_path / "run").exists()
