"""A new ledger written from the process's template: the bytes SQLite writes for a new ledger,
made whole the same way (synced, renamed, folder synced), and refused where it does not fit."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.privacy.dp import ledger_file
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.ledger_file import SCHEMA, create_whole
from tests.privacy.dp.test_ledger import ROUND

BUDGET = DatasetBudget(epsilon=1e6, delta=1e-5)


@pytest.fixture()
def no_template(monkeypatch: pytest.MonkeyPatch) -> dict:
    templates: dict = {}
    monkeypatch.setattr(ledger_file, "_TEMPLATES", templates)
    return templates


def _made_by_sqlite_only(path: Path) -> None:
    """What create_whole did before templates: SQLite builds every new ledger."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_ledger_from_the_template_has_the_bytes_sqlite_writes(
    tmp_path: Path, no_template: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    assert create_whole(tmp_path / "a" / "ledger.db", tmp_path / "a" / "lock") is True
    assert len(no_template) == 1

    def no_sqlite(*args: object, **kwargs: object) -> None:
        raise AssertionError("SQLite built a second ledger")

    monkeypatch.setattr(ledger_file.sqlite3, "connect", no_sqlite)
    assert create_whole(tmp_path / "b" / "ledger.db", tmp_path / "b" / "lock") is True
    monkeypatch.undo()
    _made_by_sqlite_only(tmp_path / "c" / "ledger.db")
    a, b, c = ((tmp_path / d / "ledger.db").read_bytes() for d in "abc")
    assert a == b == c
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["ledger.db", "lock"]  # nothing left over


def test_a_ledger_from_the_template_charges_refuses_and_keeps_results(
    tmp_path: Path, no_template: dict
) -> None:
    BudgetLedger(tmp_path / "first" / "ledger.db", "loans", BUDGET)  # makes the template
    assert no_template
    path = tmp_path / "second" / "ledger.db"
    ledger = BudgetLedger(path, "loans", BUDGET)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    ledger.charge_gaussian("r1", ROUND)
    assert [c.charge_key for c in BudgetLedger(path, "loans", BUDGET).charges()] == ["r1"]
    assert oct(path.stat().st_mode & 0o777) == oct((tmp_path / "first" / "ledger.db").stat().st_mode & 0o777)


def test_a_template_of_another_file_system_is_not_used(tmp_path: Path, no_template: dict) -> None:
    other_device = os.stat(tmp_path).st_dev + 1
    no_template[(other_device, sqlite3.sqlite_version, SCHEMA)] = b"not a database"
    path = tmp_path / "ledger.db"
    BudgetLedger(path, "loans", BUDGET).charge_gaussian("r1", ROUND)
    assert len(BudgetLedger(path, "loans", BUDGET).charges()) == 1
    assert len(no_template) == 2  # this file system's own template was made


def test_a_failure_while_writing_the_template_leaves_no_ledger(
    tmp_path: Path, no_template: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    BudgetLedger(tmp_path / "first" / "ledger.db", "loans", BUDGET)
    path = tmp_path / "second" / "ledger.db"
    path.parent.mkdir()

    def disk_full(fd: int, data: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(ledger_file.os, "write", disk_full)
    with pytest.raises(OSError, match="disk full"):
        BudgetLedger(path, "loans", BUDGET)
    monkeypatch.undo()
    assert not path.exists() and not (path.parent / "ledger.db.new").exists()
    BudgetLedger(path, "loans", BUDGET).charge_gaussian("r1", ROUND)  # the next open makes it whole
    assert len(BudgetLedger(path, "loans", BUDGET).charges()) == 1


def test_a_ledger_another_process_made_is_checked_not_created(tmp_path: Path, no_template: dict) -> None:
    path = tmp_path / "ledger.db"
    _made_by_sqlite_only(path)
    assert create_whole(path, tmp_path / "ledger.db.lock") is False
    BudgetLedger(path, "loans", BUDGET).charge_gaussian("r1", ROUND)
    assert len(BudgetLedger(path, "loans", BUDGET).charges()) == 1


def _new_ledger_in_child(path: str, out: mp.Queue[str]) -> None:
    try:
        BudgetLedger(path, "loans", BUDGET).charge_gaussian(f"pid{os.getpid()}", ROUND)
        out.put("ok")
    except BaseException as exc:  # reported to the parent, which fails the test with it
        out.put(repr(exc))


def test_forked_children_make_whole_ledgers_from_the_inherited_template(
    tmp_path: Path, no_template: dict
) -> None:
    BudgetLedger(tmp_path / "parent" / "ledger.db", "loans", BUDGET)
    assert no_template
    ctx = mp.get_context("fork")
    out: mp.Queue[str] = ctx.Queue()
    paths = [str(tmp_path / f"child{i}" / "ledger.db") for i in range(2)]
    procs = [ctx.Process(target=_new_ledger_in_child, args=(p, out)) for p in paths]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]  # waits on each child's report, not on a clock
    for p in procs:
        p.join()
    assert results == ["ok"] * 2
    for p in paths:
        assert len(BudgetLedger(p, "loans", BUDGET).charges()) == 1


def test_a_new_ledger_and_its_write_ahead_log_are_owner_and_group_only(
    tmp_path: Path, no_template: dict
) -> None:
    # ledger.db was world-readable (0644) beside an owner-only store and a 0640 audit log (found by a new-user trial)
    for sub in ("built", "from_template"):  # the first is built by SQLite, the second written from its bytes
        (tmp_path / sub).mkdir()
        path = tmp_path / sub / "ledger.db"
        assert create_whole(path, tmp_path / sub / "lock") is True
        ledger = BudgetLedger(path, "d", BUDGET)
        ledger.charge_gaussian("r1", ROUND)
        made = [p for p in (tmp_path / sub).iterdir() if p.name.startswith("ledger.db")]
        assert made and {oct(p.stat().st_mode & 0o777) for p in made} == {oct(ledger_file.LEDGER_MODE)}
