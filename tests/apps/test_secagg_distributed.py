"""Distributed DP under SecAgg+, end to end on an in-process grid running Flower's SecAgg+ workflow."""

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedcustomer.apps.secagg import make_secagg_client_app, run_secagg_job
from fedcustomer.errors import ConfigError
from fedcustomer.models.registry import build_model
from fedcustomer.partner.ledger_audit import check_ledger_against_audit
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp import distributed as dd
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid, SecAggLocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import prepare_partners
from fedcustomer.server.run import run_job_on_grid


def kept_update(home, run_id: str, rnd: int) -> bytes:
    """The bytes of the update a partner released in round ``rnd``, kept in its charge's ledger row."""
    with sqlite3.connect(home.ledger_path) as conn:
        row = conn.execute(
            "SELECT data FROM kept_results WHERE charge_key = ?", (f"run:{run_id}:round:{rnd}",)
        ).fetchone()
    assert row is not None, f"no update kept for round {rnd}"
    return bytes(row[0])


def _job(tmp_path: Path, **kw) -> JobConfig:
    base = dict(
        partners=3,
        min_partners=3,
        rounds=1,
        arch="logreg",
        dp_mode="distributed",
        sample_rate=0.05,
        lr=0.5,
        epsilon=3.0,
        homes=str(tmp_path / "homes"),
        out=str(tmp_path / "run"),
        federated_eval="none",
        seed=3,
    )
    return JobConfig(**(base | kw))


def _context(job: JobConfig) -> Context:
    run_config = {k: v for k, v in job.to_dict().items() if v is not None} | {"wait-for-partners": 0.0}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def _setup(tmp_path: Path, job: JobConfig, trusted: int):
    spec, homes = prepare_partners(job)
    for i, home in enumerate(homes):
        config = home.config()
        config.secagg_trust = i < trusted
        if not config.secagg_trust:  # a budget that affords the weaker guarantee's charge
            config.budget = DatasetBudget(50.0, job.delta)
        home.write_config(config)
    return spec, homes


def test_each_round_is_one_dp_sgd_step_with_the_secure_sum(tmp_path: Path) -> None:
    job = _job(tmp_path)
    spec, homes = _setup(tmp_path, job, trusted=2)
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3)
    summary = run_secagg_job(grid, _context(job))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    # nobody named an accountant: the coordinator asked, every partner charges with RDP, so RDP it is
    assert summary["accountant_choice"] == {"requested": "auto", "used": "rdp", "partners": ["rdp"] * 3}
    report = json.loads((Path(job.out) / "summary.json").read_text())["distributed_dp"]
    assert report["accountant"] == "rdp"
    sigma = report["noise_multiplier"]
    assert report["epsilon_coordinator"] == pytest.approx(
        dd.run_epsilons(dd.DistributedStep(sigma, 0.05, job.max_grad_norm, 3), 1, job.delta)[0]
    )
    # the secure sum's clip events are held inside the job's delta, not added to it
    assert report["delta_coordinator"] == job.delta
    assert 0 < report["quantisation"]["clip_event_delta_reserved"] < 1e-12
    assert report["epsilon_single_update"] > report["epsilon_coordinator"]
    assert len(report["partners"]) == 3
    assert all("epsilon_coordinator" in p and "epsilon_single_update" in p for p in report["partners"])

    # the model moved by exactly -lr * (sum of the released contributions) / (q * N_total)
    sums, rows = None, 0.0
    for i, home in enumerate(homes):
        ledger = home.ledger(job.dataset_name)
        (charge,) = ledger.charges()
        assert charge.mechanism == dd.MECHANISM and charge.steps == 1 and charge.sample_rate == 0.05
        expected_sigma = sigma if i < 2 else sigma / 3**0.5  # trusted: (a); not trusted: (b)
        assert charge.noise_multiplier == pytest.approx(expected_sigma)
        assert charge.details["charged"] == ("coordinator" if i < 2 else "single_update")
        # one round's clip event: three contributions; reserved in the ledger only where (a) is charged
        assert charge.details["clip_event_probability"] == pytest.approx(3 * 2 * dd.TAIL_PROBABILITY)
        assert charge.details.get("event_probability", 0.0) == (
            charge.details["clip_event_probability"] if i < 2 else 0.0
        )
        assert charge.details["epsilon_total_coordinator"] == pytest.approx(report["epsilon_coordinator"])
        assert charge.details["epsilon_total_single_update"] == pytest.approx(report["epsilon_single_update"])
        assert charge.epsilon_total == pytest.approx(
            report["epsilon_coordinator"] if i < 2 else report["epsilon_single_update"]
        )
        # the round's audit entry kept what the ledger charged: a compliance officer can hold one against the other
        against_log = check_ledger_against_audit(ledger.all_charges(), AuditLog(home.audit_dir))
        assert against_log.ok and against_log.checked == 1 and against_log.unlogged == []
        blob = torch.load(io.BytesIO(kept_update(home, job.run_id, 1)), weights_only=True)
        released = list(blob["state"].values())
        sums = released if sums is None else [a + b for a, b in zip(sums, released)]
        rows += blob["metrics"]["num-examples"]
        assert (
            blob["accounting"] == {}
        )  # kept with its charge, without its spend: the ledger row above holds it
    initial = build_model(job.task, job.arch, spec.input_dim, seed=job.seed)
    final = torch.load(Path(job.out) / "model.pt", weights_only=True)
    for (name, p), s in zip(initial.named_parameters(), sums):
        step = job.lr * s / (0.05 * rows)
        assert torch.allclose(final[name], p.detach() - step, atol=1e-4), name
        assert not torch.allclose(final[name], p.detach())


