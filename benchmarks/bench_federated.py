"""Federated DP training on UCI credit default: what federation and privacy cost.

For 3 and 10 partners, IID and non-IID (one education level per partner where sizes
allow), the held-out AUC of the repayment MLP (64-32) trained

  centralised, non-private     on the pooled training rows (the reference)
  centralised, DP-SGD          epsilon 1, 3, 8 on the pooled rows (delta 1e-5)
  federated, non-private       FedAvg over the partners (in-process grid)
  federated, DP-SGD            epsilon 1, 3, 8 per partner, for the whole job (delta 1e-5)
  distributed DP-SGD (SecAgg+) one DP-SGD step over the union per round, noise split between partners;
                               epsilon against the coordinator (benchmarks/distributed_dp.py)

beside histogram gradient boosting on the pooled rows. Every model of one
(partners, split) cell is scored on the same rows: the pooled held-out splits of all
partners (federated models are read back from the run's model.pt). Each number is the
mean (and standard deviation) over ``--repeats`` runs with seeds seed, seed+1, ...
(model initialisation and shuffling; DP noise is always freshly drawn). Then the ratio
of round wall time to the sum of the partners' local training times, in Flower's
simulation engine and in the in-process grid.

    python benchmarks/bench_federated.py [--data-dir ../shared/data] [--quick]
        [--repeats 3] [--partners 3 10] [--splits iid non-iid] [--epsilons 1 3 8]
        [--recipe fed-dp:rounds=5,local_epochs=6] [--holdout validation] [--json out.json]
        [--uci-features v1|tight|...]

``--uci-features`` encodes the data with another public feature spec (benchmarks/uci_features.py;
``v1`` is the product's UCI_SPEC): the same rows, bounds and categories declared, not fitted.

Hyper-parameters are one recipe per family (``RECIPES`` in benchmarks/federated_recipes.py; override
with ``--recipe``).
They were chosen with ``--holdout validation``, which trains on 80% of each partner's
training rows and scores on the other 20%, so the test rows never steer the choice.

The data file is UCI ML Repository dataset 350 ("default of credit card clients");
pass --data-dir or set FEDCUSTOMER_DATA_DIR to the folder holding
uci_credit_default/default_of_credit_card_clients.csv.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distributed_dp import run_family
from federated_cell import FederatedCell, with_validation
from federated_overhead import grid_overhead, overhead_only, print_overhead_only, round_overhead
from federated_recipes import (
    DELTA,
    FAMILY_LABEL,
    QUICK,
    RECIPES,
    SOURCE,
    TASK,
    Recipe,
    parse_recipe,
    recipe_for,
)
from federated_report import print_report
from uci_features import VARIANTS as UCI_FEATURES

from fedcustomer.data.sources import load_partitions
from fedcustomer.models.baseline import gradient_boosting, train_centralised


def run_cell(
    n: int, split: str, args: argparse.Namespace, recipes: dict[str, Recipe]
) -> list[dict[str, Any]]:
    """Every wanted family of one (partners, split) cell, each over ``--repeats`` seeds, as report rows."""
    spec, datasets = load_partitions(
        TASK, SOURCE, n, split=split, seed=args.split_seed, data_dir=args.data_dir
    )
    spec = UCI_FEATURES[args.uci_features]
    if args.holdout == "validation":
        datasets = with_validation(datasets, args.split_seed)
    rows: list[dict[str, Any]] = []
    seeds = [args.seed + r for r in range(args.repeats)]
    cell = {
        "partners": n,
        "split": split,
        "train_rows": sum(len(d.train) for d in datasets),
        "test_rows": sum(len(d.test) for d in datasets),
    }

    def add(family: str, epsilon: float | None, runs: list[dict[str, Any]]) -> None:
        aucs = [r["auc"] for r in runs if r["auc"] is not None]
        row = {
            **cell,
            "family": family,
            "model": FAMILY_LABEL[family],
            "epsilon": epsilon,
            "runs": runs,
            "auc_mean": statistics.mean(aucs) if aucs else None,
            "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "complete": len(aucs) == len(runs),
        }
        rows.append(row)
        eps = "" if epsilon is None else f" eps={epsilon:g}"
        shown = " ".join(f"{a:.4f}" for a in aucs)
        print(f"#   {row['model']}{eps}: {shown}", file=sys.stderr, flush=True)

    def wanted(family: str) -> bool:
        return not args.only or family in args.only

    args.input_dim = spec.input_dim
    t0 = time.perf_counter()
    c = recipe_for(recipes, "central", n)
    if wanted("central"):
        add(
            "central",
            None,
            [
                {
                    "auc": train_centralised(
                        spec, datasets, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=s
                    ).metrics["auc"]
                }
                for s in seeds
            ],
        )
    c = recipe_for(recipes, "central-dp", n)
    for eps in args.epsilons if wanted("central-dp") else []:
        runs = []
        for s in seeds:
            r = train_centralised(
                spec,
                datasets,
                epochs=c.epochs,
                batch_size=c.batch_size,
                lr=c.lr,
                dp=True,
                epsilon_target=eps,
                delta=DELTA,
                max_grad_norm=c.max_grad_norm,
                seed=s,
            )
            runs.append(
                {"auc": r.metrics["auc"], "epsilon_spent": r.epsilon, "noise_multiplier": r.noise_multiplier}
            )
        add("central-dp", eps, runs)
    if wanted("gbm"):
        add("gbm", None, [{"auc": gradient_boosting(spec, datasets, seed=s).metrics["auc"]} for s in seeds])
    if wanted("dist-dp"):
        run_family(add, spec, datasets, recipe_for(recipes, "dist-dp", n), args, seeds, DELTA)
    if not (wanted("fed") or wanted("fed-dp")):
        return rows
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        fed = FederatedCell(spec, datasets, Path(tmp))
        if wanted("fed"):
            add(
                "fed",
                None,
                [fed.run(recipe_for(recipes, "fed", n), dp=False, epsilon=1.0, seed=s) for s in seeds],
            )
        for eps in args.epsilons if wanted("fed-dp") else []:
            add(
                "fed-dp",
                eps,
                [fed.run(recipe_for(recipes, "fed-dp", n), dp=True, epsilon=eps, seed=s) for s in seeds],
            )
    print(f"# {n} partners, {split}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_dir = Path(os.environ.get("FEDCUSTOMER_DATA_DIR", ROOT.parent / "shared" / "data"))
    parser.add_argument("--data-dir", type=Path, default=default_dir, help=f"default: {default_dir}")
    parser.add_argument("--partners", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--splits", nargs="+", default=["iid", "non-iid"], choices=["iid", "non-iid"])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--repeats", type=int, default=3, help="seeds per model (mean and sd reported)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the partner/test split (fixes the test rows)"
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="FAMILY:KEY=VALUE,...",
        help=f"override a recipe ({', '.join(RECIPES)}), e.g. fed-dp:rounds=5,lr=0.5",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["central", "central-dp", "gbm", "fed", "fed-dp", "dist-dp"],
        help="run only these families (for tuning)",
    )
    parser.add_argument(
        "--holdout",
        choices=["test", "validation"],
        default="test",
        help="score on the test rows (default) or on validation rows carved from training rows",
    )
    parser.add_argument(
        "--overhead-rounds", type=int, default=4, help="rounds of the simulation-engine timing (0: skip)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 partners, IID, epsilon 3, 1 seed, short recipes"
    )
    parser.add_argument("--secagg-rounds", type=int, default=3, help="real SecAgg+ distributed rounds timed")
    parser.add_argument(
        "--distributed-accountant",
        choices=["rdp", "pld"],
        default="rdp",
        help="dist-dp: the accountant that calibrates sigma and reports both guarantees",
    )
    parser.add_argument(
        "--overhead-only",
        action="store_true",
        help="only the round-overhead figures: --repeats federated DP jobs per --partners count on the grid "
        "(mean +- sd), then the simulation engine",
    )
    parser.add_argument(
        "--uci-features",
        choices=list(UCI_FEATURES),
        default="v1",
        help="feature spec (benchmarks/uci_features.py; v1 = the product's UCI_SPEC)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    recipes = dict(QUICK if args.quick else RECIPES)
    if args.quick:
        args.partners, args.epsilons, args.splits, args.repeats, args.overhead_rounds = (
            [3],
            [3.0],
            ["iid"],
            1,
            2,
        )
    for text in args.recipe:
        try:
            family, recipe = parse_recipe(text, recipes)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        recipes[family] = recipe
    args.secagg_timed = None
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ["FEDCUSTOMER_DATA_DIR"] = str(args.data_dir)

    if args.overhead_only:
        overhead = overhead_only(args, recipes)
        print_overhead_only(overhead)
        if args.json:
            args.json.write_text(json.dumps({"round_overhead": overhead}, indent=2) + "\n", encoding="utf-8")
        return
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for n in args.partners:
        for split in args.splits:
            rows += run_cell(n, split, args, recipes)
    overhead = grid_overhead(rows) + ([args.secagg_timed] if args.secagg_timed else [])
    if args.overhead_rounds and not args.only:
        overhead.insert(
            0,
            round_overhead(
                args.data_dir,
                args.partners[0],
                recipe_for(recipes, "fed-dp", args.partners[0]),
                3.0,
                args.overhead_rounds,
            ),
        )
    print_report(rows, overhead, args, recipes)
    print(f"\ntotal {time.perf_counter() - started:.0f}s", file=sys.stderr)
    if args.json:
        payload = {
            "date": str(date.today()),
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "holdout": args.holdout,
            "uci_features": args.uci_features,
            "repeats": args.repeats,
            "delta": DELTA,
            "recipes": {k: asdict(v) for k, v in recipes.items()},
            "rows": rows,
            "round_overhead": overhead,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
