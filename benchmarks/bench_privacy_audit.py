"""Empirical privacy audit of three DP jobs: what the audit finds, and what it costs.

Jobs (each run once with ``fedcustomer run``, then audited with ``audit privacy``):

  demo repayment   the demo's repayment job: synthetic bank federation, 3 partners,
                   5 rounds, epsilon 3 (delta 1e-5), the default recipe
  uci fed-dp       the UCI benchmark recipe of bench_federated.py (``fed-dp``): UCI credit
                   default, 3 partners IID, 10 rounds x 3 local epochs, batch 512, lr 1.0,
                   clip 0.5, epsilon 3
  vertical         the vertical demo job: ``fedcustomer run --mode vertical --task repayment
                   --data synthetic`` defaults (bank + retailer, 20,000 customers each, 70%
                   shared, 8 rounds, epsilon 3 per party of which 1 for the labels and 1 for
                   the bank-only comparison model)

Reported per job: the claimed epsilon (this job's DP-SGD, largest over partners), the
one-run canary lower bounds of gradient and record canaries (white-box from released
updates, black-box from the released model; 95%), membership inference (loss threshold and offline LiRA: AUC, TPR at 1% FPR)
on the released DP model beside a non-private replay of the same recipe, and the audit's
time over the job's (rounds' wall time in summary.json; and the whole command's). For the
vertical job: each party's DP-SGD (gradient and record canaries) at its own claim, the
bank's label release (canary labels guessed from the returned gradients) at its claim,
and membership inference on the bank's joint model.

    python benchmarks/bench_privacy_audit.py [--data-dir ../shared/data] [--quick]
        [--canaries 1000] [--shadows 4] [--jobs demo uci vertical] [--json out.json]

The UCI file is UCI ML Repository dataset 350; pass --data-dir or set FEDCUSTOMER_DATA_DIR
to the folder holding uci_credit_default/. A missing file skips that job with a notice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcustomer.privacy_audit.run_audit import audit_run

JOBS: dict[str, list[str]] = {
    "demo": ["--task", "repayment", "--data", "synthetic", "--partners", "3", "--rounds", "5", "--epsilon", "3"],
    "uci": [
        "--task", "repayment", "--data", "uci-credit", "--partners", "3", "--split", "iid", "--rounds", "10",
        "--local-epochs", "3", "--batch-size", "512", "--lr", "1.0", "--max-grad-norm", "0.5", "--epsilon", "3",
    ],
    "vertical": [
        "--mode", "vertical", "--task", "repayment", "--data", "synthetic", "--rounds", "8", "--epsilon", "3",
    ],
}  # fmt: skip
QUICK_ROUNDS = {"demo": "2", "uci": "2", "vertical": "2"}


def _job(name: str, out: Path, quick: bool) -> float:
    args = list(JOBS[name])
    if quick:
        args[args.index("--rounds") + 1] = QUICK_ROUNDS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedcustomer", "run", *args, "--seed", "0", "--out", str(out), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} job failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def _timings(report: dict[str, Any], job_wall: float, audit_wall: float) -> dict[str, Any]:
    """Whether anything was flagged, and the audit's time beside the job's rounds and whole command."""
    return {
        "flagged": report["flagged"],
        "audit_s": round(audit_wall, 1),
        "job_rounds_s": report["job_seconds"],
        "job_command_s": round(job_wall, 1),
        "audit_over_job_rounds": round(audit_wall / report["job_seconds"], 2),
        "audit_over_job_command": round(audit_wall / job_wall, 2),
    }


def _vertical_row(report: dict[str, Any], job_wall: float, audit_wall: float) -> dict[str, Any]:
    row: dict[str, Any] = {"job": "vertical"}
    for m in report["mechanisms"]:
        wb = m["white_box"]
        row[m["mechanism"]] = (
            f"claim {m['claimed_epsilon']:.2f}: white-box {wb['epsilon_lower_bound']:.2f} "
            f"({wb['correct']}/{wb['guesses']}), black-box {m['black_box']['epsilon_lower_bound']:.2f}"
        )
    row.update(_timings(report, job_wall, audit_wall))
    for target, short in (("joint_model", "dp"), ("nonprivate_replay", "nonpriv")):
        for attack, a in (("loss_threshold", "loss"), ("lira_offline", "lira")):
            r = report["membership_inference"][target][attack]
            row[f"{short}_{a}_auc"] = round(r["auc"], 3)
            row[f"{short}_{a}_tpr1"] = round(r["tpr_at_1pct_fpr"], 4)
            row[f"{short}_{a}_tpr01"] = round(r["tpr_at_0.1pct_fpr"], 4)
        row[f"{short}_members"] = report["membership_inference"][target]["members"]
    return row


def _row(name: str, report: dict[str, Any], job_wall: float, audit_wall: float) -> dict[str, Any]:
    if report["run_kind"] == "vertical":
        return _vertical_row(report, job_wall, audit_wall)
    mechs = {m["mechanism"].split(": ")[1].split(" ")[0]: m for m in report["mechanisms"]}
    row: dict[str, Any] = {
        "job": name,
        "claimed_epsilon": round(mechs["gradient"]["claimed_epsilon"], 3),
        "canaries": mechs["gradient"]["canaries"],
    }
    for kind, m in mechs.items():
        row[f"{kind}_lb_white_box"] = round(m["white_box"]["epsilon_lower_bound"], 3)
        row[f"{kind}_white_box_correct"] = f"{m['white_box']['correct']}/{m['white_box']['guesses']}"
        row[f"{kind}_lb_black_box"] = round(m["black_box"]["epsilon_lower_bound"], 3)
    row.update(_timings(report, job_wall, audit_wall))
    for target, short in (("released_model", "dp"), ("nonprivate_replay", "nonpriv")):
        for attack, a in (("loss_threshold", "loss"), ("lira_offline", "lira")):
            r = report["membership_inference"][target][attack]
            row[f"{short}_{a}_auc"] = round(r["auc"], 3)
            row[f"{short}_{a}_tpr1"] = round(r["tpr_at_1pct_fpr"], 4)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 300 canaries, 2 shadow models")
    parser.add_argument("--canaries", type=int, default=None)
    parser.add_argument("--shadows", type=int, default=None)
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.data_dir is not None:
        os.environ["FEDCUSTOMER_DATA_DIR"] = str(args.data_dir)
    data_dir = Path(os.environ.get("FEDCUSTOMER_DATA_DIR", ROOT.parent / "shared" / "data"))
    os.environ["FEDCUSTOMER_DATA_DIR"] = str(data_dir)
    canaries = args.canaries or (300 if args.quick else 1000)
    shadows = args.shadows if args.shadows is not None else (2 if args.quick else 4)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-privacy-audit-"))
    try:
        for name in args.jobs:
            if name == "uci" and not (data_dir / "uci_credit_default").is_dir():
                print(f"skipping uci: {data_dir / 'uci_credit_default'} not found (pass --data-dir)")
                continue
            out = work / name
            job_wall = _job(name, out, args.quick)
            started = time.perf_counter()
            report = audit_run(out, canaries_count=canaries, shadows=shadows)
            rows.append(_row(name, report, job_wall, time.perf_counter() - started))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        keys = list(rows[0])
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
