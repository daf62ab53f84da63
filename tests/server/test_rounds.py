"""Round loop and strategies on an in-process grid: refusals, failures, resume, outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.provision import provision_partner
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.job import STRATEGY_NAMES, JobConfig
from fedcustomer.server.run import run_job_on_grid
from tests.server.local_grid import LocalGrid
from tests.toy import SPEC, toy_frame


def _federation(
    tmp_path: Path, job: JobConfig, n: int = 3, rows: int = 800, broken: int | None = None
) -> list[str]:
    homes = []
    for i in range(n):
        train, test = toy_frame(rows, i, strength=1.25), toy_frame(300, 100 + i, strength=1.25)
        test["customer_id"] = "t" + test["customer_id"]
        if i == broken:
            train, test = train.rename(columns={"x2": "x3"}), test.rename(columns={"x2": "x3"})
        home, _ = provision_partner(
            tmp_path / f"bank_{i}",
            f"bank_{i}",
            source=job.data,
            task=job.task,
            spec=SPEC,
            train=train,
            test=test,
            budget=DatasetBudget(job.epsilon, job.delta),
        )
        homes.append(str(home.root))
    return homes


def _job(tmp_path: Path, **kw) -> JobConfig:
    base = dict(
        data="toy.csv",
        partners=3,
        rounds=3,
        arch="logreg",
        lr=0.5,
        batch_size=100,
        epsilon=3.0,
        out=str(tmp_path / "run"),
    )
    base.update(kw)
    return JobConfig(**base)


def test_three_partners_learn_and_stay_within_budget(tmp_path: Path) -> None:
    job = _job(tmp_path)
    grid = LocalGrid(make_client_app(_federation(tmp_path, job)), 3)
    summary = run_job_on_grid(grid, job, SPEC, num_partners=3)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert summary["metrics"]["auc"] > 0.75
    for p in summary["partners"]:
        assert 0 < p["epsilon_spent"] <= p["epsilon_target"] == 3.0
        assert p["rounds_trained"] == 3 and p["rounds_refused"] == 0
        assert len(p["accounting"]["history"]) == 3
    out = Path(job.out)
    for name in (
        "config.json",
        "summary.json",
        "metrics.csv",
        "model.pt",
        "feature_spec.json",
        "plots/auc_vs_round.png",
        "plots/epsilon_vs_round.png",
    ):
        assert (out / name).exists(), name
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_each_strategy_completes_a_dp_job(tmp_path: Path, strategy: str) -> None:
    job = _job(tmp_path, strategy=strategy, rounds=2)
    grid = LocalGrid(make_client_app(_federation(tmp_path, job, rows=400)), 3)
    summary = run_job_on_grid(grid, job, SPEC, num_partners=3)
    assert summary["rounds_completed"] == 2
    assert summary["metrics"]["auc"] == summary["metrics"]["auc"]  # not NaN: evaluation ran
    assert all(p["epsilon_spent"] <= p["epsilon_target"] for p in summary["partners"])


def test_tiny_budget_refuses_rounds_and_never_overspends(tmp_path: Path) -> None:
    job = _job(tmp_path, epsilon=0.8, rounds=30, max_noise_multiplier=3.0)
    homes = _federation(tmp_path, job)
    grid = LocalGrid(make_client_app(homes), 3)
    summary = run_job_on_grid(grid, job, SPEC, num_partners=3)
    assert summary["status"] == "stopped"
    assert "refused (privacy budget)" in summary["stop_reason"]
    assert 0 < summary["rounds_completed"] < 30
    for p in summary["partners"]:
        assert p["rounds_refused"] >= 1 and "past this partner's target" in p["refusals"][0]["reason"]
        assert p["epsilon_spent"] <= 0.8
    for home in homes:  # the ledgers agree
        ledger = BudgetLedger(Path(home) / "ledger.db", job.dataset_name, DatasetBudget(0.8, 1e-5))
        assert ledger.spent().epsilon <= 0.8 and ledger.refusals()


def test_node_dying_mid_job_completes_with_the_rest(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=3, min_partners=2)
    homes = _federation(tmp_path, job)
    # node 3 answers round 1's train + evaluate, then dies
    grid = LocalGrid(make_client_app(homes), 3, dead_after={3: 2})
    summary = run_job_on_grid(grid, job, SPEC, num_partners=3)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    dead = next(p for p in summary["partners"] if p["rounds_failed"])
    assert dead["rounds_trained"] == 1 and dead["rounds_failed"] == 2
    assert "no reply" in dead["failures"][0]["reason"]


def test_job_stops_cleanly_when_too_few_partners_remain(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=3, min_partners=3)
    grid = LocalGrid(make_client_app(_federation(tmp_path, job)), 3, dead_after={2: 2})
    summary = run_job_on_grid(grid, job, SPEC, num_partners=3)
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 1
    assert "need at least 3" in summary["stop_reason"] and "failed" in summary["stop_reason"]
    assert (Path(job.out) / "model.pt").exists()  # the last aggregated model, reported as such


def test_partner_with_broken_data_is_reported_as_failed_not_crashing_the_job(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=1)
    homes = _federation(tmp_path, job, broken=0)
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 3), job, SPEC, num_partners=3)
    broken = next(p for p in summary["partners"] if p["rounds_failed"])
    assert "DataError" in broken["failures"][0]["reason"] and "x2" in broken["failures"][0]["reason"]
    assert summary["rounds_completed"] == 1


def test_a_partner_that_fails_every_round_is_named_not_numbered(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=1)
    homes = _federation(tmp_path, job, broken=0)
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 3), job, SPEC, num_partners=3)
    broken = next(p for p in summary["partners"] if p["rounds_failed"])
    assert broken["name"] == "bank_0" and broken["failures"][0]["reason"].startswith("DataError: ")


def test_resume_continues_after_last_checkpoint_without_paying_twice(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=3)
    homes = _federation(tmp_path, job)
    # every node goes silent after round 1 (train + evaluate): the job stops, as if the coordinator lost them
    first = run_job_on_grid(
        LocalGrid(make_client_app(homes), 3, dead_after={1: 2, 2: 2, 3: 2}), job, SPEC, num_partners=3
    )
    assert first["status"] == "stopped" and first["rounds_completed"] == 1
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 3), job, SPEC, num_partners=3, resume=True)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    for home in homes:
        charges = BudgetLedger(Path(home) / "ledger.db", job.dataset_name, DatasetBudget(3.0, 1e-5)).charges()
        assert [c.round for c in charges] == [1, 2, 3]
        assert charges[-1].epsilon_total <= 3.0


def test_central_dp_reports_partner_level_epsilon(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=2, central_dp=True, central_noise_multiplier=1.0)
    summary = run_job_on_grid(
        LocalGrid(make_client_app(_federation(tmp_path, job)), 3), job, SPEC, num_partners=3
    )
    assert summary["central_dp"]["rounds"] == 2 and summary["central_dp"]["epsilon"] > 0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"epsilon": 0}, "--epsilon must be > 0"),
        ({"epsilon": -1}, "--epsilon must be > 0"),
        ({"strategy": "fedsgd"}, "unknown strategy"),
        ({"delta": 1.5}, "--delta"),
        ({"partners": 0}, "--partners"),
        ({"min_partners": 5}, "cannot exceed"),
    ],
)
def test_bad_job_options_are_config_errors(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobConfig(**kw)
