"""Run every benchmark script in this folder, one subprocess each, and print their output.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--skip NAME ...]
                                 [--data-dir DIR] [--timeout SECONDS] [--list]

Every ``benchmarks/bench_*.py`` found is run with its own defaults (the figures in
RESULTS.md), or with the short options in ``QUICK_ARGS`` under ``--quick`` (a smoke
run of a few minutes in all; a script not listed there runs with its defaults). The
scripts run one after another, never in parallel, so they do not time each other's
load. ``--data-dir`` is passed to the scripts as ``FEDCUSTOMER_DATA_DIR``; without it the
scripts look in ``../shared/data`` next to the repository. The exit status is non-zero
when any script failed or timed out; a summary table of every script's status and wall
time comes last.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Short runs for `--quick`: enough to see each script work end to end.
QUICK_ARGS: dict[str, list[str]] = {
    "bench_federated": ["--quick"],
    "bench_clv": ["--quick"],
    "bench_dpsgd": ["--rows", "6000", "--epochs", "2"],
    "bench_crypto": ["--fields", "20000", "--repeat", "1"],
    "bench_pkcs11": ["--keys", "5000", "--repeat", "1"],
    "bench_audit": ["--entries", "5000", "--processes", "2"],
    "bench_ledger": ["--processes", "2", "--charges", "50"],
    "bench_store": ["--customers", "5000", "--repeat", "1"],
    "bench_read_customers": ["--million", "100000", "--customers", "2000", "--repeat", "1"],
    "bench_psi": ["--n", "10000", "--no-baseline"],
    "bench_analytics": ["--trials", "5"],
    "bench_vertical": ["--rounds", "2"],
    "bench_identity": ["--repeat", "5"],
    "bench_console": ["--entries", "20000", "--repeat", "3"],
    "bench_scale": ["--partners", "50", "--rounds", "1"],
    "bench_privacy_audit": ["--quick", "--jobs", "demo"],
}


def discover() -> list[Path]:
    """Every benchmark script in this folder, in name order."""
    return sorted(p for p in HERE.glob("bench_*.py") if p.is_file())


def run_one(script: Path, args: list[str], env: dict[str, str], timeout: float) -> tuple[str, float]:
    """Run one script with its output streamed through; returns (status, seconds)."""
    cmd = [sys.executable, str(script), *args]
    print(f"\n===== {script.name} {' '.join(args)}".rstrip() + " =====", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f}s", time.perf_counter() - started
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return status, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke runs (QUICK_ARGS) instead of the full figures"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these scripts (e.g. federated or bench_federated)",
    )
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="do not run these scripts")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the public data sets")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds allowed per script (default 3600)"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scripts and their arguments, run nothing"
    )
    args = parser.parse_args(argv)

    def name(text: str) -> str:
        return text.removesuffix(".py") if text.startswith("bench_") else f"bench_{text.removesuffix('.py')}"

    scripts = discover()
    known = {p.stem for p in scripts}
    unknown = sorted({name(n) for n in (args.only or []) + args.skip} - known)
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}; found {', '.join(sorted(known)) or 'none'}")
    if args.only:
        wanted = {name(n) for n in args.only}
        scripts = [p for p in scripts if p.stem in wanted]
    scripts = [p for p in scripts if p.stem not in {name(n) for n in args.skip}]
    plan = [(p, QUICK_ARGS.get(p.stem, []) if args.quick else []) for p in scripts]
    if args.list:
        for p, extra in plan:
            print(f"{p.name} {' '.join(extra)}".rstrip())
        return 0

    env = dict(os.environ)
    if args.data_dir is not None:
        env["FEDCUSTOMER_DATA_DIR"] = str(args.data_dir.resolve())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    results = [(p.name, *run_one(p, extra, env, args.timeout)) for p, extra in plan]

    print("\n===== summary =====")
    width = max((len(n) for n, _, _ in results), default=10)
    for script, status, seconds in results:
        print(f"{script:<{width}}  {seconds:8.1f}s  {status}")
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
