"""Accuracy and latency of DP customer analytics at epsilon = 1 per partner.

For synthetic retailers and CDNOW (split across partners), runs the RFM query (DP
segment sizes + mean spend per segment) and a regional spend-total query (synthetic:
region; CDNOW has no region, so its public first-purchase cohort plays that part)
through query.analytics messages over an in-process grid, repeated ``--trials`` times
with fresh query ids, and reports the median relative error against the true values
and the query latency across partners.

    python benchmarks/bench_analytics.py [--data-dir DIR] [--partners 3] [--trials 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedcustomer.analytics import rfm
from fedcustomer.analytics.customer import rfm_query
from fedcustomer.analytics.runner import (
    CDNOW_COHORTS,
    run_inprocess,
    setup_cdnow,
    setup_synthetic,
    true_partials,
)
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.privacy.dp.budget import DatasetBudget

REGIONS = ("north", "south", "east", "west", "central")


def rel_errors(estimates: list[float], truths: list[float]) -> list[float]:
    return [abs(e - t) / t for e, t in zip(estimates, truths) if t > 0]


def bench(
    name: str,
    homes: list,
    dataset: str,
    config: rfm.RFMConfig,
    group: str,
    domain: tuple[str, ...],
    trials: int,
) -> dict[str, float]:
    seg_err, spend_err, seg_mean_err, latency = [], [], [], []
    spend_spec = lambda: QuerySpec(
        dataset=dataset,
        kind="sum",
        field=config.monetary,
        bounds=(0.0, config.monetary_upper),
        group_by=(group,),
        groups={group: domain},
        epsilon=1.0,
    )
    rfm_truth = true_partials(homes, rfm_query(dataset, config, epsilon=1.0))
    spend_truth = true_partials(homes, spend_spec()).stats["sum"].tolist()
    for _ in range(trials):
        spec = rfm_query(dataset, config, epsilon=1.0)
        result = run_inprocess(homes, spec)
        latency.append(result.latency_s or 0.0)
        seg_err += rel_errors(
            [r["count"]["estimate"] for r in result.rows], rfm_truth.stats["count"].tolist()
        )
        true_means = (rfm_truth.stats["sum"] / np.maximum(rfm_truth.stats["count"], 1)).tolist()
        seg_mean_err += rel_errors([r["estimate"] for r in result.rows], true_means)
        result = run_inprocess(homes, spend_spec())
        latency.append(result.latency_s or 0.0)
        spend_err += rel_errors([r["estimate"] for r in result.rows], spend_truth)
    out = {
        "segment size rel. error (median)": statistics.median(seg_err),
        "segment mean spend rel. error (median)": statistics.median(seg_mean_err),
        f"spend total per {group} rel. error (median)": statistics.median(spend_err),
        "query latency s (median)": statistics.median(latency),
        "customers": float(rfm_truth.stats["count"].sum()),
    }
    print(f"\n{name} ({len(homes)} partners, epsilon 1 per partner and query, {trials} trials)")
    for k, v in out.items():
        print(f"  {k:45s} {v:.4g}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=Path(
            os.environ.get(
                "FEDCUSTOMER_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"
            )
        ),
    )
    ap.add_argument("--partners", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    budget = DatasetBudget(
        1000.0, 1e-5
    )  # the benchmark repeats queries; a real partner's target is far lower
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        homes = setup_synthetic(Path(tmp) / "syn", args.partners, budget=budget)
        print(f"synthetic partners provisioned in {time.perf_counter() - t:.1f} s")
        bench(
            "synthetic retailers", homes, "retailer", rfm.SYNTHETIC_RETAILER, "region", REGIONS, args.trials
        )
        try:
            t = time.perf_counter()
            homes = setup_cdnow(Path(tmp) / "cdnow", args.partners, data_dir=args.data_dir, budget=budget)
            print(f"CDNOW partners provisioned in {time.perf_counter() - t:.1f} s")
        except Exception as exc:  # the data set is optional
            print(f"CDNOW skipped: {exc}", file=sys.stderr)
            return 0
        bench("CDNOW", homes, "cdnow", rfm.CDNOW, "cohort", CDNOW_COHORTS, args.trials)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
