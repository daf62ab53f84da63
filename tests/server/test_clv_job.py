"""A small CLV job on generated data: its target options travel to partners and summary.json reports them."""

import json
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.errors import ConfigError
from fedcustomer.jobs.train_message import TrainInstructions, encode_train_config
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import check_budgets, prepare_partners
from fedcustomer.server.run import run_job_on_grid

METRICS = ("mae", "rmse", "spearman", "top_decile_capture")


def test_clv_job_reports_rank_metrics_and_its_target(tmp_path: Path) -> None:
    job = JobConfig(
        data="synthetic",
        task="clv",
        partners=2,
        rounds=2,
        local_epochs=1,
        batch_size=256,
        epsilon=3.0,
        clv_spend_cap=800.0,
        clv_huber_delta=0.2,
        homes=str(tmp_path / "homes"),
        out=str(tmp_path / "run"),
        min_partners=2,
        federated_eval="final",
    )
    notices: list[str] = []
    spec, homes = prepare_partners(job, notices)
    check_budgets(homes, job)
    grid = LocalGrid(make_client_app([str(h.root) for h in homes]), len(homes))
    run_job_on_grid(grid, job, spec, num_partners=len(homes), notices=notices)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["primary_metric"] == "spearman"
    for name in METRICS:
        assert isinstance(summary["metrics"][name], float), name
    assert -1.0 <= summary["metrics"]["spearman"] <= 1.0
    assert 0.0 <= summary["metrics"]["top_decile_capture"] <= 1.0
    assert summary["model"]["clv_target"] == {
        "transform": "log1p",
        "spend_cap": 800.0,
        "loss": "huber",
        "huber_delta": 0.2,
    }


def test_target_options_reach_partners_for_clv_only(tmp_path: Path) -> None:
    from fedcustomer.data.features import FeatureSpec, NumericFeature

    spec = FeatureSpec("clv", "y", None, [NumericFeature("x", 0, 1)])
    clv = JobConfig(task="clv", clv_transform="raw", clv_loss="mse", out=str(tmp_path / "a"))
    ins = TrainInstructions.from_config(encode_train_config(clv, spec))
    assert ins.clv is not None and (ins.clv.transform, ins.clv.loss) == ("raw", "mse")
    repayment = JobConfig(task="repayment", out=str(tmp_path / "b"))
    message = encode_train_config(repayment, FeatureSpec("repayment", "y", None, [NumericFeature("x", 0, 1)]))
    assert not any(key.startswith("clv-") for key in message)
    assert TrainInstructions.from_config(message).clv is None


@pytest.mark.parametrize(
    "kw, needle",
    [({"clv_transform": "sqrt"}, "--clv-transform"), ({"clv_spend_cap": -5.0}, "--clv-spend-cap")],
)
def test_bad_clv_options_are_refused_before_anything_runs(tmp_path: Path, kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        JobConfig(task="clv", out=str(tmp_path / "r"), **kw)
