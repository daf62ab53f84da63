"""A job's ledger hold: made once per (home, run), lent to each round's ledger, released at the end."""

from pathlib import Path

from fedcustomer.clients.ledger_holds import LedgerHolds
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger

BUDGET = DatasetBudget(epsilon=3.0, delta=1e-5)


def test_each_rounds_ledger_borrows_the_one_hold_of_its_job(tmp_path: Path) -> None:
    holds = LedgerHolds()
    path = tmp_path / "ledger.db"
    key = (str(tmp_path), "run-1")
    first = BudgetLedger(path, "loans", BUDGET)
    hold = holds.hold(key, first)
    assert hold is not None
    first.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20))
    second = BudgetLedger(path, "loans", BUDGET)  # the next round's ledger object
    assert holds.hold(key, second) is hold
    with hold.borrow() as conn:
        assert conn is not None  # free between calls
        assert second.find("r1") is not None  # lent already: the ledger opens its own meanwhile
    second.charge_gaussian("r2", GaussianSteps(1.1, 0.05, 20))
    assert (tmp_path / "ledger.db-wal").exists()
    holds.release(key)
    assert key not in holds and not (tmp_path / "ledger.db-wal").exists()  # at rest as before
    assert [c.charge_key for c in second.charges()] == ["r1", "r2"]  # after release: its own connections


def test_a_ledger_that_cannot_be_held_is_charged_without_a_hold(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    holds = LedgerHolds()
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)

    def refuse() -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(ledger, "hold_wal", refuse)
    assert holds.hold((str(tmp_path), "run-1"), ledger) is None
    assert ledger.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20)).charge_key == "r1"
