"""A distributed DP job under SecAgg+ whose coordinator is killed mid-round, then resumed: each round charged once.

The first coordinator runs in its own process and is killed (SIGKILL, no clean-up) in round 2's unmask
stage, after every partner was charged for round 2 and before the sum was applied. The restarted
coordinator resumes from round 1's checkpoint and runs round 2 again with the same round number: the
partners re-send the update they were paid for. The partners account with PLD, as does the job.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dp_accounting import dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from flwr.app import Context, RecordDict

from fedcustomer.apps.secagg import make_secagg_client_app, run_secagg_job
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import SecAggLocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import prepare_partners
from tests.apps.test_secagg_distributed import _job as distributed_job
from tests.apps.test_secagg_distributed import kept_update

# The first coordinator: the same in-process grid, killed when round ``KILL_IN_ROUND`` reaches its unmask stage.
COORDINATOR = """
import json, os, signal, sys
from flwr.app import Context, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from fedcustomer.apps.secagg import make_secagg_client_app, run_secagg_job
from fedcustomer.server.inprocess import SecAggLocalGrid

run_config, homes, kill_in_round = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])


class KilledGrid(SecAggLocalGrid):
    unmasks = 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS) if messages else None
        if configs is not None and configs.get(Key.STAGE) == Stage.UNMASK:
            KilledGrid.unmasks += 1
            if KilledGrid.unmasks == kill_in_round:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().send_and_receive(messages, timeout=timeout)


grid = KilledGrid(make_secagg_client_app(homes), len(homes))
run_secagg_job(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
"""


def _library_pld(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps
        )
    )
    return float(acc.get_epsilon(delta))


def _kill_in_round_2(job: JobConfig, homes, mode: str) -> tuple[dict, list[str], dict]:
    """Run the job's first coordinator until it is killed in round 2's unmask stage; check what is left.

    Only round 1's checkpoint is there, and every partner was charged for round 2 (the update it was
    paid for is kept). Returns the run config, the homes' roots and those kept round-2 updates.
    """
    run_config = {k: v for k, v in job.to_dict().items() if v is not None} | {"wait-for-partners": 0.0}
    roots = [str(h.root) for h in homes]
    first = subprocess.run(
        [sys.executable, "-c", COORDINATOR, json.dumps(run_config), json.dumps(roots), "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert first.returncode == -9, first.stderr[-3000:]
    checkpoints = sorted(p.name for p in (Path(job.out) / "checkpoints").iterdir())
    assert checkpoints == [f"{mode}-{job.run_id}-round-0001.pt"]
    kept = {}
    for home in homes:
        assert [c.round for c in home.ledger(job.dataset_name).charges()] == [1, 2]
        kept[home.root] = kept_update(home, job.run_id, 2)
    return run_config, roots, kept


def test_a_killed_coordinator_resumes_and_every_partner_is_charged_once_per_round(tmp_path: Path) -> None:
    job = distributed_job(tmp_path, rounds=3)  # the accountant is "auto": every partner says PLD
    spec, homes = prepare_partners(job)
    for i, home in enumerate(homes):
        config = home.config()
        config.accountant, config.secagg_trust = "pld", i < 2
        if not config.secagg_trust:  # a budget that affords the weaker guarantee's charge
            config.budget = DatasetBudget(50.0, job.delta)
        home.write_config(config)
    run_config, roots, kept = _kill_in_round_2(job, homes, "distributed")  # round 2 was never applied

    grid = SecAggLocalGrid(make_secagg_client_app(roots), 3)
    context = Context(
        run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=run_config | {"resume": True}
    )
    summary = run_secagg_job(grid, context)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    # the accountant and plan questions (round 2, paid before the kill, is not counted against a budget
    # again: nobody refuses), then rounds 2 and 3 only: SecAgg+'s four stages each
    assert grid.calls == {1: 10, 2: 10, 3: 10}
    assert summary["refusals"] == []
    _assert_model_took_the_three_steps_with_momentum(job, spec, homes)
    report = summary["distributed_dp"]
    sigma = report["noise_multiplier"]
    assert report["accountant"] == "pld" and summary["accountant_choice"]["partners"] == ["pld"] * 3
    # the library's figure at the job's delta less the clip events' reserve (three rounds, three partners)
    reserve = report["quantisation"]["clip_event_delta_reserved"]
    assert 0 < reserve < 1e-12
    assert report["epsilon_coordinator"] == pytest.approx(
        _library_pld(sigma, 0.05, 3, job.delta - reserve), rel=1e-8
    )
    assert report["epsilon_coordinator"] > _library_pld(sigma, 0.05, 3, job.delta)
    assert report["epsilon_coordinator"] <= 3.0
    assert report["by_accountant"]["rdp"]["epsilon_coordinator"] > 3.0  # PLD's sigma, judged by RDP
    for i, home in enumerate(homes):
        charges = home.ledger(job.dataset_name).charges()
        assert [c.round for c in charges] == [1, 2, 3]  # once per completed round, however often restarted
        assert len({c.charge_key for c in charges}) == 3
        # round 2 was re-sent as paid for, never drawn again
        assert kept_update(home, job.run_id, 2) == kept[home.root]
        charged = sigma if i < 2 else sigma / 3**0.5
        assert all(c.accountant == "pld" and c.noise_multiplier == pytest.approx(charged) for c in charges)
        # a trusting partner's ledger holds the three rounds' clip events inside its delta, as the report does
        held = reserve if i < 2 else 0.0
        assert charges[-1].epsilon_total == pytest.approx(
            _library_pld(charged, 0.05, 3, job.delta - held), rel=1e-8
        )
        assert charges[-1].details["epsilon_total_coordinator"] == pytest.approx(
            report["epsilon_coordinator"]
        )
        assert charges[-1].details["epsilon_total_single_update"] == pytest.approx(
            report["epsilon_single_update"]
        )


def _assert_model_took_the_three_steps_with_momentum(job: JobConfig, spec, homes) -> None:
    """model.pt is the initial model after the three rounds' secure sums, momentum carried across the restart."""
    import torch

    from fedcustomer.models.registry import build_model
    from fedcustomer.privacy.dp import distributed as dd

    model = build_model(job.task, job.arch, spec.input_dim, seed=job.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=0.9)
    for r in (1, 2, 3):
        sums, rows = None, 0.0
        for home in homes:
            blob = torch.load(io.BytesIO(kept_update(home, job.run_id, r)), weights_only=True)
            released = list(blob["state"].values())
            sums = released if sums is None else [a + b for a, b in zip(sums, released)]
            rows += blob["metrics"]["num-examples"]
        dd.apply_step(model, optimizer, sums, dd.expected_batch(job.sample_rate, rows))
    final = torch.load(Path(job.out) / "model.pt", weights_only=True)
    for name, p in model.named_parameters():
        assert torch.allclose(final[name], p.detach(), atol=1e-4), name


