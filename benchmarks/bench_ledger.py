"""Privacy ledger: time per charge with concurrent writers, against one writer in the same run.

Workload: ``--processes`` processes each make ``--charges`` Gaussian charges (one DP-SGD round
each) on one ledger file, as partner processes (node, analytics, vertical party) do. Baseline:
one process making all ``processes * charges`` charges alone, on a fresh file. Both runs end with
the same history length, so the ratio is what contention costs. Every charge re-composes the whole
history of the dataset before it writes, inside the write lock.

Run: ``python benchmarks/bench_ledger.py [--processes 4] [--charges 100] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger

BUDGET = DatasetBudget(1e9, 1e-5)
ROUND = GaussianSteps(noise_multiplier=1.1, sample_rate=0.01, steps=100)


def _writer(path: str, worker: int, n: int, start: mp.synchronize.Event, out: mp.Queue) -> None:
    ledger = BudgetLedger(path, "loans", BUDGET)
    accounting.epsilon([ROUND], BUDGET.delta)  # warm the per-process RDP cache, as a long-lived node's is
    start.wait()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        ledger.charge_gaussian(f"w{worker}:r{i}", ROUND, run_id=f"w{worker}", round=i)
        times.append(time.perf_counter() - t0)
    out.put(times)


def run(path: Path, processes: int, charges: int) -> tuple[float, list[float]]:
    """Wall seconds for all charges, and every charge's own latency."""
    BudgetLedger(path, "loans", BUDGET)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), w, charges, start, out)) for w in range(processes)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    start.set()
    latencies = [t for _ in procs for t in out.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer failed with exit code {p.exitcode}")
    n = len(BudgetLedger(path, "loans", BUDGET).charges())
    if n != processes * charges:
        raise SystemExit(f"lost charges: {n} recorded of {processes * charges}")
    return wall, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--charges", type=int, default=100, help="charges per process")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    total = args.processes * args.charges
    with tempfile.TemporaryDirectory() as tmp:
        base_wall, base_lat = run(Path(tmp) / "alone.db", 1, total)
        conc_wall, conc_lat = run(Path(tmp) / "shared.db", args.processes, args.charges)

    def row(name: str, wall: float, lat: list[float]) -> dict:
        q = statistics.quantiles(lat, n=100)
        return {
            "run": name,
            "charges": len(lat),
            "wall_s": wall,
            "ms_per_charge": 1000 * wall / len(lat),
            "latency_median_ms": 1000 * q[49],
            "latency_p99_ms": 1000 * q[98],
            "latency_max_ms": 1000 * max(lat),
        }

    rows = [
        row(f"1 process x {total}", base_wall, base_lat),
        row(f"{args.processes} processes x {args.charges}", conc_wall, conc_lat),
    ]
    print(f"{'run':<22} {'wall s':>8} {'ms/charge':>10} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(
            f"{r['run']:<22} {r['wall_s']:8.2f} {r['ms_per_charge']:10.2f} {r['latency_median_ms']:10.2f} "
            f"{r['latency_p99_ms']:8.2f} {r['latency_max_ms']:8.2f}"
        )
    print(f"concurrent / alone (wall): {conc_wall / base_wall:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
