"""A partner's ledger held against its audit log, after a real in-process job.

Each edit below keeps the ledger self-consistent (its totals composed from what the row now says), so
the library recomputation passes; only the round's audit entry, written when it was paid, disagrees.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_audit import check_ledger_against_audit, round_key
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.recompute import recompute
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.run import run_job_on_grid
from tests.cli.cli_runner import run
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One partner home after a 2-round DP job (copied per test before any edit)."""
    tmp_path = tmp_path_factory.mktemp("job")
    job = _job(tmp_path, partners=2, min_partners=2, rounds=2, federated_eval="none")
    homes = _federation(tmp_path, job, n=2)
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 2), job, SPEC, num_partners=2)
    assert summary["status"] == "completed"
    return Path(homes[0]), job.run_id


def _copy(trained: tuple[Path, str], tmp_path: Path) -> tuple[PartnerHome, str]:
    import shutil

    src, run_id = trained
    shutil.copytree(src, tmp_path / "home")
    return PartnerHome(tmp_path / "home"), run_id


def _check(home: PartnerHome):
    charges = home.ledger("-", home.config().budget_for()).all_charges()
    return charges, check_ledger_against_audit(charges, AuditLog(home.audit_dir))


def test_a_jobs_rounds_agree_with_their_audit_entries(trained, tmp_path: Path, capsys) -> None:
    home, run_id = _copy(trained, tmp_path)
    _, report = _check(home)
    assert report.ok and report.checked == 2 and report.unlogged == []
    code, out, err = run(["budget", "verify", "--home", str(home.root), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["against_audit_log"] == {
        "rounds_checked": 2,
        "disagreements": [],
        "rounds_without_audit_entry": [],
    }


def test_a_row_rewritten_with_less_noise_charged_and_consistent_totals_is_caught(
    trained, tmp_path: Path, capsys
) -> None:
    home, run_id = _copy(trained, tmp_path)
    charges, _ = _check(home)
    # rewrite the ledger as if the rounds had cost less (more noise), totals recomposed by the ledger itself
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute("DELETE FROM charges")
    forged = home.ledger(charges[0].dataset, home.config().budget_for())
    for c in charges:
        forged.charge_gaussian(
            c.charge_key,
            GaussianSteps(float(c.noise_multiplier) * 1.5, float(c.sample_rate), int(c.steps or 0)),
            run_id=c.run_id,
            round=c.round,
        )
    charges, report = _check(home)
    assert all(r.ok for r in recompute(charges))  # the libraries alone cannot tell
    assert not report.ok
    assert [k for k, _ in report.disagreements] == [round_key(run_id, 1)] * 2 + [round_key(run_id, 2)] * 2
    code, _, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "disagrees with its audit log on 2 round(s)" in err


def test_a_deleted_round_is_caught(trained, tmp_path: Path, capsys) -> None:
    home, run_id = _copy(trained, tmp_path)
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute("DELETE FROM charges WHERE charge_key = ?", (round_key(run_id, 2),))
    _, report = _check(home)
    assert (
        report.disagreements == [(round_key(run_id, 2), report.disagreements[0][1])]
        and "the ledger no longer has" in report.disagreements[0][1]
    )
    code, _, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "no longer has" in err


def test_a_paid_round_without_its_entry_is_listed_not_failed(trained, tmp_path: Path) -> None:
    home, run_id = _copy(trained, tmp_path)
    charges, _ = _check(home)
    entries = [e for e in AuditLog(home.audit_dir) if e.details.get("round") != 2]
    report = check_ledger_against_audit(charges, entries)
    assert report.ok and report.checked == 1 and report.unlogged == [round_key(run_id, 2)]


def test_the_consoles_recompute_holds_the_same_check(trained, tmp_path: Path) -> None:
    from fedcustomer.console import budgets

    home, run_id = _copy(trained, tmp_path)
    report = budgets.against_audit(home.ledger_path, home.audit_dir)
    assert report.ok and report.checked == 2
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute("DELETE FROM charges WHERE charge_key = ?", (round_key(run_id, 1),))
    report = budgets.against_audit(home.ledger_path, home.audit_dir)
    assert [k for k, _ in report.disagreements] == [round_key(run_id, 1)]
