"""Run pages, charts, comparison, downloads and live progress; the budget recomputation."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from fedcustomer.console import budgets
from fedcustomer.console.charts import MAX_POINTS, line_chart
from fedcustomer.console.runs import RunsFolder
from fedcustomer.errors import ConfigError
from tests.console.conftest import World, write_run
from tests.console.helpers import sign_in


@pytest.fixture(scope="module")
def dana(world: World):
    app = world.app()
    return sign_in(world, app, "dana")


def test_run_page_has_charts_per_metric_and_partner_and_the_refusals(dana) -> None:
    html = dana.get("/runs/run-a").text
    assert html.count("<svg") == 4  # auc, loss, epsilon per partner, partners per round
    assert 'data-series="bank_a"' in html and 'data-series="retail_b"' in html
    assert "budget: &lt;script&gt;" in html and "refusal" in html
    assert 'href="/runs/run-a/files/model.pt"' in html
    assert dana.get("/runs/run-a/files/model.pt").content == b"weights"


def test_downloads_and_names_outside_the_runs_folder_are_refused(dana) -> None:
    for path in (
        "/runs/run-a/files/..%2F..%2Fetc%2Fpasswd",
        "/runs/run-a/files/feature_spec.json",
        "/runs/..%2Frun-a",
        "/runs/nope",
    ):
        assert dana.get(path).status_code == 404, path


def test_a_running_job_is_polled_and_progress_follows_the_metrics_file(world: World, dana) -> None:
    page = dana.get("/runs/run-live").text
    assert 'src="/static/live.js"' in page and 'data-status="running"' in page
    assert dana.get("/runs/run-live/progress").json() == {
        "name": "run-live",
        "status": "running",
        "rounds_done": 8,
        "rounds_planned": 8,
    }
    with open(world.runs / "run-live" / "metrics.csv", "a") as f:
        f.write("9,1,1,0,0,0.5,0.7,0.6,0.9\n")
    assert dana.get("/runs/run-live/progress").json()["rounds_done"] == 9
    assert "live.js" not in dana.get("/runs/run-a").text
    assert dana.get("/static/live.js").status_code == 200


def test_side_by_side_comparison(dana) -> None:
    html = dana.get("/runs/compare", params=[("run", "run-a"), ("run", "run-b")]).text
    assert "run-a" in html and "run-b" in html and html.count("<svg") == 2
    assert dana.get("/runs/compare", params={"run": "run-a"}).status_code == 400


def test_runs_list_and_folder_rules(tmp_path) -> None:
    write_run(tmp_path, "r1", 3, ["p"])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "not-a-run").mkdir()
    folder = RunsFolder(tmp_path)
    assert folder.names() == ["r1"]
    run = folder.load("r1")
    assert run.status == "completed" and run.rounds_done == 3 and run.partners == ["p"]
    with pytest.raises(ConfigError):
        folder.path_of("../r1")
    assert RunsFolder(None).names() == []


def test_charts_escape_labels_and_thin_long_series() -> None:
    svg = str(line_chart("<t>", [("<p>", [(float(i), math.sin(i)) for i in range(5000)])]))
    assert "<t>" not in svg and "&lt;p&gt;" in svg
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) == MAX_POINTS
    assert "no data yet" in str(line_chart("empty", []))


def test_budget_recomputation_matches_the_ledger_and_catches_an_edit(world: World) -> None:
    rows = budgets.charges(world.home.ledger_path, recompute=True)
    assert len(rows) == 5 and all(r.matches for r in rows)
    import sqlite3

    copy = world.root / "edited-ledger.db"
    with sqlite3.connect(world.home.ledger_path) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as con:
        con.execute("UPDATE charges SET epsilon_total = epsilon_total / 2 WHERE seq = 2")
    edited = budgets.charges(copy, recompute=True)
    assert [r.matches for r in edited] == [True, False, True, True, True]
    assert budgets.charges(world.root / "missing.db") == []


def test_a_dp_query_result_shows_estimates_with_intervals_and_never_the_truth(world: World, dana) -> None:
    import json

    folder = world.runs / "query-1"
    folder.mkdir()
    result = {
        "format": "fedcustomer.analytics.result/1",
        "query_id": "q-regions",
        "kind": "sum",
        "dataset": "bank",
        "confidence": 0.95,
        "partners": ["bank_a"],
        "refused": {"retail_b": "budget <b>exhausted</b>"},
        "spend": {"bank_a": {"epsilon_total": 1.2}},
        "rows": [
            {
                "group": "north",
                "statistic": "sum",
                "label": "north",
                "estimate": 1234.5,
                "ci_low": 1100.25,
                "ci_high": 1368.75,
                "noise_sd": 68.2,
            }
        ],
        "truth": [{"group": "north", "value": 98765.4321}],
    }
    (folder / "result.json").write_text(json.dumps(result))
    html = dana.get("/runs/query-1").text
    assert "q-regions" in html and "1234" in html and "[1100, 1369]" in html and "95% interval" in html
    assert "98765" not in html and "budget &lt;b&gt;exhausted" in html
    assert "completed" in dana.get("/runs").text


def test_budget_page_charts_epsilon_over_time_overall_and_per_dataset(world: World) -> None:
    carol = sign_in(world, world.app(), "carol")
    html = carol.get("/budgets").text
    assert html.count("<svg") == 3 and "epsilon spent over time" in html and "time (UTC)" in html
    checked = carol.get("/budgets?recompute=1").text
    assert 'id="audit-agreement" class="ok"' in checked and "Held against the audit log" in checked
    assert "<script>alert" not in html


def test_budget_recomputation_follows_each_rows_accountant(tmp_path: Path) -> None:
    """A PLD partner's rows recompute with dp-accounting, not with RDP (which would flag them all)."""
    from fedcustomer.privacy.dp.accountants import Accountant
    from fedcustomer.privacy.dp.accounting import GaussianSteps
    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.privacy.dp.ledger import BudgetLedger

    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(10.0, 1e-5), Accountant("pld", 1e-3))
    ledger.charge_gaussian("r1", GaussianSteps(1.1, 0.05, 20))
    ledger.charge_approx("q1", 0.5, 0.0, mechanism="laplace")
    ledger.charge_gaussian("r2", GaussianSteps(1.1, 0.05, 20))
    rows = budgets.charges(ledger.path, recompute=True)
    assert [r.matches for r in rows] == [True, True, True]
    with sqlite3.connect(ledger.path) as con:
        con.execute(
            "UPDATE charges SET epsilon = epsilon / 2 WHERE seq = 3"
        )  # the row's own epsilon, not its total
    assert [r.matches for r in budgets.charges(ledger.path, recompute=True)] == [True, True, False]


def test_budget_recomputation_names_a_distributed_row_charged_without_trust(tmp_path: Path) -> None:
    """The totals of such a row recompute (they were composed from what it was charged); its parameters do not agree."""
    from fedcustomer.privacy.dp import distributed as dd
    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.privacy.dp.ledger import BudgetLedger

    ledger = BudgetLedger(tmp_path / "ledger.db", "d", DatasetBudget(50.0, 1e-5))
    untrusted = dd.DistributedStep(1.3, 0.05, 0.7, 4)
    for r, steps in enumerate((untrusted.charged_steps(), untrusted.coordinator_steps())):
        eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), 1e-5, extra=untrusted)
        ledger.charge_gaussian(
            f"r{r}",
            steps,
            mechanism=dd.MECHANISM,
            details=untrusted.details()
            | {"epsilon_total_coordinator": eps_a, "epsilon_total_single_update": eps_b},
        )
    rows = budgets.charges(ledger.path, recompute=True)
    assert [r.matches for r in rows] == [True, False]
    assert rows[1].recomputed == pytest.approx(rows[1].epsilon_total, rel=1e-9)
    assert rows[1].problems == ("charged noise multiplier 1.3 is not the single_update view's 0.65",)
