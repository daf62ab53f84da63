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
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import STRATEGY_NAMES, JobConfig
from fedcustomer.server.run import run_job_on_grid
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


# --- the round loop alone: scripted partners on the in-process grid, no data, no training ---------------


def _scripted_app(script: dict[int, dict[int, str]] | None = None):
    """A ClientApp whose node N answers round R as ``script[N][R]`` (default ``train``).

    ``train`` adds N to every weight and reports N as its loss; ``refuse`` refuses for its
    budget; ``error`` fails with a ``partner NAME: reason`` error; ``anon`` fails without a name.
    """
    from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()
    script = script or {}

    def partner(node: int, **extra) -> ConfigRecord:
        return ConfigRecord({"name": f"bank_{node}", **extra})

    @app.train()
    def train(msg: Message, context) -> Message:
        node = context.node_id
        rnd = int(msg.content["config"]["server-round"])
        kind = script.get(node, {}).get(rnd, "train")
        if kind == "error":
            return Message(Error(code=4100, reason=f"partner bank_{node}: DataError: no x2"), reply_to=msg)
        if kind == "anon":
            return Message(Error(code=1, reason="node crashed"), reply_to=msg)
        if kind == "refuse":
            content = RecordDict(
                {
                    "metrics": MetricRecord({"refused": 1.0, "num-examples": 0}),
                    "partner": partner(node, **{"refused-reason": f"budget of bank_{node} spent"}),
                }
            )
            return Message(content, reply_to=msg)
        state = msg.content["arrays"].to_numpy_ndarrays()
        accounting = json.dumps({"accountant": "rdp", "round": rnd})
        content = RecordDict(
            {
                "arrays": ArrayRecord([w + node for w in state]),
                "metrics": MetricRecord({"num-examples": 100, "train-loss": float(node)}),
                "partner": partner(node, **{"accounting-json": accounting}),
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context) -> Message:
        node = context.node_id
        content = RecordDict(
            {
                "metrics": MetricRecord({"num-examples": 100, "auc": 0.5 + node / 10}),
                "partner": partner(node),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _loop(grid, rounds: int = 2, min_partners: int = 2, strategy=None, **kw):
    import numpy as np
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from fedcustomer.server.rounds import run_rounds

    strategy = strategy or FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    return run_rounds(
        grid,
        strategy,
        ArrayRecord([np.zeros(2, dtype=np.float32)]),
        num_rounds=rounds,
        train_config=kw.pop("train_config", {"lr": 0.5}),
        min_partners=min_partners,
        timeout=5.0,
        **kw,
    )


def _weights(result) -> list[float]:
    return [float(v) for v in result.arrays.to_numpy_ndarrays()[0]]


def test_loop_aggregates_every_trained_partner_and_evaluates_each_round() -> None:
    seen = []
    result = _loop(LocalGrid(_scripted_app(), 3), rounds=2, on_round=lambda r, a: seen.append(r.round))
    assert result.status == "completed" and result.stop_reason is None and result.rounds_completed == 2
    assert _weights(result) == [4.0, 4.0]  # each round adds the mean of 1, 2, 3
    assert seen == [1, 2]
    first = result.rounds[0]
    assert first.applied and first.trained == 3
    assert {p.partner: p.status for p in first.partners} == dict.fromkeys(
        ["bank_1", "bank_2", "bank_3"], "trained"
    )
    assert first.eval_metrics["auc"] == pytest.approx(0.7)
    assert {p.partner: p.eval_metrics["auc"] for p in first.partners} == pytest.approx(
        {"bank_1": 0.6, "bank_2": 0.7, "bank_3": 0.8}
    )
    assert first.train_metrics["train-loss"] == pytest.approx(2.0)
    assert next(p for p in first.partners if p.partner == "bank_2").accounting == {
        "accountant": "rdp",
        "round": 1,
    }


def test_a_refusal_is_recorded_with_its_reason_and_kept_out_of_aggregation() -> None:
    result = _loop(LocalGrid(_scripted_app({3: {1: "refuse"}}), 3), rounds=1)
    assert result.status == "completed"
    assert _weights(result) == [1.5, 1.5]  # mean of 1 and 2: bank_3's reply is not aggregated
    refused = next(p for p in result.rounds[0].partners if p.partner == "bank_3")
    assert refused.status == "refused" and refused.reason == "budget of bank_3 spent"
    assert result.rounds[0].trained == 2


def test_a_named_failure_keeps_the_partner_name_and_the_reason_without_the_prefix() -> None:
    result = _loop(LocalGrid(_scripted_app({1: {1: "error"}, 2: {1: "anon"}}), 3), rounds=1, min_partners=1)
    by_name = {p.partner: p for p in result.rounds[0].partners}
    assert by_name["bank_1"].status == "failed" and by_name["bank_1"].reason == "DataError: no x2"
    assert by_name["node-2"].status == "failed" and by_name["node-2"].reason == "node crashed"
    assert _weights(result) == [3.0, 3.0]  # bank_3 alone


def test_a_node_that_stops_answering_is_failed_under_the_name_it_gave_before() -> None:
    # node 2 answers round 1's train and evaluate, then nothing
    result = _loop(LocalGrid(_scripted_app(), 3, dead_after={2: 2}), rounds=2)
    assert result.status == "completed"
    second = {p.partner: p for p in result.rounds[1].partners}
    assert second["bank_2"].status == "failed"
    assert second["bank_2"].reason == "no reply before the round timed out"
    assert _weights(result) == [4.0, 4.0]  # 2 (all three), then 2 (mean of 1 and 3)


def test_too_few_trained_partners_stop_the_job_keeping_the_last_model() -> None:
    reports = []
    script = {1: {2: "refuse"}, 2: {2: "error"}}
    result = _loop(
        LocalGrid(_scripted_app(script), 3), rounds=3, min_partners=2, on_round=lambda r, a: reports.append(r)
    )
    assert result.status == "stopped" and result.rounds_completed == 1
    assert result.stop_reason == (
        "round 2: only 1 partner(s) trained, need at least 2; refused (privacy budget): bank_1; failed: bank_2"
    )
    assert _weights(result) == [2.0, 2.0]  # round 1's model
    assert [r.applied for r in result.rounds] == [True, False] and reports[-1] is result.rounds[-1]
    assert reports[-1].eval_metrics == {} and reports[-1].train_metrics == {}


def test_refusals_of_a_non_private_job_are_not_blamed_on_the_budget() -> None:
    # Partners refusing --no-dp (their partner.toml does not allow it) were reported as "refused (privacy
    # budget)" and the CLI exited 6 (found by a new-user trial).
    import pytest

    from fedcustomer.cli.training import finish
    from fedcustomer.errors import AccessDenied

    script = {1: {1: "refuse"}, 2: {1: "refuse"}}
    result = _loop(LocalGrid(_scripted_app(script), 3), rounds=1, train_config={"lr": 0.5, "dp": False})
    head, names = result.stop_reason.rsplit(": ", 1)
    assert head == (
        "round 1: only 1 partner(s) trained, need at least 2; refused (training without DP is not allowed in "
        "their partner.toml)"
    )
    assert sorted(names.split(", ")) == ["bank_1", "bank_2"]  # in the order the replies came
    with pytest.raises(AccessDenied, match="allow_non_private = true"):
        finish({"rounds_completed": 0, "stop_reason": result.stop_reason})


def test_too_few_connected_nodes_stop_before_anything_is_sent() -> None:
    grid = LocalGrid(_scripted_app(), 2)
    result = _loop(grid, rounds=2, min_partners=3)
    assert result.status == "stopped" and result.rounds == []
    assert result.stop_reason == "round 1: only 2 partner node(s) connected; need 3"
    assert grid.calls == {1: 0, 2: 0}


def test_resume_runs_only_the_rounds_left_and_evaluation_can_wait_for_the_end() -> None:
    grid = LocalGrid(_scripted_app(), 2)
    result = _loop(grid, rounds=4, first_round=3, evaluate_every_round=False)
    assert [r.round for r in result.rounds] == [3, 4]
    assert result.rounds[0].eval_metrics == {} and result.rounds[1].eval_metrics["auc"] == pytest.approx(0.65)
    assert grid.calls == {1: 3, 2: 3}  # two trains and one evaluation each
    none = _loop(LocalGrid(_scripted_app(), 2), rounds=1, evaluate_at_end=False, evaluate_every_round=False)
    assert none.rounds[0].eval_metrics == {}


def test_an_aggregation_without_a_model_stops_the_job() -> None:
    from flwr.serverapp.strategy import FedAvg

    class NoModel(FedAvg):
        def aggregate_train(self, server_round, replies):
            return None, None

    strategy = NoModel(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    result = _loop(LocalGrid(_scripted_app(), 2), rounds=2, strategy=strategy)
    assert result.status == "stopped" and result.stop_reason == "round 1: aggregation produced no model"
    assert _weights(result) == [0.0, 0.0]


@pytest.mark.parametrize(
    "reason, expected",
    [
        ("partner bank_a: DataError: no x2", ("bank_a", "DataError: no x2")),
        ("partner bank_a: two\nlines", ("bank_a", "two\nlines")),
        ("partner with spaces: x", (None, "partner with spaces: x")),
        ("node crashed", (None, "node crashed")),
    ],
)
def test_named_failure_splits_name_and_reason(reason: str, expected: tuple) -> None:
    from fedcustomer.server.rounds import _named_failure

    assert _named_failure(reason) == expected
