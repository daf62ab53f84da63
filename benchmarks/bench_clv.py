"""Customer lifetime value under DP on CDNOW: the DP model beside the non-private one.

CDNOW customers (RFM features over a 39-week calibration period, spend in the next 39
weeks as the label) are split at random across ``--partners`` partners. For each seed the
federated CLV MLP is trained non-private and with DP-SGD at ``--epsilon`` per partner
(delta 1e-5) with the same target recipe (spend clipped to a declared public cap,
``log1p``, scaled to [0, 1], Huber loss), and both are scored on the pooled held-out rows
on the original scale: MAE and RMSE in dollars, Spearman rank correlation and top-decile
capture (the share of the true total spend held by the customers the model ranks in its
top 10%). Figures are mean +- sd over ``--repeats`` seeds.

    python benchmarks/bench_clv.py [--data-dir ../shared/data] [--quick] [--repeats 3]
        [--epsilon 3] [--holdout validation|test] [--recipe fed-dp:lr=1.0,...]
        [--target spend_cap=1000,loss=huber,...] [--json out.json]

The recipe and target were chosen with ``--holdout validation`` (train on 80% of each
partner's training rows, score on the other 20%), so the test rows never steer the choice.
The data file is CDNOW_master.txt; pass --data-dir or set FEDCUSTOMER_DATA_DIR to the
folder holding cdnow/CDNOW_master.txt.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from federated_recipes import Recipe, parse_recipe  # the same recipe type and --recipe syntax

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.partition import PartnerDataset, split_train_test
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.sources import load_partitions
from fedcustomer.models.baseline import pooled
from fedcustomer.models.clv import CLVTarget
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid

SOURCE, TASK, DELTA = "cdnow", "clv", 1e-5
VALIDATION_FRACTION = 0.2
METRICS = ("mae", "rmse", "spearman", "top_decile_capture")


# Chosen on validation rows (see the module docstring and RESULTS.md).
RECIPES: dict[str, Recipe] = {
    "fed": Recipe(rounds=10, epochs=3, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=3, epochs=2, batch_size=1024, lr=2.0, max_grad_norm=0.5),
}
QUICK: dict[str, Recipe] = {
    "fed": Recipe(rounds=3, epochs=2, batch_size=128, lr=0.1),
    "fed-dp": Recipe(rounds=2, epochs=2, batch_size=1024, lr=2.0, max_grad_norm=0.5),
}
TARGET = CLVTarget()  # the job defaults: log1p, cap 1,000 dollars, Huber


def parse_target(text: str) -> CLVTarget:
    """``key=value,...`` over CLVTarget's fields."""
    return replace(TARGET, **_pairs(text, text, {f.name: f.type for f in fields(CLVTarget)}))


