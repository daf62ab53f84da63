"""Federated DP training on UCI credit default: what federation and privacy cost.

Prints, for 3 and 10 partners (IID and non-IID), the held-out AUC of: centralised
non-private, centralised DP (epsilon 1, 3, 8), federated non-private, federated DP
(epsilon 1, 3, 8), and gradient boosting; then the ratio of a simulated round's wall
time to the sum of the partners' local training times (Flower simulation engine).

    python benchmarks/bench_federated.py [--data-dir ../shared/data] [--quick]

The data file is UCI ML Repository dataset 350 ("default of credit card clients");
pass --data-dir or set FEDCUSTOMER_DATA_DIR to the folder holding
uci_credit_default/default_of_credit_card_clients.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcustomer.clients.app import make_client_app  # noqa: E402
from fedcustomer.clients.home import DatasetBudget  # noqa: E402
from fedcustomer.data.provision import provision_partner  # noqa: E402
from fedcustomer.data.sources import load_partitions  # noqa: E402
from fedcustomer.models.baseline import gradient_boosting, train_centralised  # noqa: E402
from fedcustomer.server.app import run_job_on_grid  # noqa: E402
from fedcustomer.server.inprocess import LocalGrid  # noqa: E402
from fedcustomer.server.job import JobConfig  # noqa: E402


def federated_auc(spec, datasets, workdir: Path, *, dp: bool, epsilon: float, rounds: int, batch_size: int,
                  lr: float, arch: str, seed: int) -> dict:
    homes = []
    job = JobConfig(data="uci-credit", partners=len(datasets), rounds=rounds, batch_size=batch_size, lr=lr, arch=arch,
                    dp=dp, epsilon=epsilon, seed=seed, out=str(workdir / "run"), min_partners=len(datasets),
                    federated_eval="final")
    for ds in datasets:
        home, _ = provision_partner(workdir / ds.name, ds.name, source="uci-credit", task="repayment", spec=spec,
                                    train=ds.train, test=ds.test, budget=DatasetBudget(epsilon, 1e-5))
        homes.append(str(home.root))
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), len(homes)), job, spec, num_partners=len(homes))
    spent = max((p["epsilon_spent"] or 0.0) for p in summary["partners"]) if dp else None
    return {"auc": summary["metrics"].get("auc"), "epsilon_spent": spent, "rounds": summary["rounds_completed"]}


def round_overhead(data_dir: Path, partners: int, rounds: int) -> dict:
    """Flower simulation engine: round wall time / sum of local training times."""
    from fedcustomer.server.simulation import run_simulated_job

    with tempfile.TemporaryDirectory() as tmp:
        job = JobConfig(data="uci-credit", data_dir=str(data_dir), partners=partners, rounds=rounds,
                        batch_size=256, out=str(Path(tmp) / "run"), federated_eval="none")
        summary = run_simulated_job(job)
    walls = summary["round_wall_time_s"][1:] or summary["round_wall_time_s"]  # round 1 includes engine start
    trains = summary["round_local_train_s"][1:] or summary["round_local_train_s"]
    return {"partners": partners, "mean_round_wall_s": sum(walls) / len(walls),
            "mean_sum_local_train_s": sum(trains) / len(trains), "ratio": sum(walls) / max(sum(trains), 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FEDCUSTOMER_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--partners", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="centralised epochs (= rounds x 1 local epoch)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--splits", nargs="+", default=["iid", "non-iid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 partners, IID, epsilon 3 only, 3 rounds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.partners, args.epsilons, args.splits, args.rounds, args.epochs = [3], [3.0], ["iid"], 3, 3
    torch.set_num_threads(1)
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ["FEDCUSTOMER_DATA_DIR"] = str(args.data_dir)
    rows = []
    common = dict(batch_size=args.batch_size, lr=args.lr, arch=args.arch, seed=args.seed)
    for n in args.partners:
        for split in args.splits:
            spec, datasets = load_partitions("repayment", "uci-credit", n, split=split, seed=args.seed, data_dir=args.data_dir)
            t0 = time.perf_counter()
            central = train_centralised(spec, datasets, epochs=args.epochs, **common)
            rows.append({"partners": n, "split": split, "model": "centralised non-private", "epsilon": None, "auc": central.metrics["auc"]})
            for eps in args.epsilons:
                c = train_centralised(spec, datasets, epochs=args.epochs, dp=True, epsilon_target=eps, **common)
                rows.append({"partners": n, "split": split, "model": "centralised DP", "epsilon": eps, "auc": c.metrics["auc"]})
            gb = gradient_boosting(spec, datasets, seed=args.seed)
            rows.append({"partners": n, "split": split, "model": "gradient boosting (centralised)", "epsilon": None, "auc": gb.metrics["auc"]})
            with tempfile.TemporaryDirectory() as tmp:
                r = federated_auc(spec, datasets, Path(tmp) / "np", dp=False, epsilon=1.0, rounds=args.rounds, **common)
                rows.append({"partners": n, "split": split, "model": "federated non-private", "epsilon": None, "auc": r["auc"]})
                for eps in args.epsilons:
                    r = federated_auc(spec, datasets, Path(tmp) / f"dp{eps}", dp=True, epsilon=eps, rounds=args.rounds, **common)
                    rows.append({"partners": n, "split": split, "model": "federated DP", "epsilon": eps,
                                 "auc": r["auc"], "epsilon_spent": r["epsilon_spent"]})
            print(f"# {n} partners, {split}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    base = {(r["partners"], r["split"]): r["auc"] for r in rows if r["model"] == "centralised non-private"}
    print(f"\nUCI credit default, repayment {args.arch}, {args.rounds} rounds x 1 local epoch, batch {args.batch_size}, "
          f"delta 1e-5 ({date.today()}, {platform.machine()}, {os.cpu_count()} cores)\n")
    print(f"| partners | split | model | epsilon | AUC | AUC - centralised non-private |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        gap = r["auc"] - base[(r["partners"], r["split"])]
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:g}"
        print(f"| {r['partners']} | {r['split']} | {r['model']} | {eps} | {r['auc']:.3f} | {gap:+.3f} |")
    overhead = round_overhead(args.data_dir, 3, 3)
    print(f"\nsimulation engine, 3 partners: mean round wall {overhead['mean_round_wall_s']:.2f}s, sum of local "
          f"training {overhead['mean_sum_local_train_s']:.2f}s, ratio {overhead['ratio']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "round_overhead": overhead}, indent=2))


if __name__ == "__main__":
    main()
