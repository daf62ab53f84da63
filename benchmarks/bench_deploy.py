"""Deployment Engine vs simulation for the same job; SecAgg+ overhead; a vertical job deployed vs in process.

Horizontal (default): starts a local SuperLink (TLS + node authentication) and N SuperNodes on
127.0.0.1, runs the same DP job in plain and SecAgg+ mode, then in Flower's simulation engine,
and prints one JSON object:
  round_seconds_{deployment,secagg,simulation}, deployment_over_simulation,
  secagg_over_plain, bytes_per_round_per_node_{plain,secagg} (Flower's own traffic count).
Vertical (``--mode vertical``): a bank and a retailer node (TLS, node auth, pinned link keys) run
the two-party vertical job (PSI alignment, split learning, bank-only comparison model) once per
``--clientapp`` mode, then the same job runs on the in-process grid (``run_two_party``, same code):
  seconds per mode, deployed / in process, messages per party, sequential exchanges.
``--poll adaptive flower`` compares the SuperNode's waits, ``--serverapp warm subprocess`` the coordinator's
ServerApp executor (warm, or Flower's process per job); ``--repeat N`` interleaves the variants N times
(medians reported). Each deployed run also reports its timeline (``deploy_timeline.py``: submission,
ServerApp start, first message at a node, PSI done, party work, summary written).
Usage: python benchmarks/bench_deploy.py [--mode horizontal|vertical] [--clientapp warm subprocess]
       [--poll adaptive flower] [--serverapp warm subprocess] [--repeat 1]
       [--rounds 2] [--partners 3] [--customers 1500] [--steps-per-round 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy import node as nd
from fedcustomer.deploy import pki
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig


def _start_node(
    cdir: co.CoordinatorDir,
    port: int,
    certs: pki.Certificates,
    home: Path,
    name: str,
    clientapp: str,
    *,
    partner: str | None,
    poll: str = "adaptive",
) -> subprocess.Popen[bytes]:
    """Register ``home``'s node key with the coordinator, start its SuperNode and wait until it is connected."""
    keys = pki.make_node_keys(PartnerHome(home).keys_dir)
    co.register_node(cdir, keys.public_key, name)
    proc = nd.start_supernode(
        home,
        superlink=f"127.0.0.1:{port}",
        root_cert=certs.ca_cert,
        auth_key=keys.private_key,
        runtime_port=fl.free_port(),
        partner=partner,
        clientapp=clientapp,
        poll=poll,
    )
    log_path = PartnerHome(home).state_dir / "supernode.log"
    nd.wait_connected(proc, log_path, timeout=600)
    if clientapp == "warm":  # a node serving jobs has its executor up: the job's time starts after that
        _wait_for_line(log_path, "warm ClientApp: ready", proc)
    return proc


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    """Wait until ``needle`` appears in the log at ``path`` (the process still running)."""
    deadline = time.monotonic() + timeout
    while needle not in (path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{needle!r} did not appear in {path}")
        time.sleep(0.2)


def _topup(homes: list[Path], epsilon: float) -> None:
    for home in homes:
        ph = PartnerHome(home)
        cfg = ph.config()
        spent = BudgetLedger(ph.ledger_path, "bank", cfg.budget_for("bank")).spent().epsilon
        cfg.budget = DatasetBudget(spent + epsilon, cfg.budget_for("bank").delta)
        ph.write_config(cfg)


def _deployed(
    root: Path, rounds: int, partners: int, seed: int, clientapp: str = nd.DEFAULT_CLIENTAPP
) -> dict:
    certs = pki.make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coordinator")
    port = fl.free_port()
    procs = [co.start_superlink(cdir, port=port, certs=certs)]
    homes = []
    try:
        for i in range(partners):
            home = root / f"bank{i}"
            nd.prepare_node_home(home, f"bank{i}", index=i, partners=partners, seed=seed)
            procs.append(_start_node(cdir, port, certs, home, f"bank{i}", clientapp, partner=None))
            homes.append(home)
        result = {}
        for mode in ("plain", "secagg"):
            _topup(homes, 3.0)
            job = JobConfig(
                rounds=rounds,
                partners=partners,
                min_partners=partners,
                seed=seed,
                federated_eval="none",
                round_timeout=120,
                out=str(root / f"run-{mode}"),
            )
            co.write_app(
                cdir, co.run_config_for(job, feature_spec="synthetic:repayment", secagg=mode == "secagg")
            )
            started = time.perf_counter()
            ended = co.file_rewritten(Path(job.out) / "summary.json")
            status = co.wait_run(cdir, co.submit_run(cdir), timeout=1800, poll=0.5, finished_hint=ended)
            wall = time.perf_counter() - started
            assert status["status"] == "finished:completed", status
            traffic = status["network-traffic"]["total-bytes"]
            result[mode] = {
                "wall_seconds": wall,
                "round_seconds": wall / rounds,
                "bytes_per_round_per_node": traffic / rounds / partners,
            }
        return result
    finally:
        for proc in reversed(procs):
            fl.stop(proc)


def _simulated(root: Path, rounds: int, partners: int, seed: int) -> dict:
    from fedcustomer.apps.simulation import run_simulated_job

    job = JobConfig(
        rounds=rounds,
        partners=partners,
        min_partners=partners,
        seed=seed,
        federated_eval="none",
        out=str(root / "run-sim"),
    )
    started = time.perf_counter()
    run_simulated_job(job)
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "round_seconds": wall / rounds}


