"""A partner's ledger held against its audit log, after real in-process jobs and queries.

Each edit below keeps the ledger self-consistent (its totals composed from what the row now says), so
the library recomputation passes; only the release's audit entry, written when it was paid, disagrees.
Horizontal rounds, a split-learning job's rounds and label release, and analytics queries are covered.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_audit import (
    check_ledger_against_audit,
    query_key,
    round_key,
    vertical_label_key,
    vertical_round_key,
)
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
        "releases_checked": 2,
        "checked_by_kind": {"fl_round": 2},
        "releases_disagreeing": 0,
        "disagreements": [],
        "releases_without_audit_entry": [],
    }
    code, out, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 0, err
    assert "2 paid release(s) held against their audit entries (fl_round 2): all agree" in out


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
    assert code == 7 and "disagrees with its audit log on 2 release(s)" in err


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


def _recharge(home: PartnerHome, change: dict[str, float]) -> None:
    """Rewrite the whole ledger, multiplying the noise (Gaussian rows) or epsilon (others) of the keys in
    ``change``; the ledger composes every total again, so the rewritten file agrees with itself."""
    from fedcustomer.privacy.dp.ledger import GAUSSIAN

    charges = home.ledger("-", home.config().budget_for()).all_charges()
    with sqlite3.connect(home.ledger_path) as conn:
        conn.execute("DELETE FROM charges")
    for c in charges:
        forged = home.ledger(c.dataset, home.config().budget_for())
        factor = change.get(c.charge_key, 1.0)
        if c.family == GAUSSIAN:
            steps = GaussianSteps(float(c.noise_multiplier) * factor, float(c.sample_rate), int(c.steps or 0))
            forged.charge_gaussian(
                c.charge_key,
                steps,
                mechanism=c.mechanism,
                run_id=c.run_id,
                round=c.round,
                query_id=c.query_id,
            )
        else:
            forged.charge_approx(
                c.charge_key,
                float(c.epsilon) * factor,
                float(c.delta or 0.0),
                mechanism=c.mechanism,
                run_id=c.run_id,
                query_id=c.query_id,
            )


@pytest.fixture(scope="module")
def vertical(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Both parties' homes after a 2-round split-learning job (copied per test before any edit)."""
    from fedcustomer.vertical.runner import run_vertical_local
    from tests.vertical.small_jobs import small_vertical_job

    tmp_path = tmp_path_factory.mktemp("vertical")
    job = small_vertical_job(tmp_path / "run", rounds=2, steps_per_round=2, baseline=False)
    assert run_vertical_local(job)["status"] == "completed"
    return tmp_path / "run" / "partners", job.run_id


def test_a_split_learning_jobs_rounds_and_label_release_agree_with_their_entries(
    vertical, tmp_path: Path
) -> None:
    partners, run_id = vertical
    for name, role, kinds in (
        ("bank", "active", {"vertical_round": 2, "label_release": 1}),
        ("retailer", "passive", {"vertical_round": 2}),
    ):
        home, _ = _copy((partners / name, run_id), tmp_path / name)
        charges, report = _check(home)
        assert report.ok, report.disagreements
        assert report.checked_by_kind == kinds and report.unlogged == []
        assert {c.charge_key for c in charges} >= {vertical_round_key(run_id, role, r) for r in (1, 2)}


def test_a_split_learning_round_rewritten_with_more_noise_is_caught(vertical, tmp_path: Path, capsys) -> None:
    partners, run_id = vertical
    home, _ = _copy((partners / "retailer", run_id), tmp_path)
    second = vertical_round_key(run_id, "passive", 2)
    _recharge(home, {second: 1.5})
    charges, report = _check(home)
    assert all(r.ok for r in recompute(charges))  # the libraries alone cannot tell
    assert [k for k, _ in report.disagreements] == [second, second]  # its total and its noise multiplier
    code, _, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "disagrees with its audit log on 1 release(s)" in err and second in err


def test_a_label_release_rewritten_cheaper_is_caught(vertical, tmp_path: Path) -> None:
    partners, run_id = vertical
    home, _ = _copy((partners / "bank", run_id), tmp_path)
    labels = vertical_label_key(run_id, "active")
    (label,) = [c for c in _check(home)[0] if c.charge_key == labels]
    change = (
        {labels: 0.5} if label.family != "gaussian_rdp" else {labels: 2.0}
    )  # a cheaper release either way
    _recharge(home, change)
    charges, report = _check(home)
    assert all(r.ok for r in recompute(charges))
    problems = dict(report.disagreements)
    assert "label release epsilon" in problems[labels]
    # the rounds after it now total less than their entries say
    assert vertical_round_key(run_id, "active", 1) in problems


def test_queries_agree_with_their_entries_and_a_cheaper_rewrite_is_caught(tmp_path: Path, capsys) -> None:
    from fedcustomer.analytics.partner import answer_query
    from fedcustomer.analytics.runner import setup_synthetic
    from fedcustomer.analytics.spec import QuerySpec
    from fedcustomer.privacy.dp.budget import DatasetBudget

    (home,) = setup_synthetic(
        tmp_path / "partners", 1, seed=3, customers=(200,), budget=DatasetBudget(5.0, 1e-5)
    )
    regions = ("north", "south", "east", "west", "central")

    def count(qid: str, eps: float, **kw: object) -> QuerySpec:
        return QuerySpec(
            dataset="retailer",
            kind="count",
            group_by=("region",),
            groups={"region": regions},
            epsilon=eps,
            query_id=qid,
            **kw,  # type: ignore[arg-type]
        )

    answer_query(home, count("q-laplace", 0.8))
    answer_query(home, count("q-gauss", 0.5, mechanism="gaussian", delta=1e-7))
    answer_query(home, count("q-laplace", 0.8))  # a replay logs the total its first answer paid
    _, report = _check(home)  # the replay's entry is checked too; it is the same release
    assert report.ok and report.checked_by_kind == {"query": 2} and report.unlogged == []

    _recharge(home, {query_key("q-laplace"): 0.25})
    charges, report = _check(home)
    assert all(r.ok for r in recompute(charges))
    assert {k for k, _ in report.disagreements} == {query_key("q-laplace"), query_key("q-gauss")}
    assert report.disagreeing == 2  # the rewritten query, and the later one whose total it lowered
    assert report.summary() == "2 paid release(s) held against their audit entries (query 2): 2 disagree"
    code, out, err = run(["budget", "verify", "--home", str(home.root), "--json"], capsys)
    assert code == 7
    against = json.loads(out)["against_audit_log"]
    assert against["checked_by_kind"] == {"query": 2} and against["releases_disagreeing"] == 2