def _pairs(text: str, body: str, types: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in types or not value:
            raise argparse.ArgumentTypeError(f"{text!r}: expected key=value with key in {', '.join(types)}")
        kind = str(types[key])
        out[key] = float(value) if kind == "float" else int(value) if kind == "int" else value
    return out


def with_validation(datasets: list[PartnerDataset], seed: int) -> list[PartnerDataset]:
    """Each partner's training rows split again: train on 80%, score on 20% (test rows unused)."""
    out = []
    for i, d in enumerate(datasets):
        train, val = split_train_test(d.train, VALIDATION_FRACTION, seed + 7919 * (i + 1))
        out.append(PartnerDataset(d.name, d.kind, train, val))
    return out


def run_job(
    spec: Any,
    datasets: list[PartnerDataset],
    workdir: Path,
    recipe: Recipe,
    target: CLVTarget,
    *,
    dp: bool,
    epsilon: float,
    seed: int,
) -> dict[str, Any]:
    """One federated job on fresh homes; metrics of its model.pt on the pooled held-out rows."""
    root = workdir / f"job-{'dp' if dp else 'plain'}-{seed}"
    homes = []
    for ds in datasets:
        provision_partner(
            root / ds.name,
            ds.name,
            source=SOURCE,
            task=TASK,
            spec=spec,
            train=ds.train,
            test=ds.test,
            budget=DatasetBudget(epsilon, DELTA),
        )
        homes.append(str(PartnerHome(root / ds.name).root))
    out = root / "run"
    job = JobConfig(
        data=SOURCE,
        task=TASK,
        partners=len(datasets),
        **recipe.job_fields(),
        dp=dp,
        epsilon=epsilon,
        delta=DELTA,
        seed=seed,
        out=str(out),
        min_partners=len(datasets),
        federated_eval="final",
        clv_transform=target.transform,
        clv_spend_cap=target.spend_cap,
        clv_loss=target.loss,
        clv_huber_delta=target.huber_delta,
    )
    started = time.perf_counter()
    summary = run_job_on_grid(
        LocalGrid(make_client_app(homes), len(datasets)), job, spec, num_partners=len(datasets)
    )
    result: dict[str, Any] = {"status": summary["status"], "wall_s": time.perf_counter() - started}
    result["summary_metrics"] = {k: summary["metrics"].get(k) for k in METRICS}
    if summary["rounds_completed"]:
        model = build_model(TASK, "mlp", spec.input_dim)
        model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
        _, held = pooled(datasets)
        X, y = spec.transform(held)
        result.update({k: v for k, v in evaluate(model, X, y, TASK, target).items() if k in METRICS})
    if dp:
        result["epsilon_spent"] = max(p["epsilon_spent"] or 0.0 for p in summary["partners"])
    shutil.rmtree(root)
    return result


def mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and one seed")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--holdout", choices=("test", "validation"), default="test")
    parser.add_argument("--recipe", action="append", default=[], help="family:key=value,... (fed, fed-dp)")
    parser.add_argument("--target", default="", help="CLV target fields, key=value,...")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    data_dir = args.data_dir or Path(os.environ.get("FEDCUSTOMER_DATA_DIR", ROOT.parent / "shared" / "data"))
    recipes = dict(QUICK if args.quick else RECIPES)
    try:
        for text in args.recipe:
            family, recipe = parse_recipe(text, recipes)
            recipes[family] = recipe
        target = parse_target(args.target)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    repeats = args.repeats or (1 if args.quick else 3)
    spec, datasets = load_partitions(TASK, SOURCE, args.partners, seed=args.seed, data_dir=data_dir)
    if args.holdout == "validation":
        datasets = with_validation(datasets, args.seed)
    print(
        f"CDNOW, {args.partners} partners (IID), {sum(len(d.train) for d in datasets)} training rows, "
        f"scored on pooled {args.holdout} rows; epsilon {args.epsilon:g} per partner, delta {DELTA:g}"
    )
    print(f"target: {target.to_dict()}")
    results: dict[str, list[dict[str, Any]]] = {"fed": [], "fed-dp": []}
    with tempfile.TemporaryDirectory(prefix="bench-clv-") as tmp:
        for r in range(repeats):
            seed = args.seed + r
            for family in ("fed", "fed-dp"):
                res = run_job(
                    spec,
                    datasets,
                    Path(tmp),
                    recipes[family],
                    target,
                    dp=family == "fed-dp",
                    epsilon=args.epsilon,
                    seed=seed,
                )
                results[family].append(res)
                shown = ", ".join(f"{k} {res.get(k, float('nan')):.3f}" for k in METRICS)
                print(f"  seed {seed} {family:7s} {shown}  ({res['wall_s']:.1f} s)", flush=True)
    print(f"\n{'model':28s}" + "".join(f"{m:>22s}" for m in METRICS))
    table: dict[str, dict[str, list[float]]] = {}
    for family, label in (
        ("fed", "federated non-private"),
        ("fed-dp", f"federated DP-SGD eps {args.epsilon:g}"),
    ):
        table[family] = {m: [r[m] for r in results[family] if m in r] for m in METRICS}
        print(f"{label:28s}" + "".join(f"{mean_sd(table[family][m]):>22s}" for m in METRICS))
    plain = {m: statistics.mean(v) for m, v in table["fed"].items() if v}
    private = {m: statistics.mean(v) for m, v in table["fed-dp"].items() if v}
    if plain and private:
        gap = plain["spearman"] - private["spearman"]
        ratio = private["mae"] / plain["mae"]
        print(
            f"\ntargets: DP Spearman within 0.02 of non-private: gap {gap:.3f} "
            f"({'met' if gap <= 0.02 else 'not met'}); DP MAE within 20%: ratio {ratio:.3f} "
            f"({'met' if ratio <= 1.2 else 'not met'})"
        )
    if args.json:
        payload = {
            "recipes": {k: asdict(v) for k, v in recipes.items()},
            "target": target.to_dict(),
            "holdout": args.holdout,
            "epsilon": args.epsilon,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
