"""PSI throughput: our ristretto255 DH-PSI against OpenMined's PSI, measured in the same run.

Workload: two sets of ``--n`` ids each (default 100,000; ``--large`` for 1,000,000) with half
of them shared. For each we time the whole protocol, both sides in one process (hashing to
the group, four scalar multiplications per pair of ids, matching), and report seconds and
records per second (``2 n / seconds``).

Baseline: ``openmined.psi`` (client/server with a raw doubly-encrypted setup message, the
same DH-PSI on P-256), run in its own virtual environment because it pins protobuf. The
script creates ``benchmarks/.venv-psi`` on first use (``--baseline-venv`` to use another)
and skips the baseline with a note when it cannot be installed. A raw ristretto255
scalar-multiplication rate is printed as a machine-independent reference.

Usage: ``python benchmarks/bench_psi.py [--n N | --large] [--workers W ...] [--no-baseline] [--json]``.

Scale mode (``--scale N [N ...]``, e.g. ``--scale 1000000 2000000 10000000``): the streaming PSI
(:mod:`fedcustomer.psi.stream`) from two generated CSV files of N ids each (half shared), each
size in its own process so its peak memory is its own: seconds, records/s and peak RSS (the
process tree, sampled, and the main process's high-water mark), with openmined.psi timed first
at ``--baseline-n`` (default 1,000,000) in the same run. Each result is also appended to
``--log`` as a JSON line as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_psi_scale import run_scale

from fedcustomer.psi.core import _sodium, new_secret, run_psi_local

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / ".venv-psi"

BASELINE_SCRIPT = r"""
import json, sys, time
import private_set_intersection.python as psi
n = int(sys.argv[1])
a = [f"CUST-{i:09d}" for i in range(n)]
b = [f"CUST-{i:09d}" for i in range(n // 2, n + n // 2)]
start = time.perf_counter()
client = psi.client.CreateWithNewKey(True)
server = psi.server.CreateWithNewKey(True)
setup = server.CreateSetupMessage(1e-9, len(a), b, psi.DataStructure.RAW)
response = server.ProcessRequest(client.CreateRequest(a))
shared = client.GetIntersection(setup, response)
print(json.dumps({"seconds": time.perf_counter() - start, "size": len(shared), "version": psi.__version__}))
"""


def ids(n: int) -> tuple[list[str], list[str]]:
    return [f"CUST-{i:09d}" for i in range(n)], [f"CUST-{i:09d}" for i in range(n // 2, n + n // 2)]


def raw_scalarmult_rate(count: int = 5000) -> float:
    s = _sodium()
    secret, point = new_secret(), s.crypto_core_ristretto255_random()
    start = time.perf_counter()
    for _ in range(count):
        point = s.crypto_scalarmult_ristretto255(secret, point)
    return count / (time.perf_counter() - start)


def ensure_baseline_venv(venv: Path) -> Path | None:
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print(f"creating {venv} for openmined.psi ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "openmined.psi"], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"openmined.psi could not be installed ({exc}); baseline skipped", file=sys.stderr)
        return None
    return python


def run_baseline(python: Path, n: int) -> dict | None:
    try:
        out = subprocess.run(
            [str(python), "-c", BASELINE_SCRIPT, str(n)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": ""},
        )
    except subprocess.CalledProcessError as exc:
        print(f"openmined.psi run failed: {exc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="ids per side")
    parser.add_argument("--large", action="store_true", help="1,000,000 ids per side")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="worker counts to time (default: 1 and the number of CPU cores)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip openmined.psi")
    parser.add_argument("--baseline-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--scale", type=int, nargs="+", help="streaming PSI at these sizes (ids per side)")
    parser.add_argument(
        "--baseline-n", type=int, default=1_000_000, help="openmined.psi size in --scale mode"
    )
    parser.add_argument("--log", type=Path, default=None, help="append each --scale result here (JSON lines)")
    args = parser.parse_args()
    if args.scale:
        baseline = None
        if not args.no_baseline:
            python = ensure_baseline_venv(args.baseline_venv)
            baseline = (lambda n: run_baseline(python, n)) if python else None
        run_scale(args.scale, args.workers, baseline, args.baseline_n, args.log, args.json)
        return
    n = 1_000_000 if args.large else args.n
    cores = os.cpu_count() or 1
    workers = args.workers or sorted({1, cores})

    results: dict = {
        "n_per_side": n,
        "cpu_count": cores,
        "raw_scalarmult_per_s": round(raw_scalarmult_rate()),
        "ours": [],
        "baseline": None,
    }
    a, b = ids(n)
    for w in workers:
        start = time.perf_counter()
        ra, rb = run_psi_local(a, b, workers=w)
        seconds = time.perf_counter() - start
        assert ra.size == rb.size == n // 2 and ra.digest == rb.digest
        results["ours"].append(
            {"workers": w, "seconds": round(seconds, 2), "records_per_s": round(2 * n / seconds)}
        )
        print(f"ours  workers={w:<2d} {seconds:8.2f} s  {2 * n / seconds:10.0f} records/s", file=sys.stderr)

    if not args.no_baseline:
        python = ensure_baseline_venv(args.baseline_venv)
        base = run_baseline(python, n) if python else None
        if base is not None:
            assert base["size"] == n // 2
            base["records_per_s"] = round(2 * n / base["seconds"])
            base["seconds"] = round(base["seconds"], 2)
            results["baseline"] = base
            print(
                f"openmined.psi {base['version']}  {base['seconds']:8.2f} s  {base['records_per_s']:10.0f} records/s",
                file=sys.stderr,
            )
            best = max(results["ours"], key=lambda r: r["records_per_s"])
            for r in results["ours"]:
                r["ratio_vs_baseline"] = round(r["records_per_s"] / base["records_per_s"], 2)
            results["best_ratio"] = best["ratio_vs_baseline"]
            print(f"ratio (ours best / openmined.psi): {results['best_ratio']:.2f}x", file=sys.stderr)
    print(f"raw ristretto255 scalar multiplications: {results['raw_scalarmult_per_s']}/s", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
