"""Round 1's one-time steps of a federated DP job, per partner, CPU and wall, in a fresh process.

A job's first round pays for what later rounds reuse: each partner's governed read of its
training rows (decrypted, audited) and the matrix encoded from it, its new privacy ledger,
and the noise calibration. This times those steps as a node runs them, on fresh copies of
the same ten provisioned homes ``bench_federated.py --overhead-only --partners 10`` uses
(UCI credit, IID, epsilon 3, the ``fed-dp@10`` recipe), torch and Opacus imported first as
in a node:

    python benchmarks/bench_round_one.py --data-dir DATA [--homes DIR] [--partners 10] [--json]
    python benchmarks/bench_round_one.py --data-dir DATA --overlap 4   # reads one after another or overlapped

``--homes`` keeps the provisioned homes in DIR for the next process (provisioning takes tens
of seconds and is not what is measured); every measured read runs on a fresh copy.

``--overlap N`` asks whether round 1's reads would gain from running side by side: the ten
reads (each with its encoding) one after another, in two threads, and in two forked
processes (the matrices sent back to this one), the three ways in turn N times; wall time
and CPU (this process and its finished children) of each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import opacus  # noqa: F401  (imported first, as in a node: its import is not round 1's)
import torch  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.clients.node import released_sample_rate
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.sources import load_partitions
from fedcustomer.partner.datasets import dataset_name
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.release import calibrate_noise

SOURCE, TASK, DELTA, EPSILON = "uci-credit", "repayment", 1e-5, 3.0
BATCH, EPOCHS, ROUNDS, SIGMA_MAX = 128, 3, 10, 100.0  # fed-dp@10 of bench_federated.py
T = TypeVar("T")


def provision(homes: Path, partners: int, data_dir: Path | None) -> Any:
    """The benchmark's partner homes (made once, kept in ``homes``), and the feature spec."""
    spec, datasets = load_partitions(TASK, SOURCE, partners, split="iid", seed=0, data_dir=data_dir)
    for ds in datasets:
        if not (homes / ds.name / "partner.toml").exists():
            provision_partner(
                homes / ds.name,
                ds.name,
                source=SOURCE,
                task=TASK,
                spec=spec,
                train=ds.train,
                test=ds.test,
                budget=DatasetBudget(EPSILON, DELTA),
            )
    return spec


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """``fn(*args, **kwargs)``, its CPU seconds and its wall seconds."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0, time.perf_counter() - w0


def run(homes: Path, spec: Any, partners: int, work: Path) -> dict[str, Any]:
    """Each partner's read + encoding, new ledger and calibration, as round 1 of a job runs them."""
    dataset = dataset_name(SOURCE, TASK)
    steps: dict[str, list[tuple[float, float]]] = {"read": [], "encode": [], "ledger": [], "calibrate": []}
    for name in sorted(p.name for p in homes.iterdir() if (p / "partner.toml").exists())[:partners]:
        home = PartnerHome(shutil.copytree(homes / name, work / name))
        access = PartnerDataAccess(home, name)
        (frame, _), cpu, wall = timed(access.training_read, dataset, spec, "train", run_id="bench")
        steps["read"].append((cpu, wall))
        (X, _y), cpu, wall = timed(spec.transform, frame)
        steps["encode"].append((cpu, wall))
        ledger, cpu, wall = timed(home.ledger, dataset, DatasetBudget(EPSILON, DELTA))
        steps["ledger"].append((cpu, wall))
        q = released_sample_rate(min(BATCH, len(X)), len(X))
        round_steps = int(1 / q) * EPOCHS
        pin = home.state_dir / "noise-bench.json"
        _, cpu, wall = timed(calibrate_noise, ledger, q, round_steps, ROUNDS, sigma_max=SIGMA_MAX, pin=pin)
        steps["calibrate"].append((cpu, wall))
    return {
        step: {
            "cpu_s": sum(c for c, _ in values),
            "wall_s": sum(w for _, w in values),
            "cpu_ms_per_partner": [round(1000 * c, 1) for c, _ in values],
        }
        for step, values in steps.items()
    }


WAYS = ("one after another", "two threads", "two forked processes")


def _read_and_encode(job: tuple[str, str, Any]) -> tuple[Any, Any]:
    """One partner's governed training read and its encoding, as a node's round 1 makes them."""
    home, name, spec = job
    access = PartnerDataAccess(PartnerHome(Path(home)), name)
    frame, _ = access.training_read(dataset_name(SOURCE, TASK), spec, "train", run_id="bench")
    return spec.transform(frame)


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def overlap(homes: Path, spec: Any, partners: int, work: Path, repeats: int) -> list[dict[str, Any]]:
    """The reads of round 1 run each way in turn (one after another, two threads, two forked
    processes), each on fresh copies of the homes; wall and CPU per way and repeat."""
    names = sorted(p.name for p in homes.iterdir() if (p / "partner.toml").exists())[:partners]
    fork = multiprocessing.get_context("fork")  # the workers inherit the imports, as a forked executor's do
    rows = []
    for repeat in range(repeats):
        for way in WAYS:
            root = work / f"{repeat}-{WAYS.index(way)}"
            jobs = [(str(shutil.copytree(homes / n, root / n)), n, spec) for n in names]
            cpu0, wall0 = _cpu_with_children(), time.perf_counter()
            if way == WAYS[0]:
                done = [_read_and_encode(job) for job in jobs]
            elif way == WAYS[1]:
                with ThreadPoolExecutor(2) as threads:
                    done = list(threads.map(_read_and_encode, jobs))
            else:
                with fork.Pool(2) as pool:
                    done = pool.map(_read_and_encode, jobs, chunksize=1)
            wall, cpu = time.perf_counter() - wall0, _cpu_with_children() - cpu0
            if len(done) != len(jobs) or any(len(X) == 0 for X, _ in done):
                raise RuntimeError(f"{way}: a read returned no rows")
            rows.append(
                {"repeat": repeat + 1, "way": way, "wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0]}
            )
            shutil.rmtree(root)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding uci_credit_default/")
    parser.add_argument("--homes", type=Path, default=None, help="keep the provisioned homes here")
    parser.add_argument("--partners", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--overlap", type=int, default=0, metavar="N", help="time the reads each way in turn, N times"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-round-one-") as tmp:
        homes = args.homes or Path(tmp) / "homes"
        spec = provision(homes, args.partners, args.data_dir)
        work = Path(tmp) / "work"
        work.mkdir()
        if args.overlap:
            print_overlap(overlap(homes, spec, args.partners, work, args.overlap), args)
            return
        results = run(homes, spec, args.partners, work)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"| step ({args.partners} partners) | CPU (s) | wall (s) |\n|---|---|---|")
    for step, r in results.items():
        print(f"| {step} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} |")


def print_overlap(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The ``--overlap`` rows as JSON or as a table."""
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"| repeat | {args.partners} reads + encoding | wall (s) | CPU (s) | load |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['repeat']} | {r['way']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
