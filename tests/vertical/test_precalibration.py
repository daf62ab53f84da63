"""The comparison model's noise calibrated in the background while the label owner waits.

The answer must be the one an in-line calibration gives, bit for bit; a charge in between
must make the begin calibrate afresh; a failed background search must leave the begin to
calibrate in line, with nothing of the data in the log; and the search running beside the
joint job's steps must not change a bit of what the joint job (or the comparison model) trains.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import threading
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from fedcustomer.privacy.dp import accounting, release
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.release import Mechanism, calibrate_noise, precalibrate_noise
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical import party
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.party import PartySession, forget_sessions
from fedcustomer.vertical.protocol import PRECALIBRATE_RECORD
from fedcustomer.vertical.runner import prepare_vertical, run_vertical_on_grid
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


# --- the search beside the joint job's steps: nothing of what they train may change ---------------


def _job(root: Path) -> VerticalJob:
    return VerticalJob(
        out=str(root / "run"),
        homes=str(root / "homes"),
        run_id="joint",
        customers=600,
        rounds=3,
        batch_size=64,
        steps_per_round=4,
        seed=0,
    )


def _seeded_generators(monkeypatch) -> None:
    """Each session's generators seeded from its run and role, in the order that session asks.

    Why: the secure generators make two runs of a job differ; seeded per session (not per call),
    two runs draw the same batches, labels and noise whichever session is built first.
    """
    asked: Counter[str] = Counter()

    def seeded() -> torch.Generator:
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        session = frame.f_back.f_locals["self"]
        key = f"{session.cfg.run_id}:{session.cfg.role}"
        asked[key] += 1
        return torch.Generator().manual_seed(zlib.crc32(f"{key}:{asked[key]}".encode()))

    monkeypatch.setattr(party, "secure_generator", seeded)


def _searching_through_the_first_joint_step(monkeypatch) -> tuple[list[str], list[bool]]:
    """The background search held until the label owner's first joint step starts, then kept
    running until that step is done, so the two run at the same time in every run.

    Returns the threads that calibrated, and for that step whether the search was running
    from before its first operation to after its last.
    """
    started, searching, done = threading.Event(), threading.Event(), threading.Event()
    names: list[str] = []
    overlapped: list[bool] = []
    real_calibrate, real_step = release._calibrate, PartySession.step

    def calibrate(*args):
        names.append(threading.current_thread().name)
        if threading.current_thread().name != "noise-precalibration":
            return real_calibrate(*args)
        assert started.wait(timeout=600), "the joint job never reached its first step"
        searching.set()
        sigma = real_calibrate(*args)
        while not done.is_set():  # the same search again, for as long as the step runs
            assert real_calibrate(*args) == sigma
        return sigma

    def step(self, rnd, step_no, passive):
        if done.is_set() or self.cfg.run_id != "joint":
            return real_step(self, rnd, step_no, passive)
        started.set()
        assert searching.wait(timeout=600), "the background search never started"
        try:
            return real_step(self, rnd, step_no, passive)
        finally:
            overlapped.append(any(t.name == "noise-precalibration" for t in threading.enumerate()))
            done.set()

    monkeypatch.setattr(release, "_calibrate", calibrate)
    monkeypatch.setattr(PartySession, "step", step)
    return names, overlapped


def _trained(prepared: Path, psi_size: int, root: Path, monkeypatch, *, precalibrate: bool):
    """The job run on a copy of the prepared homes: its summary and every final model part."""
    release._CALIBRATED.clear()
    monkeypatch.setattr(accounting, "_NEARBY", accounting._Nearby())
    forget_sessions()
    shutil.copytree(prepared / "homes", root / "homes")
    _seeded_generators(monkeypatch)
    race = _searching_through_the_first_joint_step(monkeypatch) if precalibrate else None
    if not precalibrate:
        monkeypatch.setattr(PartySpend, "precalibrate", lambda self, rnd: False)
    homes = {p.name: str(p) for p in (root / "homes").iterdir()}
    grid = LocalGrid(party_app([homes["bank"], homes["retailer"]]), num_nodes=2)
    alone = LocalGrid(party_app([homes["bank"]]), num_nodes=1)
    summary = run_vertical_on_grid(grid, _job(root), baseline_grid=alone, psi_size=psi_size)
    monkeypatch.undo()
    forget_sessions()
    parts = {}
    for path in (root / "homes").rglob("*-final.pt"):
        blob = torch.load(path, weights_only=True)
        parts[(blob["run_id"], blob["role"])] = blob["model"]
    return summary, parts, race


@pytest.mark.slow
def test_the_search_beside_the_joint_steps_changes_nothing_they_train(tmp_path, monkeypatch):
    """Suspected of a joint model's poor AUC once: with the same draws, every model is bit-identical."""
    prepared = tmp_path / "prepared"
    size = prepare_vertical(_job(prepared)).psi_size  # one PSI: the same alignment for both runs
    forget_sessions()
    beside, parts_beside, race = _trained(prepared, size, tmp_path / "beside", monkeypatch, precalibrate=True)
    in_line, parts_in_line, _ = _trained(
        prepared, size, tmp_path / "in-line", monkeypatch, precalibrate=False
    )
    assert race is not None
    names, overlapped = race
    assert "noise-precalibration" in names and overlapped == [True]  # the race was forced
    assert sorted(parts_beside) == [("joint", "active"), ("joint", "passive"), ("joint-baseline", "active")]
    assert sorted(parts_beside) == sorted(parts_in_line)
    for part, weights in parts_beside.items():
        for name, tensor in weights.items():
            assert torch.equal(tensor, parts_in_line[part][name]), (part, name)
    assert beside["metrics"] == in_line["metrics"]
    assert beside["baseline"]["metrics"] == in_line["baseline"]["metrics"]
