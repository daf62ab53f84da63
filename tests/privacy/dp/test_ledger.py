import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedcustomer.errors import BudgetExhausted, ConfigError
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps, calibrate_noise, epsilon
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.ledger_file import put_to_rest

BUDGET = DatasetBudget(epsilon=3.0, delta=1e-5)
ROUND = GaussianSteps(noise_multiplier=1.1, sample_rate=0.05, steps=20)


def test_cumulative_epsilon_equals_one_opacus_accountant_over_same_steps(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(50.0, 1e-5))
    acc = RDPAccountant()
    for r in range(1, 6):
        ledger.charge_gaussian(f"run:a:round:{r}", ROUND, run_id="a", round=r)
        for _ in range(ROUND.steps):
            acc.step(noise_multiplier=ROUND.noise_multiplier, sample_rate=ROUND.sample_rate)
        assert ledger.spent().epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_spend_survives_reopening_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    first = BudgetLedger(path, "loans", DatasetBudget(50.0, 1e-5))
    for r in range(3):
        first.charge_gaussian(f"k{r}", ROUND)
    reopened = BudgetLedger(path, "loans", DatasetBudget(50.0, 1e-5))
    acc = RDPAccountant()
    acc.history = [(1.1, 0.05, 60)]
    assert reopened.spent().epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert len(reopened.charges()) == 3


def test_charge_that_would_exceed_target_is_refused_and_recorded(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(2.5, 1e-5))
    paid = 0
    with pytest.raises(BudgetExhausted, match="past the target 2.5"):
        for r in range(100):
            ledger.charge_gaussian(f"r{r}", ROUND)
            paid += 1
    assert 0 < paid < 100
    assert ledger.spent().epsilon <= 2.5
    assert len(ledger.charges()) == paid
    assert len(ledger.refusals()) == 1
    # a refused charge writes no charge row, and a retry is refused again
    with pytest.raises(BudgetExhausted):
        ledger.charge_gaussian(f"r{paid}", ROUND)
    assert len(ledger.charges()) == paid


def test_same_charge_key_is_never_paid_twice(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    first = ledger.charge_gaussian("run:x:round:1", ROUND)
    again = ledger.charge_gaussian("run:x:round:1", ROUND)
    assert again.already_paid and not first.already_paid
    assert len(ledger.charges()) == 1
    assert ledger.spent().epsilon == pytest.approx(first.epsilon_total)


def test_every_dataset_of_a_partner_draws_on_its_one_budget(tmp_path: Path) -> None:
    """A renamed copy of a file (another dataset name) cannot start from zero: same customers, same budget."""
    a = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    b = BudgetLedger(tmp_path / "ledger.db", "loans_copy", BUDGET)
    a.charge_gaussian("a1", ROUND)
    assert a.spent().epsilon > 0 and b.spent().epsilon == pytest.approx(a.spent().epsilon)
    second = b.charge_gaussian("b1", ROUND)
    both = epsilon([ROUND, ROUND], BUDGET.delta)
    assert second.epsilon_total == pytest.approx(both)
    assert a.spent().epsilon == pytest.approx(both)
    assert [c.charge_key for c in a.charges()] == ["a1"] and [c.charge_key for c in b.charges()] == ["b1"]
    assert a.datasets() == ["loans", "loans_copy"]


def test_a_release_past_the_partner_budget_is_refused_whatever_the_dataset(tmp_path: Path) -> None:
    a = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    big = GaussianSteps(ROUND.noise_multiplier, ROUND.sample_rate, ROUND.steps)
    while True:
        try:
            a.charge_gaussian(f"a{len(a.charges())}", big)
        except BudgetExhausted:
            break
    with pytest.raises(BudgetExhausted, match="partner's epsilon"):
        BudgetLedger(tmp_path / "ledger.db", "renamed", BUDGET).charge_gaussian("r1", big)


def test_approx_releases_compose_with_training_soundly(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(5.0, 1e-5))
    ledger.charge_gaussian("t1", ROUND)
    train_only = ledger.spent().epsilon
    ledger.charge_approx("q1", 0.5, 0.0, mechanism="laplace", query_id="q1")
    assert ledger.spent().epsilon == pytest.approx(train_only + 0.5)
    ledger.charge_approx("q2", 0.1, 5e-6, mechanism="gaussian-approx", query_id="q2")
    # the Gaussian part is now converted at delta_target - 5e-6, so it costs more than before
    assert ledger.spent().epsilon > train_only + 0.6
    assert ledger.spent().delta == pytest.approx(1e-5)


def test_approx_release_rejects_invalid_epsilon(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    with pytest.raises(ConfigError):
        ledger.charge_approx("q", 0.0, 0.0, mechanism="laplace")


def test_calibrated_noise_spends_the_whole_budget_but_not_more(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    sigma = ledger.calibrate_noise(sample_rate=0.05, steps=200)
    for r in range(10):
        ledger.charge_gaussian(f"r{r}", GaussianSteps(sigma, 0.05, 20))
    spent = ledger.spent().epsilon
    assert spent <= BUDGET.epsilon
    assert spent > 0.99 * BUDGET.epsilon
    with pytest.raises(BudgetExhausted):
        ledger.charge_gaussian("r10", GaussianSteps(sigma, 0.05, 20))


def test_calibration_accounts_for_prior_spend(tmp_path: Path) -> None:
    prior = [GaussianSteps(2.0, 0.05, 100)]
    fresh = calibrate_noise([], 0.05, 100, 3.0, 1e-5)
    after = calibrate_noise(prior, 0.05, 100, 3.0, 1e-5)
    assert after > fresh
    assert epsilon(prior + [GaussianSteps(after, 0.05, 100)], 1e-5) <= 3.0


def test_calibration_caps_noise_when_budget_cannot_fit(tmp_path: Path) -> None:
    assert calibrate_noise([], 0.5, 10_000, 0.01, 1e-5, sigma_max=5.0) == 5.0


def _charge_many(path: str, worker: int) -> None:
    ledger = BudgetLedger(path, "loans", DatasetBudget(1e6, 1e-5))
    for r in range(25):
        ledger.charge_gaussian(f"w{worker}:r{r}", GaussianSteps(1.0, 0.01, 1))


def test_concurrent_processes_charge_without_losing_any(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    BudgetLedger(path, "loans", DatasetBudget(1e6, 1e-5))
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_charge_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # no wall-clock limit: a busy machine is slow, not wrong (pytest-timeout catches a hang)
        assert p.exitcode == 0
    ledger = BudgetLedger(path, "loans", DatasetBudget(1e6, 1e-5))
    assert len(ledger.charges()) == 75
    totals = [c.epsilon_total for c in ledger.charges()]
    assert totals == sorted(totals)


def test_ledger_uses_write_ahead_logging(tmp_path: Path) -> None:
    """Concurrent writers must not serialise behind readers or pay a journal rewrite per commit."""
    BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    conn = sqlite3.connect(tmp_path / "ledger.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_recomposing_a_long_history_computes_each_rdp_curve_once(tmp_path: Path, monkeypatch) -> None:
    """Every charge re-composes the dataset's whole history: that must not redo Opacus's RDP per row."""
    calls = []
    rdp = accounting._rdp()
    real = rdp.compute_rdp

    def counting(*args, **kwargs):
        calls.append(kwargs.get("noise_multiplier"))
        return real(*args, **kwargs)

    monkeypatch.setattr(rdp, "compute_rdp", counting)
    accounting._one_step_rdp.cache_clear()
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(1e6, 1e-5))
    acc = RDPAccountant()
    steps = GaussianSteps(0.9, 0.02, 7)
    for r in range(30):
        ledger.charge_gaussian(f"r{r}", steps)
        acc.history.append(steps.as_tuple())
    assert len(calls) == 1
    assert ledger.spent().epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


_CHARGE_THEN_DIE = """
import os, signal, sys
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger

ledger = BudgetLedger(sys.argv[1], "loans", DatasetBudget(3.0, 1e-5))
hold = ledger.hold_wal()
ledger.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20))
os.kill(os.getpid(), signal.SIGKILL)  # the hold never closes: the charge sits in the write-ahead log
"""


def test_a_held_ledger_keeps_its_log_between_charges_and_rests_as_before_once_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    ledger = BudgetLedger(path, "loans", BUDGET)
    hold = ledger.hold_wal()
    ledger.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20))
    assert (tmp_path / "ledger.db-wal").exists()  # not checkpointed and deleted after the charge
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]
    hold.close()
    hold.close()  # twice is harmless
    assert not (tmp_path / "ledger.db-wal").exists()  # the last connection checkpointed it
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]


