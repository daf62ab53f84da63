"""End to end on Flower's Deployment Engine: real SuperLink and SuperNode processes on 127.0.0.1.

One federation (TLS, node authentication, three partner homes) is shared by the tests
of this module; each test runs its own job. Every process is stopped at the end, even
when a test fails.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import torch

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy import node as nd
from fedcustomer.deploy import pki
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.job import JobConfig

pytestmark = pytest.mark.slow

PARTNERS = ("bank0", "bank1", "bank2")
# Waits here end on progress (a process exits, a run finishes), not on the clock: pytest-timeout
# is the one wall-clock limit, so a loaded machine makes the tests slower, not red.
UNBOUNDED = float("inf")


class Federation:
    """A coordinator and three partner nodes, all local processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = pki.make_dev_certificates(root / "certs")
        self.cdir = co.CoordinatorDir(root / "coordinator")
        self.port = fl.free_port()
        self.link = None
        self.nodes: dict[str, object] = {}
        self.homes = {name: root / name for name in PARTNERS}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_link(self) -> None:
        self.link = co.start_superlink(self.cdir, port=self.port, certs=self.certs, timeout=UNBOUNDED)

    def start_node(self, name: str) -> None:
        home = self.homes[name]
        log = home / "state" / "supernode.log"
        log.unlink(missing_ok=True)
        proc = nd.start_supernode(
            home,
            superlink=self.address,
            root_cert=self.certs.ca_cert,
            auth_key=pki.NodeKeys.in_dir(home / "keys").private_key,
            runtime_port=fl.free_port(),
            partner=name,
            clientapp="subprocess" if name == "bank2" else "warm",  # both ClientApp modes in one federation
        )
        self.nodes[name] = proc
        nd.wait_connected(proc, log, timeout=UNBOUNDED)

    def run_job(
        self,
        out: Path,
        *,
        rounds: int = 2,
        timeout: float = 180.0,
        secagg: bool = False,
        resume: bool = False,
        wait: bool = True,
        **kw,
    ) -> tuple[int, dict]:
        if not resume:
            job = JobConfig(
                rounds=rounds,
                partners=3,
                min_partners=2,
                out=str(out),
                seed=1,
                round_timeout=timeout,
                federated_eval="none",
                **kw,
            )
            co.write_app(
                self.cdir,
                co.run_config_for(
                    job, feature_spec="synthetic:repayment", wait_for_partners=30, secagg=secagg
                ),
            )
        run = co.submit_run(self.cdir, resume=resume)
        if not wait:
            return run, {}
        ended = co.file_rewritten(Path(str(self.config()["out"])) / "summary.json")
        return run, co.wait_run(self.cdir, run, timeout=UNBOUNDED, poll=0.5, finished_hint=ended)

    def config(self) -> dict:
        return json.loads(self.cdir.job_path.read_text())

    def stop(self) -> None:
        for proc in self.nodes.values():
            fl.stop(proc)
        if self.link is not None:
            fl.stop(self.link)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    f = Federation(tmp_path_factory.mktemp("fed"))
    try:
        f.start_link()
        for i, name in enumerate(PARTNERS):
            nd.prepare_node_home(f.homes[name], name, index=i, partners=3, seed=1, epsilon=3.0)
            keys = pki.make_node_keys(PartnerHome(f.homes[name]).keys_dir)
            co.register_node(f.cdir, keys.public_key, name)
            f.start_node(name)
        yield f
    finally:
        f.stop()


def _fresh_budget(fed: Federation, epsilon: float = 3.0) -> None:
    """Give every partner ``epsilon`` more on its dataset, so each test's job has a budget to spend."""
    for home in fed.homes.values():
        ph = PartnerHome(home)
        cfg = ph.config()
        spent = _ledger(home).spent().epsilon
        cfg.budget = DatasetBudget(spent + epsilon, cfg.budget_for("bank").delta)
        ph.write_config(cfg)


def _ledger(home: Path) -> BudgetLedger:
    ph = PartnerHome(home)
    cfg = ph.config()
    return BudgetLedger(ph.ledger_path, "bank", cfg.budget_for("bank"))


def _charges(home: Path, run_id: str) -> list:
    return [c for c in _ledger(home).charges() if c.run_id == run_id]


def _wait_for(fed: Federation, run: int, path: Path) -> None:
    """Wait on progress, not on the clock: until ``path`` appears, failing if the run ended without it."""
    while not path.exists():
        if str(co.run_status(fed.cdir, run).get("status", "")).startswith("finished") and not path.exists():
            raise AssertionError(f"run {run} finished without writing {path.name}")
        time.sleep(0.5)


def test_tls_authenticated_nodes_run_a_two_round_dp_job(fed, tmp_path):
    _, status = fed.run_job(tmp_path / "run")
    cfg = fed.config()
    summary = co.read_summary(cfg)
    assert status["status"] == "finished:completed"
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert sorted(p["name"] for p in summary["partners"]) == list(PARTNERS)
    for name in PARTNERS:
        charges = _charges(fed.homes[name], cfg["run-id"])
        assert sorted(c.round for c in charges) == [1, 2]
        assert (
            _ledger(fed.homes[name]).spent().epsilon
            <= PartnerHome(fed.homes[name]).config().budget_for("bank").epsilon + 1e-9
        )
        with AuditLog.open(PartnerHome(fed.homes[name]).audit_dir) as audit:
            rounds = [e for e in audit.query(action="fl_round") if e.details["run_id"] == cfg["run-id"]]
        assert [e.details["round"] for e in rounds] == [1, 2]
        assert all(e.details["update_bytes"] > 0 and not e.details["refused"] for e in rounds)
    # the coordinator's state holds no partner data: only its SuperLink db, log, config and the job
    assert not (Path(cfg["out"]) / "partners").exists()