def test_a_killed_local_noise_coordinator_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """Local-noise SecAgg+ (each partner noises its own update): the same kill and resume, FedAvg's model."""
    import torch

    job = distributed_job(tmp_path, rounds=3, dp_mode="local")
    _, homes = prepare_partners(job)
    run_config, roots, kept = _kill_in_round_2(job, homes, "secagg")  # round 2 was never aggregated

    grid = SecAggLocalGrid(make_secagg_client_app(roots), 3)
    context = Context(
        run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=run_config | {"resume": True}
    )
    summary = run_secagg_job(grid, context)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert summary["rounds_discarded"] == []
    assert grid.calls == {1: 8, 2: 8, 3: 8}  # rounds 2 and 3 only: SecAgg+'s four stages each
    assert len(summary["round_wall_time_s"]) == 2  # the rounds this process ran
    assert (Path(job.out) / "checkpoints" / f"secagg-{job.run_id}-round-0003.pt").is_file()
    updates = []
    for home in homes:
        charges = home.ledger(job.dataset_name).charges()
        assert [c.round for c in charges] == [1, 2, 3] and len({c.charge_key for c in charges}) == 3
        assert kept_update(home, job.run_id, 2) == kept[home.root]
        blob = torch.load(io.BytesIO(kept_update(home, job.run_id, 3)), weights_only=True)
        updates.append(blob["state"])
    final = torch.load(Path(job.out) / "model.pt", weights_only=True)
    for name, value in final.items():  # unit-weight mean of round 3's updates, up to SecAgg+'s quantisation
        mean = sum(u[name] for u in updates) / len(updates)
        assert torch.allclose(value, mean.to(value.dtype), atol=1e-4), name


def test_a_resume_refuses_another_runs_checkpoint(tmp_path: Path) -> None:
    import torch

    from fedcustomer.errors import ConfigError, IntegrityError
    from fedcustomer.server import secagg_checkpoint as dcp

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    progress = dcp.SecAggProgress("run-a", 4, 1.5, dict(model.state_dict()), opt.state_dict(), [1, 2, 4], [3])
    path = dcp.save(tmp_path, progress)
    back = dcp.latest(tmp_path, "run-a")
    assert back is not None and (back.round, back.applied, back.discarded) == (4, [1, 2, 4], [3])
    assert dcp.latest(tmp_path, "run-b") is None  # another run's files never mix in
    path.rename(path.with_name("distributed-run-b-round-0004.pt"))
    with pytest.raises(ConfigError, match="belongs to run 'run-a'"):
        dcp.latest(tmp_path, "run-b")
    path.with_name("distributed-run-b-round-0004.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IntegrityError):
        dcp.latest(tmp_path, "run-b")
    with pytest.raises(ConfigError, match="does not fit"):
        dcp.restore(back, torch.nn.Linear(3, 1), opt)


def test_an_unknown_distributed_accountant_is_refused() -> None:
    from fedcustomer.errors import ConfigError

    with pytest.raises(ConfigError, match="--distributed-accountant must be one of rdp, pld or auto"):
        JobConfig(dp_mode="distributed", sample_rate=0.1, distributed_accountant="moments")
    assert JobConfig().distributed_accountant == "auto"  # RDP unless every partner accounts with PLD
