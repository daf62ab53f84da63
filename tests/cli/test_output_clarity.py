"""Outputs a user reads: charts with labelled axes that agree with the tables, ids never cut."""

from __future__ import annotations

import io
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure
from rich.console import Console

from fedcustomer.cli import analytics as cli_analytics
from fedcustomer.cli import main
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger


def _saved_figures(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    return figures


def test_metric_and_loss_have_one_labelled_axis_each(monkeypatch):
    from fedcustomer.server.report import RunRecorder
    from fedcustomer.server.rounds import PartnerRound, RoundReport

    figures = _saved_figures(monkeypatch)
    rec = SimpleNamespace(
        out=None,
        job=SimpleNamespace(task="repayment"),
        rounds=[
            RoundReport(
                r,
                [PartnerRound("bank0", "trained", metrics={"epsilon-total": r / 2, "epsilon-target": 3.0})],
                {},
                {"auc": 0.6 + r / 20, "loss": 0.7 - r / 20},
                1.0,
                True,
            )
            for r in (1, 2)
        ],
    )
    monkeypatch.setattr("pathlib.Path.mkdir", lambda *a, **k: None)
    rec.out = __import__("pathlib").Path("/nonexistent-run")
    RunRecorder._plots(rec)
    axes = figures[0].axes
    assert len(axes) == 2
    assert {ax.get_ylabel() for ax in axes} == {"held-out auc", "held-out loss"}


def _result(kind: str, confidence: float):
    spec = SimpleNamespace(kind=kind, confidence=confidence, dataset="retailer", epsilon=1.0)
    row = {
        "group": {"segment": "champions"},
        "statistic": "mean",
        "label": None,
        "estimate": 50.0,
        "ci_low": 40.0,
        "ci_high": 60.0,
        "count": {
            "group": {"segment": "champions"},
            "statistic": "count",
            "estimate": 120.0,
            "ci_low": 100.0,
            "ci_high": 140.0,
        },
    }
    return SimpleNamespace(spec=spec, rows=[row], partners=["a", "b"])


def test_rfm_chart_states_the_tables_level_and_what_its_bars_are(monkeypatch, tmp_path):
    from fedcustomer.analytics.report import plot_result

    figures = _saved_figures(monkeypatch)
    plot_result(
        tmp_path / "rfm.png", _result("mean", 0.995833), interval_label="95% simultaneous", mean_bars="count"
    )
    ax = figures[0].axes[0]
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "95% simultaneous" in legend and "99.58" not in legend
    assert "mean" not in ax.get_title() and "customers" in ax.get_title()


def test_a_mean_querys_chart_shows_the_means_its_table_shows(monkeypatch, tmp_path):
    # `query` with kind mean printed means but charted the group sizes (found by a new-user trial).
    from fedcustomer.analytics.report import plot_result

    figures = _saved_figures(monkeypatch)
    result = _result("mean", 0.95)
    result.spec.field = "default"
    plot_result(tmp_path / "result.png", result)
    ax = figures[0].axes[0]
    assert [p.get_height() for p in ax.patches] == [50.0]
    assert "mean default" in ax.get_title() and "customers" not in ax.get_title()


def test_budget_show_explains_per_row_epsilon_and_never_cuts_ids(tmp_path, monkeypatch):
    home = PartnerHome.create(tmp_path / "bank0", "bank0", budget=DatasetBudget(3.0, 1e-5))
    run_id = "20261129-101010-" + "a1b2c3" * 8
    BudgetLedger(home.ledger_path, "loans", DatasetBudget(3.0, 1e-5)).charge_gaussian(
        f"run:{run_id}:round:1", GaussianSteps(1.1, 0.05, 20), run_id=run_id, round=1
    )
    buf = io.StringIO()
    monkeypatch.setattr(cli_analytics, "console", Console(file=buf, width=80, color_system=None))
    try:
        main(["budget", "show", "--home", str(home.root)])
    except SystemExit as exc:
        assert not exc.code
    text = buf.getvalue()
    assert "eps alone" in text and "eps total" in text and "composed" in text
    assert "…" not in text
    column = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") >= 6)
    assert run_id in column


def test_a_noisy_count_below_its_interval_is_charted_not_a_crash_after_the_budget_was_paid(tmp_path):
    # An empty group's DP count came out at -30.5 with interval [0, 29.4]; the chart's +- error bars were then
    # negative and matplotlib raised, after every partner had paid (found by a new-user trial).
    from fedcustomer.analytics.report import plot_result

    result = _result("count", 0.95)
    result.rows = [
        {"group": {"contract": "weekly"}, "label": None, "estimate": -30.49, "ci_low": 0.0, "ci_high": 29.43},
        {
            "group": {"contract": "monthly"},
            "label": None,
            "estimate": 1928.0,
            "ci_low": 1870.0,
            "ci_high": 1986.0,
        },
    ]
    path = plot_result(tmp_path / "result.png", result)
    assert path is not None and path.exists() and path.stat().st_size > 0