def test_a_sum_with_fewer_than_n_min_contributions_is_never_unmasked(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="fedcustomer.apps.secagg_distributed")
    job = _job(tmp_path)
    _, homes = _setup(tmp_path, job, trusted=3)
    # node 3 answers the key stages, then dies before sending its masked vector
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3, dead_after={3: 2})
    summary = run_secagg_job(grid, _context(job))
    assert summary["rounds_completed"] == 0 and summary["status"] == "stopped"
    # the partners, not the coordinator's good will, kept the short sum masked
    assert "refusing to unmask a sum of 2 contributions (needs between 3 and 3)" in caplog.text
    # no round applied: no model.pt (it would be the untrained start), as in a plain job
    assert not (Path(job.out) / "model.pt").exists() and summary["model"]["file"] is None


def test_distributed_mode_is_refused_below_the_secagg_threshold(tmp_path: Path) -> None:
    job = _job(tmp_path, partners=2, min_partners=2)
    _, homes = _setup(tmp_path, job, trusted=2)
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 2)
    with pytest.raises(ConfigError, match="at least 3 partners"):
        run_secagg_job(grid, _context(job))
    for home in homes:
        assert home.ledger(job.dataset_name).charges() == []


def test_distributed_mode_needs_secagg_and_a_sample_rate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sample-rate"):
        _job(tmp_path, sample_rate=0.0)
    with pytest.raises(ConfigError, match="no-dp"):
        _job(tmp_path, dp=False)
    with pytest.raises(ConfigError, match="dp-mode"):
        _job(tmp_path, dp_mode="central")
    job = _job(tmp_path)
    spec, homes = _setup(tmp_path, job, trusted=3)
    with pytest.raises(ConfigError, match="SecAgg"):
        run_job_on_grid(
            LocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3), job, spec, num_partners=3
        )


