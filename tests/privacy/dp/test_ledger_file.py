"""The held connection a ledger borrows: fewer connections and syncs, the same durable charges."""

import os
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.errors import BudgetExhausted
from fedcustomer.privacy.dp import ledger as ledger_module
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger

BUDGET = DatasetBudget(epsilon=3.0, delta=1e-5)
ROUND = GaussianSteps(noise_multiplier=1.1, sample_rate=0.05, steps=20)


def _count_connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = sqlite3.connect

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", counting)
    return opened


def test_a_held_ledger_reads_and_charges_on_the_held_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    hold = ledger.hold_wal()
    opened = _count_connects(monkeypatch)
    assert ledger.find("r1") is None
    charge = ledger.charge_gaussian("r1", ROUND)
    assert ledger.find("r1").seq == charge.seq and ledger.spent().epsilon == charge.epsilon_total
    assert opened == []  # no connection of its own: no second sync of the folder with its first commit
    hold.close()
    assert ledger.find("r1").seq == charge.seq  # closed: a connection per call again
    assert len(opened) == 1
    monkeypatch.undo()
    assert [c.charge_key for c in BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET).charges()] == ["r1"]


def test_a_failure_inside_a_held_transaction_leaves_the_ledger_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    ledger = BudgetLedger(path, "loans", BUDGET)
    hold = ledger.hold_wal()
    ledger.charge_gaussian("r1", ROUND)

    def broken(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk gone mid-charge")

    with monkeypatch.context() as m:
        m.setattr(BudgetLedger, "_spend_of", broken)
        with pytest.raises(OSError, match="mid-charge"):
            ledger.charge_gaussian("r2", ROUND)
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]
    # no transaction (nor its write lock) left on the held connection: another writer charges at once
    BudgetLedger(path, "loans", BUDGET).charge_gaussian("other", ROUND)
    assert ledger.charge_gaussian("r2", ROUND).charge_key == "r2"
    hold.close()
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1", "other", "r2"]


def test_a_refusal_under_a_hold_is_recorded_and_nothing_charged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = BudgetLedger(path, "loans", DatasetBudget(0.1, 1e-5))
    hold = ledger.hold_wal()
    with pytest.raises(BudgetExhausted):
        ledger.charge_gaussian("big", GaussianSteps(0.5, 0.5, 100))
    hold.close()
    reopened = BudgetLedger(path, "loans", DatasetBudget(0.1, 1e-5))
    assert reopened.charges() == [] and [r["charge_key"] for r in reopened.refusals()] == ["big"]


def test_a_borrower_that_leaves_a_transaction_open_has_it_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = BudgetLedger(path, "loans", BUDGET)
    hold = ledger.hold_wal()
    with pytest.raises(RuntimeError), hold.borrow() as conn:
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM charges")
        conn.execute(
            "INSERT INTO refusals (charge_key, dataset, time, mechanism, epsilon_would_be, epsilon_target, reason)"
            " VALUES ('x', 'loans', 't', 'm', 1, 1, 'r')"
        )
        raise RuntimeError("killed between the writes and COMMIT")
    assert BudgetLedger(path, "loans", BUDGET).refusals() == []
    ledger.charge_gaussian("r1", ROUND)  # the hold is still usable
    hold.close()
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]


def test_a_hold_is_lent_to_one_borrower_at_a_time_and_never_across_a_fork(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.db", "loans", BUDGET)
    hold = ledger.hold_wal()
    with hold.borrow() as first:
        assert first is not None
        with hold.borrow() as second:
            assert second is None  # nested (or another thread): the caller opens its own
        assert ledger.charge_gaussian("r1", ROUND).charge_key == "r1"  # on a fresh connection meanwhile
    hold._pid = -1  # as in a forked child
    with hold.borrow() as inherited:
        assert inherited is None
    hold._pid = os.getpid()
    hold.close()
    with hold.borrow() as closed:
        assert closed is None


def _schema_queries(hold: object) -> list[str]:
    statements: list[str] = []
    hold._conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    return statements


def test_a_ledger_made_on_a_checked_hold_skips_the_schema_check_and_still_charges(tmp_path: Path) -> None:
    """A node makes a ledger on the job's hold every round: the schema, found complete when the hold
    was made, is not read again; charges and reads are as before."""
    path = tmp_path / "ledger.db"
    hold = BudgetLedger(path, "loans", BUDGET).hold_wal()
    assert hold.schema_ready
    statements = _schema_queries(hold)
    again = BudgetLedger(path, "loans", BUDGET, hold=hold)
    assert not any("sqlite_master" in s or "journal_mode" in s or "table_info" in s for s in statements)
    assert again.charge_gaussian("r2", ROUND).charge_key == "r2"
    hold.close()
    assert not hold.schema_ready  # closed: the next ledger checks for itself
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r2"]


def test_a_hold_not_yet_checked_a_closed_one_or_a_forked_childs_checks_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    BudgetLedger(path, "loans", BUDGET)
    hold = ledger_module.WalHold(path)  # made directly: nobody has checked the schema on it yet
    assert not hold.schema_ready
    statements = _schema_queries(hold)
    BudgetLedger(path, "loans", BUDGET, hold=hold)
    assert any("sqlite_master" in s for s in statements)  # checked on the held connection...
    assert hold.schema_ready  # ...and remembered
    hold._pid = -1  # as in a forked child: never lent, and its mark is not trusted there
    assert not hold.schema_ready
    hold._pid = os.getpid()
    hold.close()


def test_a_ledger_whose_schema_is_incomplete_is_completed_and_only_then_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older ledger missing a table is brought up to the schema under a hold; a failure while doing so
    leaves the hold unmarked, so the next ledger checks again."""
    path = tmp_path / "ledger.db"
    BudgetLedger(path, "loans", BUDGET)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE kept_results")
    hold = ledger_module.WalHold(path)

    def failing(self):  # type: ignore[no-untyped-def]
        raise OSError("disk gone while completing the schema")

    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(BudgetLedger, "_transaction", failing)
        BudgetLedger(path, "loans", BUDGET, hold=hold)
    assert not hold.schema_ready
    BudgetLedger(path, "loans", BUDGET, hold=hold)  # completes it
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'kept_results'").fetchone()
    hold.close()
