"""Many simulated partners on one machine: provisioning time, round time and peak memory.

    python benchmarks/bench_scale.py [--partners 1000] [--rounds 2] [--engine grid|simulation]
        [--data-dir ../shared/data] [--epsilon 3] [--no-dp] [--provision-workers N] [--json out.json]

UCI credit default (30,000 rows) split IID over ``--partners`` partners, so 1,000 partners
hold about 24 training and 6 held-out customers each. Every partner gets a real home: its
own keys (from ``os.urandom``), encrypted store (validated ingest), ledger and audit log,
provisioned through the product's own path (``prepare_partners``, in worker processes from 100
homes on; ``--provision-workers`` sets how many), timed separately from training. No home is a
copy of another. The job (DP-SGD at ``--epsilon`` per partner, the repayment MLP, one local
epoch) then runs on the in-process grid (partners one after another in this process) or
Flower's simulation engine (Ray workers, one per core). Reported: provisioning time per
partner, the load average before and after, each round's wall time and
the sum of the partners' local training in it, and the peak resident memory of the whole
process tree (this process and every descendant, e.g. Ray's workers), sampled from /proc
every 0.2 s, next to this process's own ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.sources import load_partitions
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import PROVISION_WORKERS_ENV, prepare_partners, provision_workers
from fedcustomer.server.run import run_job_on_grid

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakMemory:
    """Samples the process tree's resident memory in a background thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(os.getpid()))


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    job = JobConfig(
        data="uci-credit",
        data_dir=str(args.data_dir),
        task="repayment",
        partners=args.partners,
        rounds=args.rounds,
        local_epochs=1,
        batch_size=args.batch_size,
        dp=not args.no_dp,
        epsilon=args.epsilon,
        max_noise_multiplier=100.0,
        out=str(workdir / "run"),
        homes=str(workdir / "homes"),
        min_partners=args.partners,
        federated_eval="none",
        seed=0,
    )
    result: dict[str, Any] = {
        "partners": args.partners,
        "engine": args.engine,
        "dp": job.dp,
        "provision_workers": provision_workers(args.partners),
        "load_average_before": os.getloadavg(),
    }
    with PeakMemory() as memory:
        started = time.perf_counter()  # the split alone, as prepare_partners makes it first
        load_partitions(
            job.task, job.data, job.partners, split=job.split, seed=job.seed, data_dir=Path(job.data_dir)
        )
        result["split_s"] = time.perf_counter() - started
        started = time.perf_counter()
        spec, homes = prepare_partners(job, [])
        result["prepare_s"] = time.perf_counter() - started
        result["provision_per_home_s"] = (result["prepare_s"] - result["split_s"]) / len(homes)
        result["distinct_keyrings"] = len({(h.keys_dir / "keyring.json").read_bytes() for h in homes})
        print(
            f"# {len(homes)} partner homes ready in {result['prepare_s']:.1f}s", file=sys.stderr, flush=True
        )
        result["rss_after_provision_bytes"] = tree_rss(os.getpid())
        started = time.perf_counter()
        if args.engine == "grid":
            grid = LocalGrid(make_client_app([str(h.root) for h in homes]), len(homes))
            summary = run_job_on_grid(grid, job, spec, num_partners=len(homes))
        else:
            from fedcustomer.apps.simulation import run_simulated_job

            summary = run_simulated_job(job, prepared=(spec, homes))
        result["job_s"] = time.perf_counter() - started
        result["load_average_after"] = os.getloadavg()
    result.update(
        status=summary["status"],
        stop_reason=summary["stop_reason"],
        rounds_completed=summary["rounds_completed"],
        round_wall_s=summary["round_wall_time_s"],
        round_local_train_s=summary["round_local_train_s"],
        # partners that trained in every completed round (summary.json's per-partner count)
        trained_every_round=sum(
            p.get("rounds_trained") == summary["rounds_completed"] for p in summary.get("partners", [])
        ),
        peak_tree_rss_bytes=memory.peak,
        self_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_dir = Path(os.environ.get("FEDCUSTOMER_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=default_dir, help=f"default: {default_dir}")
    parser.add_argument("--partners", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--no-dp", action="store_true", help="plain FedAvg (no DP-SGD, no ledger)")
    parser.add_argument(
        "--provision-workers",
        type=int,
        default=None,
        help=f"processes that provision the homes (default: ${PROVISION_WORKERS_ENV}, else one per core "
        "from 100 homes on)",
    )
    parser.add_argument("--engine", choices=["grid", "simulation"], default="grid")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the partner homes here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.provision_workers is not None:
        os.environ[PROVISION_WORKERS_ENV] = str(args.provision_workers)
    import torch

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            result = run(args, Path(tmp))
    gib = 2**30
    walls, trains = result["round_wall_s"], result["round_local_train_s"]
    print(
        f"{result['partners']} partners, {result['engine']}, {'DP-SGD' if result['dp'] else 'no DP'} "
        f"({date.today()}, {platform.machine()}, {os.cpu_count()} cores)"
    )
    print(
        f"  status: {result['status']} ({result['rounds_completed']} rounds completed; "
        f"{result['trained_every_round']} partners trained in every one)"
    )
    if result["stop_reason"]:
        print(f"  stop reason: {result['stop_reason']}")
    print(
        f"  homes: {result['partners']} provisioned, each with its own keys ({result['distinct_keyrings']} distinct "
        f"keyrings), {result['provision_workers']} process(es): {result['prepare_s']:.1f} s with the split "
        f"({result['split_s']:.1f} s), {1000 * result['provision_per_home_s']:.0f} ms per home"
    )
    print(
        "  load average (1, 5, 15 min): before "
        + ", ".join(f"{v:.1f}" for v in result["load_average_before"])
        + "; after "
        + ", ".join(f"{v:.1f}" for v in result["load_average_after"])
    )
    for i, (w, t) in enumerate(zip(walls, trains), start=1):
        print(f"  round {i}: wall {w:.1f} s, sum of local training {t:.1f} s")
    print(
        f"  peak RSS, whole process tree: {result['peak_tree_rss_bytes'] / gib:.2f} GiB "
        f"(this process alone, ru_maxrss: {result['self_maxrss_bytes'] / gib:.2f} GiB; "
        f"after provisioning: {result['rss_after_provision_bytes'] / gib:.2f} GiB)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if result["rounds_completed"] < 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
