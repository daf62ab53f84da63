"""A vertical (bank + retailer) job at scale: time and peak memory of the whole job.

    python benchmarks/bench_vertical_scale.py [--customers 1000000] [--rounds 8] [--json out.json]

Runs ``fedcustomer run-vertical`` on synthetic data with ``--customers`` per party (70% of
them shared, so 1,000,000 per party align 700,000 customers) in a child process, exactly
as a user would, and samples the RSS of its whole process tree (the job and the PSI's
worker processes) every second. Reported: wall and CPU seconds, the time before the first
round (data generation, validated encrypted ingest at both parties, PSI, the governed
reads of the aligned rows), each round's wall time, the PSI size, the aligned training
and test customers, the joint model's and the label-owner-only model's AUC, each
party's epsilon spent, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_psi_scale import tree_rss_kib

ROOT = Path(__file__).resolve().parents[1]


def run(customers: int, rounds: int, workdir: Path) -> dict:
    out = workdir / "run"
    command = [sys.executable, "-m", "fedcustomer", "run-vertical"]
    command += ["--customers", str(customers), "--rounds", str(rounds), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = workdir / "progress.log"
    started = time.perf_counter()
    first_round: float | None = None
    peak_kib, cpu = 0, {}
    with open(log, "w") as progress:
        child = subprocess.Popen(command, cwd=workdir, env=env, stdout=progress, stderr=subprocess.STDOUT)
        while child.poll() is None:
            peak_kib = max(peak_kib, tree_rss_kib(child.pid, cpu))
            if first_round is None and "vertical round 1/" in log.read_text(errors="replace"):
                first_round = time.perf_counter() - started
            time.sleep(1.0)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"the job failed (exit {child.returncode}); see {log}")
    summary = json.loads((out / "summary.json").read_text())
    rounds_s = [float(s) for s in summary.get("round_wall_time_s", [])]
    return {
        "customers_per_party": customers,
        "psi_size": summary["psi_size"],
        "aligned_train": summary["aligned_train"],
        "aligned_test": summary["aligned_test"],
        "rounds": summary["rounds_completed"],
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(cpu.values()), 1),
        # data generation, ingest at both parties, PSI, governed reads: up to the start of round 1
        "setup_s": None if first_round is None or not rounds_s else round(first_round - rounds_s[0], 1),
        "round_wall_s": [round(s, 1) for s in rounds_s],
        "auc_joint": summary["metrics"].get("auc"),
        "auc_label_owner_only": (summary.get("baseline") or {}).get("metrics", {}).get("auc"),
        "epsilon_spent": {p["name"]: p.get("epsilon_spent") for p in summary["partners"]},
        "peak_rss_mib": round(peak_kib / 1024),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers per party")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vertical-scale-") as tmp:
        result = run(args.customers, args.rounds, Path(tmp))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
