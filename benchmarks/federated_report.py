"""The printed report of bench_federated.py: AUC tables, gaps to centralised, targets, round overhead."""

from __future__ import annotations

import argparse
import os
import platform
from datetime import date
from typing import Any

from distributed_dp import print_target
from federated_recipes import DELTA, FAMILY_LABEL, Recipe


def fmt(row: dict[str, Any] | None) -> str:
    """A table cell: mean ± sd of the AUC, marked when some seed's run did not finish."""
    if row is None or row["auc_mean"] is None:
        return "n/a"
    text = f"{row['auc_mean']:.3f} ± {row['auc_sd']:.3f}"
    return text if row["complete"] else text + " (incomplete)"


def print_report(
    rows: list[dict[str, Any]],
    overhead: list[dict[str, Any]],
    args: argparse.Namespace,
    recipes: dict[str, Recipe],
    target_epsilon: float = 3.0,
) -> None:
    """The Markdown tables RESULTS.md quotes: AUC per family and cell, gaps, targets, round overhead."""
    cells = list(dict.fromkeys((r["partners"], r["split"]) for r in rows))
    first = next(r for r in rows)
    holdout = (
        "validation rows (20% of each partner's training rows)"
        if args.holdout == "validation"
        else "test rows"
    )
    print(
        f"\nUCI credit default, features {args.uci_features}, repayment MLP {args.input_dim}-64-32-1, "
        f"{first['train_rows']} training rows, scored on {first['test_rows']} pooled held-out {holdout}; "
        f"delta {DELTA:g}; AUC mean ± sd over {args.repeats} seed(s) ({date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores)\n"
    )
    for key, recipe in recipes.items():
        family, _, n = key.partition("@")
        scope = f" ({n} partners)" if n else ""
        text = recipe.describe(family.startswith("fed"), family.endswith("dp"))
        if family == "dist-dp":
            text = text.replace("epochs", "passes, one step a round").replace("batch", "union batch")
        print(f"- {FAMILY_LABEL[family]}{scope}: {text}")
    print("- gradient boosting: scikit-learn HistGradientBoostingClassifier, default settings")
    print(
        "- federated: FedAvg, every partner every round; DP epsilon is each partner's budget for the whole job\n"
    )

    def key(r: dict[str, Any]) -> tuple[str, float | None]:
        return r["family"], r["epsilon"]

    order = list(dict.fromkeys(key(r) for r in rows))
    order.sort(key=lambda k: (list(FAMILY_LABEL).index(k[0]), k[1] or 0.0))
    by = {(r["partners"], r["split"], *key(r)): r for r in rows}
    head = " | ".join(f"{n} partners, {s}" for n, s in cells)
    print(f"| model | epsilon | {head} |")
    print("|---|---|" + "---|" * len(cells))
    for fam, eps in order:
        vals = " | ".join(fmt(by.get((n, s, fam, eps))) for n, s in cells)
        print(f"| {FAMILY_LABEL[fam]} | {'-' if eps is None else f'{eps:g}'} | {vals} |")

    print("\nGap to the centralised non-private model of the same cell (AUC difference of the means):\n")
    print(f"| model | epsilon | {head} |")
    print("|---|---|" + "---|" * len(cells))
    for fam, eps in order:
        if fam == "central":
            continue
        gaps = []
        for n, s in cells:
            r, base = by.get((n, s, fam, eps)), by.get((n, s, "central", None))
            ok = r and base and r["auc_mean"] is not None and base["auc_mean"] is not None
            gaps.append(f"{r['auc_mean'] - base['auc_mean']:+.3f}" if ok else "n/a")
        print(f"| {FAMILY_LABEL[fam]} | {'-' if eps is None else f'{eps:g}'} | {' | '.join(gaps)} |")

    dp_runs = [run for r in rows if r["family"] == "fed-dp" for run in r["runs"]]
    if dp_runs:
        worst = max(
            (run["epsilon_spent"] or 0.0) - r["epsilon"]
            for r in rows
            if r["family"] == "fed-dp"
            for run in r["runs"]
        )
        incomplete = sum(run["status"] != "completed" for run in dp_runs)
        print(
            f"\nFederated DP: {len(dp_runs)} jobs, {incomplete} stopped early; largest partner spend minus target "
            f"{worst:+.2e} (must be <= 0)."
        )
    print(
        f"\nTarget: federated DP (epsilon {target_epsilon:g} per partner) within 0.01 AUC of centralised non-private:"
    )
    for n, s in cells:
        r, base = by.get((n, s, "fed-dp", target_epsilon)), by.get((n, s, "central", None))
        if r and base and r["auc_mean"] is not None:
            gap = r["auc_mean"] - base["auc_mean"]
            print(f"  {n} partners, {s}: gap {gap:+.3f} -> {'met' if gap >= -0.01 else 'not met'}")

    print_target(by, cells, target_epsilon, fmt)
    if overhead:
        print("\nRound wall time / sum of the partners' local training times (federated DP recipe):\n")
        print(
            "| engine | partners | rounds timed | mean round wall (s) | mean sum of local training (s) | ratio |"
        )
        print("|---|---|---|---|---|---|")
        for o in overhead:
            print(
                f"| {o['engine']} | {o['partners']} | {o['rounds_timed']} | {o['mean_round_wall_s']:.2f} | "
                f"{o['mean_sum_local_train_s']:.2f} | {o['ratio']:.2f} |"
            )
        for o in overhead:
            if "job_wall_s" in o:  # SecAgg+: the rounds above; the job adds set-up, calibration, report
                after = o["mean_round_wall_after_first_s"]
                print(
                    f"\n{o['engine']}, {o['partners']} partners: rounds 2.. {'-' if after is None else f'{after:.2f}'} s "
                    f"a round; the whole job {o['job_wall_s']:.1f} s"
                )