PARTIES = ("bank", "retailer")


def _vertical_homes(root: Path, customers: int) -> list[Path]:
    from fedcustomer.deploy.two_party import prepare_party_home
    from fedcustomer.vertical.parties import pin_each_other

    homes = [prepare_party_home(root / n, n, customers=customers, seed=3, epsilon=30.0) for n in PARTIES]
    pin_each_other(*homes)
    return [h.root for h in homes]


def _vertical_job(out: Path, rounds: int, steps: int):
    from fedcustomer.vertical.job import VerticalJob

    return VerticalJob(
        out=str(out), seed=0, round_timeout=900, rounds=rounds, steps_per_round=steps, batch_size=512, lr=0.3
    )


def _vertical_deployed(
    root: Path,
    clientapp: str,
    customers: int,
    rounds: int,
    steps: int,
    poll: str = "adaptive",
    serverapp: str = co.DEFAULT_SERVERAPP,
) -> dict:
    from deploy_timeline import timeline

    from fedcustomer.deploy.two_party import two_party_run_config

    certs = pki.make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coordinator")
    port = fl.free_port()
    procs = [co.start_superlink(cdir, port=port, certs=certs, serverapp=serverapp)]
    try:
        if serverapp == "warm":
            _wait_for_line(cdir.log_path, "warm ServerApp: ready", procs[0])
        for home in _vertical_homes(root, customers):
            procs.append(
                _start_node(cdir, port, certs, home, home.name, clientapp, partner=home.name, poll=poll)
            )
        raw = two_party_run_config(
            _vertical_job(root / "run", rounds, steps), mode="vertical", wait_for_partners=60
        )
        co.write_app(cdir, raw)
        co.wait_for_coordinator(cdir)  # as `coordinator run` does before it submits
        started = time.time()
        run_id = co.submit_run(cdir)
        submitted = time.time()
        # the job is timed by its summary's write; status checks stay rare (a `flwr` process each on the
        # `flwr`-CLI submission path), the same on every checkout this script runs against
        status = co.wait_run(
            cdir,
            run_id,
            timeout=7200,
            poll=5.0,
            finished_hint=co.file_rewritten(Path(raw["out"]) / "summary.json"),
        )
        summary_path = Path(raw["out"]) / "summary.json"
        wall = summary_path.stat().st_mtime - started
        summary = co.read_summary(raw)
        assert status["status"] == "finished:completed" and summary["status"] == "completed", summary
        steps_seen = timeline(
            started,
            submitted,
            cdir.log_path,
            [root / p / "state" / "supernode.log" for p in PARTIES],
            summary_path,
        )
        return {
            "seconds": wall,
            "vertical_auc": summary["comparison"]["vertical_auc"],
            "timeline": steps_seen,
        }
    finally:
        for proc in reversed(procs):
            fl.stop(proc)


class _CountingGrid(LocalGrid):
    """The in-process grid, counting its exchanges (``send_and_receive`` calls, each one waited for)."""

    exchanges = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.exchanges += 1
        return super().send_and_receive(messages, timeout=timeout)


