"""Deployment Engine vs simulation for the same job; SecAgg+ overhead.

Starts a local SuperLink (TLS + node authentication) and N SuperNodes on 127.0.0.1,
runs the same DP job in plain and SecAgg+ mode, then in Flower's simulation engine,
and prints one JSON object:
  round_seconds_{deployment,secagg,simulation}, deployment_over_simulation,
  secagg_over_plain, bytes_per_round_per_node_{plain,secagg} (Flower's own traffic count).
Usage: python benchmarks/bench_deploy.py [--rounds 2] [--partners 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy import node as nd
from fedcustomer.deploy import pki
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.job import JobConfig


def _topup(homes: list[Path], epsilon: float) -> None:
    for home in homes:
        ph = PartnerHome(home)
        cfg = ph.config()
        spent = BudgetLedger(ph.ledger_path, "bank", cfg.budget_for("bank")).spent().epsilon
        cfg.budget = DatasetBudget(spent + epsilon, cfg.budget_for("bank").delta)
        ph.write_config(cfg)


def _deployed(root: Path, rounds: int, partners: int, seed: int) -> dict:
    certs = pki.make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coordinator")
    port = fl.free_port()
    procs = [co.start_superlink(cdir, port=port, certs=certs)]
    homes = []
    try:
        for i in range(partners):
            home = root / f"bank{i}"
            nd.prepare_node_home(home, f"bank{i}", index=i, partners=partners, seed=seed)
            keys = pki.make_node_keys(PartnerHome(home).keys_dir)
            co.register_node(cdir, keys.public_key, f"bank{i}")
            procs.append(
                nd.start_supernode(
                    home,
                    superlink=f"127.0.0.1:{port}",
                    root_cert=certs.ca_cert,
                    auth_key=keys.private_key,
                    runtime_port=fl.free_port(),
                )
            )
            nd.wait_connected(procs[-1], home / "state" / "supernode.log")
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
            status = co.wait_run(cdir, co.submit_run(cdir), timeout=1800, poll=0.5)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partners", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        dep = _deployed(root / "deploy", args.rounds, args.partners, args.seed)
        sim = _simulated(root / "sim", args.rounds, args.partners, args.seed)
    out = {
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
