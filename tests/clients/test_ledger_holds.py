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


def _count_ledger_connects(monkeypatch) -> list[object]:
    """The paths the ledger module opens SQLite connections on from now on, in order."""
    import sqlite3

    from fedcustomer.privacy.dp import ledger as ledger_module

    opened: list[object] = []
    real_connect = sqlite3.connect

    def counting_connect(*args, **kwargs):
        opened.append(args[0])
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", counting_connect)
    return opened


def test_a_ledger_lent_the_hold_at_construction_opens_no_connection_of_its_own(
    tmp_path: Path, monkeypatch
) -> None:
    holds = LedgerHolds()
    path = tmp_path / "ledger.db"
    key = (str(tmp_path), "run-1")
    first = BudgetLedger(path, "loans", BUDGET)
    holds.hold(key, first)
    first.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20))
    opened = _count_ledger_connects(monkeypatch)
    BudgetLedger(path, "loans", BUDGET)  # without the hold: its schema check opens a connection
    assert len(opened) == 1
    second = BudgetLedger(path, "loans", BUDGET, hold=holds.current(key))
    assert holds.hold(key, second) is holds.current(key)
    second.charge_gaussian("r2", GaussianSteps(1.1, 0.05, 20))
    assert len(opened) == 1  # the check and the charge ran on the job's hold
    holds.release(key)
    assert holds.current(key) is None
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1", "r2"]


def test_a_nodes_later_rounds_open_no_ledger_connection(tmp_path: Path, monkeypatch) -> None:
    from fedcustomer.clients import job_matrices
    from fedcustomer.clients.node import PartnerNode
    from tests.clients.test_node import _global, _home, _ins

    home = _home(tmp_path, 3.0)
    state = PartnerNode(home).train_round(_global(), _ins(1, planned=3, run="held")).state_dict
    opened = _count_ledger_connects(monkeypatch)
    out = PartnerNode(home).train_round(state, _ins(2, planned=3, run="held"))
    assert not out.refused and opened == []
    monkeypatch.undo()
    PartnerNode(home).train_round(out.state_dict, _ins(3, planned=3, run="held"))
    assert [c.round for c in home.ledger("toy").charges()] == [1, 2, 3]
    job_matrices.CACHE.drop_run("held")