def test_node_with_unregistered_key_is_rejected_and_logged(fed, tmp_path):
    rogue = tmp_path / "rogue"
    nd.prepare_node_home(rogue, "rogue", index=0, partners=3, seed=1)
    keys = pki.make_node_keys(PartnerHome(rogue).keys_dir)
    log = rogue / "state" / "supernode.log"
    proc = nd.start_supernode(
        rogue,
        superlink=fed.address,
        root_cert=fed.certs.ca_cert,
        auth_key=keys.private_key,
        runtime_port=fl.free_port(),
        max_retries=1,
    )
    try:
        with pytest.raises(Exception, match="exited"):
            nd.wait_connected(proc, log, timeout=UNBOUNDED)
    finally:
        fl.stop(proc)
    assert "Failed to activate SuperNode" in log.read_text()
    assert "No SuperNode found with the given public key" in fed.cdir.log_path.read_text()
    assert len(co.list_nodes(fed.cdir)) == 3  # the rogue key was never added


def test_node_without_the_ca_cannot_connect(fed, tmp_path):
    other = pki.make_dev_certificates(tmp_path / "other-ca")
    home = fed.homes["bank0"]
    log = tmp_path / "wrong-ca.log"
    proc = fl.start(
        nd.supernode_command(
            home,
            superlink=fed.address,
            root_cert=other.ca_cert,
            auth_key=pki.NodeKeys.in_dir(home / "keys").private_key,
            runtime_port=fl.free_port(),
            max_retries=1,
        ),
        log,
        fl.flower_env(tmp_path / "fh"),
    )
    try:
        with pytest.raises(Exception, match="exited"):
            nd.wait_connected(proc, log, timeout=UNBOUNDED)
    finally:
        fl.stop(proc)


def test_coordinator_restart_resumes_from_checkpoint_without_double_charging(fed, tmp_path):
    _fresh_budget(fed)
    out = tmp_path / "run"
    run, _ = fed.run_job(out, rounds=3, wait=False)
    _wait_for(fed, run, out / "checkpoints" / "round-0001.pt")
    fl.kill(fed.link)  # the coordinator crashes mid-job
    fed.start_link()  # same database: registered keys survive; nodes reconnect by themselves
    _, status = fed.run_job(out, resume=True)
    cfg = fed.config()
    summary = co.read_summary(cfg)
    assert status["status"] == "finished:completed"
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    for name in PARTNERS:
        rounds = sorted(c.round for c in _charges(fed.homes[name], cfg["run-id"]))
        assert rounds == [1, 2, 3], f"{name} was charged {rounds}"


def test_secagg_result_is_the_mean_of_the_partners_released_updates(fed, tmp_path):
    _fresh_budget(fed)
    out = tmp_path / "run"
    # every partner must be in this round's sum: a round timeout no busy machine reaches, so a slow
    # partner is waited for instead of dropped (dropping is what the killed-node tests check)
    _, status = fed.run_job(out, rounds=1, secagg=True, timeout=3600.0)
    cfg = fed.config()
    assert status["status"] == "finished:completed", status
    aggregated = torch.load(out / "model.pt")
    released = []
    for name in PARTNERS:
        home = PartnerHome(fed.homes[name])
        update = BudgetLedger(home.ledger_path, "any", DatasetBudget(1.0, 1e-5)).kept(
            f"run:{cfg['run-id']}:round:1"
        )  # kept in its charge's ledger row
        assert update is not None, f"{name} released no update in round 1"
        blob = torch.load(io.BytesIO(update), weights_only=True)
        released.append(blob["state"])
        with AuditLog.open(PartnerHome(fed.homes[name]).audit_dir) as audit:
            entry = [e for e in audit.query(action="fl_round") if e.details["run_id"] == cfg["run-id"]]
        assert entry[0].details["transport"] == "secagg+"
    for k, v in aggregated.items():
        mean = torch.stack([r[k].float() for r in released]).mean(0)
        # only quantisation error remains (clip range 8, 2^22 levels): far below the DP noise
        assert torch.allclose(v.float(), mean, atol=1e-4), k


def test_killed_node_round_completes_with_the_rest_and_no_overspend(fed, tmp_path):
    _fresh_budget(fed)
    out = tmp_path / "run"
    # round timeout: how long the live partners may take to train a round on a busy machine
    run, _ = fed.run_job(out, rounds=2, timeout=90.0, wait=False)
    _wait_for(fed, run, out / "checkpoints" / "round-0001.pt")
    fl.kill(fed.nodes["bank2"])  # a partner's machine dies mid-job
    cfg = fed.config()
    _wait_for(fed, run, out / "summary.json")
    summary = co.read_summary(cfg)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    by_name = {p["name"]: p for p in summary["partners"]}
    assert by_name["bank0"]["rounds_trained"] == 2 and by_name["bank1"]["rounds_trained"] == 2
    for name in PARTNERS:
        assert (
            _ledger(fed.homes[name]).spent().epsilon
            <= PartnerHome(fed.homes[name]).config().budget_for("bank").epsilon + 1e-9
        )
        assert len(_charges(fed.homes[name], cfg["run-id"])) <= 2
