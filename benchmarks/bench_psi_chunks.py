"""Two-party PSI over the partners' message handlers, in chunks against one chunk: time and peak RSS.

Two partner homes with pinned link keys answer the real ``query.psi_*`` handlers on the in-process
grid (sessions on disk, every chunk signed and checked); both partners and the relay share one
process, so its peak RSS covers all three. Each configuration runs in a fresh process (peak RSS is
a high-water mark). Workload: ``--n`` ids per side, half shared, one worker process per side.

Usage: ``python benchmarks/bench_psi_chunks.py [--n 200000] [--chunks 50000 200000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(n: int, chunk: int, reveal: str) -> dict:
    from bench_psi_modes import federation

    from fedcustomer.psi.relay import run_psi_on_grid

    with tempfile.TemporaryDirectory() as tmp:
        grid = federation(Path(tmp), n)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        view = run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", name_a="bank", name_b="shop",
                               session_id="bench", reveal=reveal, chunk_size=chunk)  # fmt: skip
        seconds = time.perf_counter() - start
    assert view.intersection_size == n // 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n_per_side": n,
        "chunk_size": chunk,
        "reveal": reveal,
        "chunks_per_side": view.chunks_a,
        "seconds": round(seconds, 2),
        "records_per_s": round(2 * n / seconds),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_psi_mib": round(base / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="ids per side")
    parser.add_argument("--chunks", type=int, nargs="+", default=[50_000, 200_000], help="chunk sizes")
    parser.add_argument("--reveal", default="ids", choices=["ids", "count"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.n, args.chunks[0], args.reveal)))
        return
    results = []
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--child", "--n", str(args.n), "--chunks", str(chunk),
               "--reveal", args.reveal]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(row)
        print(
            f"chunk {chunk:>9,}: {row['chunks_per_side']} chunks/side, {row['seconds']:8.2f} s, "
            f"{row['records_per_s']:>7,} records/s, peak RSS {row['peak_rss_mib']} MiB "
            f"({row['rss_before_psi_mib']} MiB before the PSI)",
            file=sys.stderr,
        )
    results_doc = {"load_average": os.getloadavg(), "runs": results}
    if args.json:
        print(json.dumps(results_doc, indent=2))


if __name__ == "__main__":
    main()