def test_a_charge_made_under_a_hold_survives_a_sigkill(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "ledger.db"
    BudgetLedger(path, "loans", BUDGET)
    died = subprocess.run([sys.executable, "-c", _CHARGE_THEN_DIE, str(path)], capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    assert (tmp_path / "ledger.db-wal").exists()  # left by the holder that never closed
    put_to_rest(path)  # what the simulation engine does for its killed workers
    assert not (tmp_path / "ledger.db-wal").exists()
    (charge,) = BudgetLedger(path, "loans", BUDGET).charges()
    assert charge.charge_key == "r1" and charge.epsilon_total > 0


LARGE = DatasetBudget(1e6, 1e-5)


def _opens_fresh(path: str, out: "mp.Queue[str]") -> None:
    try:
        BudgetLedger(path, "loans", LARGE).charge_gaussian(f"pid{os.getpid()}", ROUND)
        out.put("ok")
    except BaseException as exc:  # reported to the parent, which fails the test with it
        out.put(repr(exc))


def test_a_new_ledger_is_made_whole_with_its_tables_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.db"
    ledger = BudgetLedger(path, "loans", BUDGET)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"charges", "refusals", "charges_dataset"} <= names
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ledger.db",
        "ledger.db.lock",
    ]  # nothing left over
    ledger.charge_gaussian("r1", ROUND)
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]


def test_a_creation_that_fails_before_the_rename_leaves_no_ledger(tmp_path: Path, monkeypatch) -> None:
    from fedcustomer.privacy.dp import ledger_file as ledger_module

    path = tmp_path / "ledger.db"

    def no_rename(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ledger_module.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        BudgetLedger(path, "loans", BUDGET)
    assert not path.exists()
    assert not (tmp_path / "ledger.db.new").exists()
    monkeypatch.undo()
    BudgetLedger(path, "loans", BUDGET).charge_gaussian("r1", ROUND)  # the next open creates it
    assert len(BudgetLedger(path, "loans", BUDGET).charges()) == 1


def test_a_half_made_ledger_left_by_a_crashed_creator_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "ledger.db.new").write_bytes(b"not a database")
    (tmp_path / "ledger.db.new-wal").write_bytes(b"stale log")
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    ledger.charge_gaussian("r1", ROUND)
    assert [c.charge_key for c in ledger.charges()] == ["r1"]
    assert not (tmp_path / "ledger.db.new").exists() and not (tmp_path / "ledger.db.new-wal").exists()


def test_processes_opening_a_new_ledger_at_once_share_one(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    ctx = mp.get_context("fork")
    out: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_opens_fresh, args=(path, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]  # waits on each process's report, not on a clock
    for p in procs:
        p.join()
    assert results == ["ok"] * 4
    assert len(BudgetLedger(path, "loans", LARGE).charges()) == 4  # no process created a second ledger
