"""Round overhead of bench_federated.py: round wall time against the partners' local training time.

``--overhead-only`` runs just these figures (one federated DP job per partner count on the
in-process grid, then Flower's simulation engine); the full run adds the simulation timing and
the grid's ratio from its federated DP jobs to the report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from federated_cell import FederatedCell
from federated_recipes import SOURCE, TASK, Recipe, recipe_for

from fedcustomer.data.sources import load_partitions
from fedcustomer.server.job import JobConfig


def round_overhead(
    data_dir: Path, partners: int, recipe: Recipe, epsilon: float, rounds: int
) -> dict[str, Any]:
    """Flower simulation engine: round wall time / sum of the partners' local training times."""
    from fedcustomer.apps.simulation import run_simulated_job

    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        job = JobConfig(
            data=SOURCE,
            data_dir=str(data_dir),
            partners=partners,
            rounds=rounds,
            local_epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            max_grad_norm=recipe.max_grad_norm,
            max_noise_multiplier=100.0,
            dp=True,
            epsilon=epsilon,
            out=str(Path(tmp) / "run"),
            min_partners=partners,
            federated_eval="none",
        )
        summary = run_simulated_job(job)
    walls = summary["round_wall_time_s"][1:] or summary["round_wall_time_s"]  # round 1 includes engine start
    trains = summary["round_local_train_s"][1:] or summary["round_local_train_s"]
    return _overhead_row("simulation", partners, walls, trains, summary["round_wall_time_s"][0])


def _overhead_row(
    engine: str, partners: int, walls: list[float], trains: list[float], first_round_wall_s: float
) -> dict[str, Any]:
    """One engine's row: mean round wall, mean summed local training, and their ratio."""
    return {
        "engine": engine,
        "partners": partners,
        "rounds_timed": len(walls),
        "mean_round_wall_s": sum(walls) / len(walls),
        "mean_sum_local_train_s": sum(trains) / len(trains),
        "ratio": sum(walls) / max(sum(trains), 1e-9),
        "first_round_wall_s": first_round_wall_s,
    }


def overhead_only(args: argparse.Namespace, recipes: dict[str, Recipe]) -> list[dict[str, Any]]:
    """Round overhead alone: ``--repeats`` federated DP jobs (epsilon 3, seeds ``--seed``..) per
    partner count on the in-process grid, each on fresh copies of the same provisioned homes,
    reported per job and as mean +- sd over the jobs; then the simulation engine once. All
    rounds, and rounds 2.. (round 1 reads, calibrates)."""
    out = []
    for n in args.partners:
        spec, datasets = load_partitions(
            TASK, SOURCE, n, split="iid", seed=args.split_seed, data_dir=args.data_dir
        )
        jobs = []
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            cell = FederatedCell(spec, datasets, Path(tmp))
            for seed in range(args.seed, args.seed + max(1, args.repeats)):
                run = cell.run(recipe_for(recipes, "fed-dp", n), dp=True, epsilon=3.0, seed=seed)
                walls, trains = run["round_walls"], run["round_trains"]
                after_first = sum(walls[1:]) / max(sum(trains[1:]), 1e-9) if len(walls) > 1 else None
                jobs.append(
                    _overhead_row("in-process grid", n, walls, trains, walls[0])
                    | {"ratio_after_first": after_first, "seed": seed}
                )
                print(f"# grid, {n} partners, seed {seed}: {jobs[-1]}", file=sys.stderr, flush=True)
        out.append(_over_seeds(jobs))
    if args.overhead_rounds:
        for n in args.partners:
            out.append(
                round_overhead(args.data_dir, n, recipe_for(recipes, "fed-dp", n), 3.0, args.overhead_rounds)
            )
            print(f"# simulation, {n} partners: {out[-1]}", file=sys.stderr, flush=True)
    return out


def _over_seeds(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several jobs of a partner count: mean +- sd of each figure, and the jobs themselves."""
    row = dict(jobs[0]) | {"jobs": jobs, "seeds": [j["seed"] for j in jobs]}
    row.pop("seed")
    for key in (
        "mean_round_wall_s",
        "mean_sum_local_train_s",
        "ratio",
        "ratio_after_first",
        "first_round_wall_s",
    ):
        values = [j[key] for j in jobs if j.get(key) is not None]
        if values:
            row[key] = statistics.fmean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["rounds_timed"] = sum(j["rounds_timed"] for j in jobs)
    return row


def grid_overhead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same ratio for the in-process grid (serial partners), from the federated DP jobs above."""
    out = []
    for n in sorted({r["partners"] for r in rows}):
        runs = [run for r in rows if r["partners"] == n and r["family"] == "fed-dp" for run in r["runs"]]
        wall, train = sum(r["round_wall_s"] for r in runs), sum(r["round_local_train_s"] for r in runs)
        rounds = sum(r["rounds_completed"] for r in runs)
        if rounds:
            out.append(
                {
                    "engine": "in-process grid",
                    "partners": n,
                    "rounds_timed": rounds,
                    "mean_round_wall_s": wall / rounds,
                    "mean_sum_local_train_s": train / rounds,
                    "ratio": wall / max(train, 1e-9),
                }
            )
    return out


def print_overhead_only(overhead: list[dict[str, Any]]) -> None:
    """The ``--overhead-only`` table: all rounds, rounds 2.. and round 1's wall time per engine
    (mean +- sd over the jobs where there were several, each job's ratio after them)."""
    print(
        "| engine | partners | jobs | rounds | mean round wall (s) | mean sum of local training (s) | ratio | ratio, rounds 2.. | round 1 wall (s) | ratio per job |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for o in overhead:
        jobs = o.get("jobs", [o])
        per_job = ", ".join(f"{j['ratio']:.2f}" for j in jobs)
        print(
            f"| {o['engine']} | {o['partners']} | {len(jobs)} | {o['rounds_timed']} | {o['mean_round_wall_s']:.2f} | "
            f"{o['mean_sum_local_train_s']:.2f} | {_pm(o, 'ratio')} | {_pm(o, 'ratio_after_first')} | "
            f"{_pm(o, 'first_round_wall_s')} | {per_job} |"
        )


def _pm(row: dict[str, Any], key: str) -> str:
    """``mean +- sd`` over the jobs (the value alone for one job, ``-`` when there is none)."""
    value = row.get(key)
    if value is None:
        return "-"
    sd = row.get(f"{key}_sd")
    return f"{value:.2f}" if sd is None or len(row.get("jobs", [])) < 2 else f"{value:.2f} ± {sd:.2f}"
