"""The comparison model's noise calibrated in the background while the label owner waits.

The answer must be the one an in-line calibration gives, bit for bit; a charge in between
must make the begin calibrate afresh; a failed background search must leave the begin to
calibrate in line, with nothing of the data in the log.
"""

from __future__ import annotations

import logging
import threading

import pytest

from fedcustomer.privacy.dp import release
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.release import Mechanism, calibrate_noise, precalibrate_noise
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.party import forget_sessions
from fedcustomer.vertical.protocol import PRECALIBRATE_RECORD
from fedcustomer.vertical.spend import DPSGD_MECHANISM, PartySpend
from tests.vertical.conftest import pinned_party_homes
from tests.vertical.test_rounds import BEGIN, FIT, ExchangeGrid, _cfg, _charges, _grid, _raw

INPUTS = {"sample_rate": 0.05, "steps_per_round": 20, "rounds": 3, "sigma_max": 50.0}


@pytest.fixture(autouse=True)
def fresh_memo():
    release._CALIBRATED.clear()
    yield
    release._CALIBRATED.clear()


@pytest.fixture
def ledger(tmp_path) -> BudgetLedger:
    led = BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(8.0, 1e-5))
    led.charge_gaussian("joint:1", GaussianSteps(1.1, 0.05, 20), run_id="joint", round=1)
    return led


def _pending() -> list[Mechanism]:
    return [Mechanism(DPSGD_MECHANISM, gaussian=GaussianSteps(1.1, 0.05, 20), details={"run": "joint"})] * 2


def _inline(ledger: BudgetLedger) -> float:
    release._CALIBRATED.clear()
    return calibrate_noise(ledger, **INPUTS, pending=_pending())


def test_the_background_answer_is_the_in_line_answer_bit_for_bit(ledger):
    thread = precalibrate_noise(ledger, **INPUTS, pending=_pending())
    assert thread is not None
    thread.join()
    background = calibrate_noise(ledger, **INPUTS, pending=_pending())
    assert background.hex() == _inline(ledger).hex()
    assert precalibrate_noise(ledger, **INPUTS, pending=_pending()) is None  # known: nothing to start


def test_a_charge_in_between_makes_the_begin_calibrate_afresh(ledger, monkeypatch):
    thread = precalibrate_noise(ledger, **INPUTS, pending=_pending())
    assert thread is not None
    thread.join()
    before = calibrate_noise(ledger, **INPUTS, pending=_pending())
    ledger.charge_approx("another-release", 1.0, 0.0, mechanism="laplace", run_id="other")
    calls = []
    real = release._calibrate
    monkeypatch.setattr(release, "_calibrate", lambda *a: calls.append(1) or real(*a))
    after = calibrate_noise(ledger, **INPUTS, pending=_pending())
    assert calls == [1]  # not the stale answer
    assert after > before  # less budget left: more noise
    assert after.hex() == _inline(ledger).hex()


def test_the_begin_waits_for_a_running_precalibration_instead_of_computing_twice(ledger, monkeypatch):
    go, waiting, calls = threading.Event(), threading.Event(), []
    real = release._calibrate

    def slow(*args):
        calls.append(threading.current_thread().name)
        go.wait()
        return real(*args)

    monkeypatch.setattr(release, "_calibrate", slow)
    thread = precalibrate_noise(ledger, **INPUTS, pending=_pending())
    assert thread is not None
    (running,) = release._RUNNING.values()
    real_wait = running.wait

    def wait(timeout=None):
        waiting.set()
        return real_wait(timeout)

    monkeypatch.setattr(running, "wait", wait)
    got: list[float] = []
    begin = threading.Thread(target=lambda: got.append(calibrate_noise(ledger, **INPUTS, pending=_pending())))
    begin.start()
    waiting.wait()
    go.set()
    begin.join()
    thread.join()
    assert calls == ["noise-precalibration"]
    monkeypatch.setattr(release, "_calibrate", real)
    assert got[0].hex() == _inline(ledger).hex()


def test_a_failed_precalibration_is_logged_without_data_and_the_begin_calibrates_in_line(
    ledger, monkeypatch, caplog
):
    real = release._calibrate

    def broken(*args):
        if threading.current_thread().name == "noise-precalibration":
            raise RuntimeError("customer 4711 income 98000")
        return real(*args)

    monkeypatch.setattr(release, "_calibrate", broken)
    with caplog.at_level(logging.WARNING, logger=release.__name__):
        thread = precalibrate_noise(ledger, **INPUTS, pending=_pending())
        assert thread is not None
        thread.join()
    assert "RuntimeError" in caplog.text and "4711" not in caplog.text and "98000" not in caplog.text
    assert not release._CALIBRATED and not release._RUNNING
    sigma = calibrate_noise(ledger, **INPUTS, pending=_pending())
    monkeypatch.setattr(release, "_calibrate", real)
    assert sigma.hex() == _inline(ledger).hex()


def _run(root, precalibrate: bool, monkeypatch) -> tuple[list[float], list[str], ExchangeGrid]:
    """The comparison model's paid noise, the threads that calibrated, and the exchanges."""
    release._CALIBRATED.clear()
    forget_sessions()
    names: list[str] = []
    real = release._calibrate
    monkeypatch.setattr(
        release, "_calibrate", lambda *a: names.append(threading.current_thread().name) or real(*a)
    )
    if not precalibrate:
        monkeypatch.setattr(PartySpend, "precalibrate", lambda self, rnd: False)
    homes = pinned_party_homes(root, customers=400, seed=2)
    raw = _raw(root)
    grid = _grid(homes)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    noise = [c.noise_multiplier for c in _charges(homes[0], raw["run-id"] + "-baseline")]
    monkeypatch.undo()
    forget_sessions()
    return noise, names, grid


def test_the_comparison_model_pays_the_same_noise_with_its_calibration_done_while_idle(tmp_path, monkeypatch):
    with_it, names_with, grid = _run(tmp_path / "with", True, monkeypatch)
    without, names_without, _ = _run(tmp_path / "without", False, monkeypatch)
    assert [s.hex() for s in with_it] == [s.hex() for s in without]
    assert "noise-precalibration" in names_with and "noise-precalibration" not in names_without
    assert len(names_with) == len(names_without)  # computed once, never twice
    joint_open = [m for msgs in grid.exchanges for m in msgs if PRECALIBRATE_RECORD in m.content]
    assert len(joint_open) == 1 and joint_open[0].metadata.message_type == BEGIN


def test_without_a_spare_idle_slot_the_first_begin_takes_the_first_one(homes_one_round):
    """One joint round of one passive step has 2 slots, exactly what a 1-round comparison model needs."""
    homes, raw = homes_one_round
    grid = _grid(homes)
    summary = run_two_party(grid, raw)
    assert summary["baseline"]["status"] == "completed"
    base_id = raw["run-id"] + "-baseline"
    riding = [
        [m.metadata.message_type for m in msgs]
        for msgs in grid.exchanges
        if any(str(_cfg(m).get("run-id")) == base_id for m in msgs)
    ]
    assert riding == [
        [BEGIN, BEGIN],
        ["train.vertical_backward", FIT],
    ]  # the passive begin, then the backward


@pytest.fixture
def homes_one_round(tmp_path):
    forget_sessions()
    yield pinned_party_homes(tmp_path, customers=400, seed=2), _raw(tmp_path, rounds=1)
    forget_sessions()