def test_the_secagg_trust_is_read_from_partner_toml_and_checked(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _, homes = _setup(tmp_path, job, trusted=1)
    assert [h.config().secagg_trust for h in homes] == [True, False, False]
    assert "[secagg]\ntrust = true" in homes[0].config_path.read_text()
    homes[1].config_path.write_text(homes[1].config_path.read_text() + '\n[secagg]\ntrust = "yes"\n')
    with pytest.raises(ConfigError, match="trust must be true or false"):
        homes[1].config()


def test_the_coordinator_asks_each_partner_for_its_accountant(tmp_path: Path) -> None:
    from fedcustomer.apps.secagg_distributed import ask_partner_accountants

    job = _job(tmp_path)
    _, homes = _setup(tmp_path, job, trusted=3)
    for i, home in enumerate(homes):
        config = home.config()
        config.accountant = "pld" if i else "rdp"
        home.write_config(config)
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3)
    answers = ask_partner_accountants(grid, timeout=None)
    assert sorted(answers.values()) == ["pld", "pld", "rdp"]
    assert dd.resolve_job_accountant("auto", list(answers.values())) == "rdp"  # one RDP partner: RDP for all

    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3, dead_after={1: 0})
    answers = ask_partner_accountants(grid, timeout=None)  # a node that never answers counts as RDP
    assert answers[1] is None and dd.resolve_job_accountant("auto", list(answers.values())) == "rdp"


@pytest.mark.parametrize(
    ("requested", "partners", "used"),
    [
        ("auto", ["pld", "pld", "pld"], "pld"),
        ("auto", ["pld", "rdp", "pld"], "rdp"),
        ("auto", ["pld", None, "pld"], "rdp"),
        ("auto", [], "rdp"),
        ("pld", ["rdp", "rdp"], "pld"),  # named by the data scientist: used as named
        ("rdp", ["pld", "pld"], "rdp"),
    ],
)
def test_auto_calibrates_with_pld_only_when_every_partner_accounts_with_pld(
    requested, partners, used
) -> None:
    assert dd.resolve_job_accountant(requested, partners) == used


def _untrusting_at_budget(homes, untrusting: int) -> None:
    """The last ``untrusting`` partners do not trust SecAgg+ and keep the job's budget of 3."""
    for home in homes[len(homes) - untrusting :]:
        config = home.config()
        config.secagg_trust = False
        home.write_config(config)


def test_a_job_too_few_partners_would_accept_stops_before_round_1_with_their_reasons(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=2)
    _, homes = _setup(tmp_path, job, trusted=3)
    _untrusting_at_budget(homes, 2)  # charged the single-update guarantee: past a budget of 3
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3)
    summary = run_secagg_job(grid, _context(job))
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 0
    assert summary["round_wall_time_s"] == []
    assert [r["node"] for r in summary["refusals"]] == [2, 3]
    for refusal in summary["refusals"]:
        assert (
            "does not trust SecAgg+" in refusal["reason"]
            and "past this partner's target 3" in refusal["reason"]
        )
    assert (
        "2 of 3 partners would refuse" in summary["stop_reason"]
        and "does not trust" in summary["stop_reason"]
    )
    assert grid.calls == {1: 2, 2: 2, 3: 2}  # the two questions; no SecAgg+ stage ever started
    assert json.loads((Path(job.out) / "summary.json").read_text())["refusals"] == summary["refusals"]
    assert not (Path(job.out) / "model.pt").exists()  # no model of a job that never trained
    assert summary["model"]["file"] is None
    for home in homes:  # asked, not charged, and no refusal recorded against a round
        ledger = home.ledger(job.dataset_name)
        assert ledger.charges() == [] and ledger.spent().epsilon == 0


def test_a_partner_that_would_refuse_is_named_and_the_others_train_without_it(tmp_path: Path) -> None:
    job = _job(tmp_path, min_partners=2)
    _, homes = _setup(tmp_path, job, trusted=3)
    _untrusting_at_budget(homes, 1)
    summary = run_secagg_job(
        SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3), _context(job)
    )
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    assert [r["node"] for r in summary["refusals"]] == [3]
    assert [len(h.ledger(job.dataset_name).charges()) for h in homes] == [1, 1, 0]