def _vertical_in_process(root: Path, customers: int, rounds: int, steps: int) -> dict:
    from fedcustomer.deploy.two_party import two_party_run_config
    from fedcustomer.vertical.deployed import run_two_party
    from fedcustomer.vertical.parties import party_app

    homes = _vertical_homes(root, customers)
    raw = two_party_run_config(
        _vertical_job(root / "run", rounds, steps), mode="vertical", wait_for_partners=5
    )
    grid = _CountingGrid(party_app([str(h) for h in homes]), num_nodes=2)
    started = time.perf_counter()
    summary = run_two_party(grid, raw)
    wall = time.perf_counter() - started
    assert summary["status"] == "completed", summary
    return {
        "seconds": wall,
        "messages_per_party": max(grid.calls.values()),
        "sequential_exchanges": grid.exchanges,  # each one a round trip through the SuperLink when deployed
        "vertical_auc": summary["comparison"]["vertical_auc"],
    }


def vertical_main(args: argparse.Namespace, root: Path) -> dict:
    """Each variant (ClientApp mode x SuperNode poll) and the in-process job, interleaved ``--repeat`` times."""
    out: dict = {
        "customers": args.customers,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "runs": [],
    }
    variants = [(mode, poll, sa) for mode in args.clientapp for poll in args.poll for sa in args.serverapp]
    seconds: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        for mode, poll, sa in variants:
            name = f"deployed_{mode}_{poll}_serverapp_{sa}"
            res = _vertical_deployed(
                root / f"{name}-{rep}", mode, args.customers, args.rounds, args.steps_per_round, poll, sa
            )
            out["runs"].append({"run": name, "rep": rep, **res, "load_average": os.getloadavg()})
            seconds.setdefault(name, []).append(res["seconds"])
        res = _vertical_in_process(
            root / f"inprocess-{rep}", args.customers, args.rounds, args.steps_per_round
        )
        out["runs"].append({"run": "in_process", "rep": rep, **res, "load_average": os.getloadavg()})
        seconds.setdefault("in_process", []).append(res["seconds"])
        print(json.dumps(out["runs"][-1 - len(variants) :]), flush=True)
    medians = {name: statistics.median(vals) for name, vals in seconds.items()}
    out["median_seconds"] = medians
    for name in medians:
        if name != "in_process":
            out[f"{name}_over_in_process"] = medians[name] / medians["in_process"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("horizontal", "vertical"), default="horizontal")
    ap.add_argument("--clientapp", nargs="+", choices=nd.CLIENTAPP_MODES, default=[nd.DEFAULT_CLIENTAPP])
    ap.add_argument(
        "--poll", nargs="+", choices=nd.POLL_MODES, default=["adaptive"], help="vertical: SuperNode waits"
    )
    ap.add_argument(
        "--serverapp",
        nargs="+",
        choices=co.SERVERAPP_MODES,
        default=[co.DEFAULT_SERVERAPP],
        help="vertical: the coordinator's ServerApp executor",
    )
    ap.add_argument("--repeat", type=int, default=1, help="vertical: interleaved repetitions")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partners", type=int, default=3)
    ap.add_argument("--customers", type=int, default=1500, help="vertical: synthetic customers per party")
    ap.add_argument("--steps-per-round", type=int, default=1, help="vertical: passive steps per round")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.mode == "vertical":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(vertical_main(args, args.out or Path(tmp)), indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        dep = _deployed(root / "deploy", args.rounds, args.partners, args.seed, args.clientapp[0])
        sim = _simulated(root / "sim", args.rounds, args.partners, args.seed)
    out = {
        "clientapp": args.clientapp[0],
        "rounds": args.rounds,
        "partners": args.partners,
        "round_seconds_deployment": dep["plain"]["round_seconds"],
        "round_seconds_secagg": dep["secagg"]["round_seconds"],
        "round_seconds_simulation": sim["round_seconds"],
        "deployment_over_simulation": dep["plain"]["round_seconds"] / sim["round_seconds"],
        "secagg_over_plain": dep["secagg"]["round_seconds"] / dep["plain"]["round_seconds"],
        "bytes_per_round_per_node_plain": dep["plain"]["bytes_per_round_per_node"],
        "bytes_per_round_per_node_secagg": dep["secagg"]["bytes_per_round_per_node"],
        "note": "wall time includes job submission and the first app install; train only (no federated eval)",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
