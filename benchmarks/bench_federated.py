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

Hyper-parameters are one recipe per family (``RECIPES``; override with ``--recipe``).
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
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distributed_dp import print_target, run_family
from uci_features import VARIANTS as UCI_FEATURES

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.partition import PartnerDataset, split_train_test
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.sources import load_partitions
from fedcustomer.models.baseline import gradient_boosting, pooled, train_centralised
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model
from fedcustomer.partner.datasets import dataset_name
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid

SOURCE, TASK, DELTA = "uci-credit", "repayment", 1e-5
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters of one model family (SGD with momentum 0.9 throughout)."""

    epochs: int  # centralised: epochs; federated: local epochs per round
    batch_size: int
    lr: float
    rounds: int = 1  # federated only
    max_grad_norm: float = 1.0  # DP only

    def describe(self, federated: bool, dp: bool) -> str:
        work = f"{self.rounds} rounds x {self.epochs} local epochs" if federated else f"{self.epochs} epochs"
        clip = f", clip {self.max_grad_norm:g}" if dp else ""
        return f"{work}, batch {self.batch_size}, lr {self.lr:g}{clip}"


# Chosen on validation rows (see the module docstring and RESULTS.md). "family@N" overrides
# a family for N partners: a partner's DP batch is best kept at a similar share of its rows.
RECIPES: dict[str, Recipe] = {
    "central": Recipe(epochs=30, batch_size=256, lr=0.1),
    "central-dp": Recipe(epochs=30, batch_size=1024, lr=1.0, max_grad_norm=0.5),
    "fed": Recipe(rounds=10, epochs=6, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=10, epochs=3, batch_size=512, lr=1.0, max_grad_norm=0.5),
    "fed-dp@10": Recipe(rounds=10, epochs=3, batch_size=128, lr=0.5, max_grad_norm=0.5),
    # epochs: passes over the union (rounds = passes x int(1/q)); batch: expected union batch (q = batch / rows)
    "dist-dp": Recipe(epochs=30, batch_size=2048, lr=2.0, max_grad_norm=0.5),
}
QUICK = {
    "central": Recipe(epochs=5, batch_size=256, lr=0.1),
    "central-dp": Recipe(epochs=5, batch_size=1024, lr=1.0, max_grad_norm=0.5),
    "fed": Recipe(rounds=3, epochs=2, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=3, epochs=2, batch_size=512, lr=1.0, max_grad_norm=0.5),
    "dist-dp": Recipe(epochs=5, batch_size=1024, lr=1.0, max_grad_norm=0.5),
}
FAMILY_LABEL = {
    "central": "centralised non-private",
    "central-dp": "centralised DP-SGD",
    "fed": "federated non-private",
    "fed-dp": "federated DP-SGD",
    "dist-dp": "distributed DP-SGD (SecAgg+)",
    "gbm": "gradient boosting (centralised)",
}


def parse_recipe(text: str, recipes: dict[str, Recipe]) -> tuple[str, Recipe]:
    """``family:key=value,...`` -> (family, the family's recipe with those fields replaced)."""
    family, _, body = text.partition(":")
    base = family.partition("@")[0]
    if base not in recipes or (family != base and not family.partition("@")[2].isdigit()):
        raise argparse.ArgumentTypeError(
            f"unknown recipe {family!r}; choose one of {', '.join(recipes)} (optionally @N for N partners)"
        )
    types = {f.name: f.type for f in fields(Recipe)}
    changes: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in types or not value:
            raise argparse.ArgumentTypeError(
                f"--recipe {text!r}: expected key=value with key in {', '.join(types)}"
            )
        changes[key] = float(value) if types[key] == "float" else int(value)
    return family, replace(recipes.get(family, recipes[base]), **changes)


def with_validation(datasets: list[PartnerDataset], seed: int) -> list[PartnerDataset]:
    """Each partner's training rows split again: train on 80%, score on 20% (test rows unused)."""
    out = []
    for i, d in enumerate(datasets):
        train, val = split_train_test(d.train, VALIDATION_FRACTION, seed + 7919 * (i + 1), stratify="default")
        out.append(PartnerDataset(d.name, d.kind, train, val))
    return out


class FederatedCell:
    """The partners of one (partners, split) cell, provisioned once and copied for every job.

    Each job gets fresh homes (its own ledger), so one job's privacy spend never limits
    another's; provisioning (validated encrypted ingest) is done once per cell.
    """

    def __init__(self, spec, datasets: list[PartnerDataset], workdir: Path) -> None:
        self.spec, self.datasets, self.workdir = spec, datasets, workdir
        self.template = workdir / "template"
        self.dataset = dataset_name(SOURCE, TASK)
        for ds in datasets:
            provision_partner(
                self.template / ds.name,
                ds.name,
                source=SOURCE,
                task=TASK,
                spec=spec,
                train=ds.train,
                test=ds.test,
                budget=DatasetBudget(1.0, DELTA),
            )
        self.jobs = 0
        _, test = pooled(datasets)
        self.X_test, self.y_test = spec.transform(test)

    def homes(self, epsilon: float) -> list[str]:
        self.jobs += 1
        root = self.workdir / f"job-{self.jobs}"
        homes = []
        for ds in self.datasets:
            shutil.copytree(self.template / ds.name, root / ds.name)
            home = PartnerHome(root / ds.name)
            config = home.config()
            config.budget = DatasetBudget(epsilon, DELTA)
            home.write_config(config)
            homes.append(str(home.root))
        return homes

    def run(self, recipe: Recipe, *, dp: bool, epsilon: float, seed: int) -> dict[str, Any]:
        n = len(self.datasets)
        homes = self.homes(epsilon)
        out = Path(homes[0]).parent / "run"
        job = JobConfig(
            data=SOURCE,
            task=TASK,
            partners=n,
            rounds=recipe.rounds,
            local_epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            max_grad_norm=recipe.max_grad_norm,
            max_noise_multiplier=100.0,
            dp=dp,
            epsilon=epsilon,
            delta=DELTA,
            seed=seed,
            out=str(out),
            min_partners=n,
            federated_eval="none",
        )
        started = time.perf_counter()
        summary = run_job_on_grid(LocalGrid(make_client_app(homes), n), job, self.spec, num_partners=n)
        wall = time.perf_counter() - started
        result: dict[str, Any] = {
            "auc": None,
            "rounds_completed": summary["rounds_completed"],
            "status": summary["status"],
            "stop_reason": summary["stop_reason"],
            "wall_s": wall,
            "round_wall_s": sum(summary["round_wall_time_s"]),
            "round_local_train_s": sum(summary["round_local_train_s"]),
            "round_walls": summary["round_wall_time_s"],
            "round_trains": summary["round_local_train_s"],
        }
        if summary["rounds_completed"]:
            model = build_model(TASK, "mlp", self.spec.input_dim)
            model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
            result["auc"] = evaluate(model, self.X_test, self.y_test, TASK)["auc"]
        if dp:
            partners = summary["partners"]
            result["epsilon_spent"] = max(p["epsilon_spent"] or 0.0 for p in partners)
            sigmas = [
                p["accounting"].get("noise_multiplier")
                for p in partners
                if p["accounting"].get("noise_multiplier")
            ]
            result["noise_multiplier"] = [min(sigmas), max(sigmas)] if sigmas else None
        shutil.rmtree(Path(homes[0]).parent)
        return result


def recipe_for(recipes: dict[str, Recipe], family: str, partners: int) -> Recipe:
    return recipes.get(f"{family}@{partners}", recipes[family])


def run_cell(
    n: int, split: str, args: argparse.Namespace, recipes: dict[str, Recipe]
) -> list[dict[str, Any]]:
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
    return {
        "engine": "simulation",
        "partners": partners,
        "rounds_timed": len(walls),
        "mean_round_wall_s": sum(walls) / len(walls),
        "mean_sum_local_train_s": sum(trains) / len(trains),
        "ratio": sum(walls) / max(sum(trains), 1e-9),
        "first_round_wall_s": summary["round_wall_time_s"][0],
    }


def overhead_only(args: argparse.Namespace, recipes: dict[str, Recipe]) -> list[dict[str, Any]]:
    """Round overhead alone: one federated DP job (epsilon 3) per partner count on the in-process
    grid, then the simulation engine; all rounds and rounds 2.. (round 1 reads, calibrates)."""
    out = []
    for n in args.partners:
        spec, datasets = load_partitions(
            TASK, SOURCE, n, split="iid", seed=args.split_seed, data_dir=args.data_dir
        )
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            run = FederatedCell(spec, datasets, Path(tmp)).run(
                recipe_for(recipes, "fed-dp", n), dp=True, epsilon=3.0, seed=args.seed
            )
        walls, trains = run["round_walls"], run["round_trains"]
        out.append(
            {
                "engine": "in-process grid",
                "partners": n,
                "rounds_timed": len(walls),
                "mean_round_wall_s": sum(walls) / len(walls),
                "mean_sum_local_train_s": sum(trains) / len(trains),
                "ratio": sum(walls) / max(sum(trains), 1e-9),
                "first_round_wall_s": walls[0],
                "ratio_after_first": sum(walls[1:]) / max(sum(trains[1:]), 1e-9) if len(walls) > 1 else None,
            }
        )
        print(f"# grid, {n} partners: {out[-1]}", file=sys.stderr, flush=True)
    if args.overhead_rounds:
        for n in args.partners:
            out.append(
                round_overhead(args.data_dir, n, recipe_for(recipes, "fed-dp", n), 3.0, args.overhead_rounds)
            )
            print(f"# simulation, {n} partners: {out[-1]}", file=sys.stderr, flush=True)
    return out


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


def fmt(row: dict[str, Any] | None) -> str:
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
        help="only the round-overhead figures: one federated DP job per --partners count (grid, then simulation)",
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
        print(
            "| engine | partners | rounds | mean round wall (s) | mean sum of local training (s) | ratio | ratio, rounds 2.. | round 1 wall (s) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for o in overhead:
            after = o.get("ratio_after_first")
            print(
                f"| {o['engine']} | {o['partners']} | {o['rounds_timed']} | {o['mean_round_wall_s']:.2f} | "
                f"{o['mean_sum_local_train_s']:.2f} | {o['ratio']:.2f} | {'-' if after is None else f'{after:.2f}'} | "
                f"{o['first_round_wall_s']:.2f} |"
            )
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