def test_the_plan_a_partner_is_asked_about_round_trips_and_counts_only_unpaid_rounds(tmp_path: Path) -> None:
    from fedcustomer.apps.secagg_distributed import plan_config, plan_from_config
    from fedcustomer.clients.node import PartnerNode

    step = dd.DistributedStep(2.5, 0.05, 1.0, 3, shares=4)
    config = plan_config("uci-credit", "run-7", step, range(3, 6))
    assert plan_from_config(config) == ("uci-credit", step, "run-7", range(3, 6))
    assert plan_from_config({k: v for k, v in config.items() if k != "plan-run-id"}) is None
    assert plan_from_config({}) is None

    job = _job(tmp_path)
    _, homes = _setup(tmp_path, job, trusted=3)
    node = PartnerNode(homes[0])
    tiny = dd.DistributedStep(0.5, 0.5, 1.0, 3)  # little noise: a few rounds pass a budget of 3
    assert node.distributed_job_refusal(job.dataset_name, tiny, "r", range(1, 1)) is None  # nothing to run
    why = node.distributed_job_refusal(job.dataset_name, tiny, "r", range(1, 11))
    assert why is not None and why.startswith(
        f"partner {node.name!r}: 10 distributed round(s) of run r would bring"
    )
    assert "trusts SecAgg+" in why


def test_a_round_never_samples_more_partners_than_its_sums_were_sized_for() -> None:
    from flwr.common import ndarrays_to_parameters

    from fedcustomer.apps.secagg_distributed import _distributed_strategy

    model = torch.nn.Linear(2, 1)
    base = {"sample_rate": 0.05, "n_min": 3, "shares": 4, "first": 0, "applied": [], "discarded": []}
    strategy = _distributed_strategy(base | {"on_round": lambda *_: None})(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        fraction_fit=1.0,
        min_fit_clients=3,
        min_available_clients=3,
        initial_parameters=ndarrays_to_parameters([]),
    )
    assert strategy.num_fit_clients(3) == (3, 3)
    assert strategy.num_fit_clients(4) == (4, 3)
    assert strategy.num_fit_clients(9) == (4, 3)  # a node that joined mid-job waits for the next job


def test_a_partner_refuses_to_unmask_a_sum_of_more_contributions_than_it_was_sized_for(caplog) -> None:
    from flwr.app import ConfigRecord, Message
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.supercore.task_identity import TaskIdentity

    from fedcustomer.apps.secagg_distributed import (
        SURVIVORS_ERROR_CODE,
        min_survivors_mod,
        remember_min_survivors,
    )

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 7  # what a SuperLink sets
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    remember_min_survivors(context, 3, 4)
    passed: list[int] = []

    def unmask(active: list[int]) -> Message:
        configs = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active})
        msg = Message(RecordDict({RECORD_KEY_CONFIGS: configs}), dst_node_id=7, message_type="train")
        msg.metadata.__dict__["_message_id"] = msg.object_id  # as if it had been sent
        return min_survivors_mod(msg, context, lambda m, c: passed.append(len(active)) or m)

    for active, ok in (([1, 2], False), ([1, 2, 3], True), ([1, 2, 3, 4], True), ([1, 2, 3, 4, 5], False)):
        reply = unmask(active)
        assert reply.has_error() != ok
        if not ok:
            assert reply.error.code == SURVIVORS_ERROR_CODE
    assert passed == [3, 4]
    assert "sized for at most 4" in caplog.text or "needs between 3 and 4" in caplog.text


def test_a_clip_range_too_small_for_the_row_count_is_refused_before_anything_is_charged(
    tmp_path: Path,
) -> None:
    # R = 16384 C = 1.6 at C = 1e-4: the gradients would fit, the coarse count (hundreds of rows) would not
    job = _job(tmp_path, max_grad_norm=1e-4)
    _, homes = _setup(tmp_path, job, trusted=3)
    grid = SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3)
    summary = run_secagg_job(grid, _context(job))
    assert summary["rounds_completed"] == 0
    for home in homes:
        assert home.ledger(job.dataset_name).charges() == []
