"""Vertical learning on UCI credit default split by columns: what the retailer's columns add.

The "bank" holds the card account (limit, repayment status pay_0..pay_6) and the label;
the "retailer" holds bill and payment amounts and demographics for a share of the same
customers. Held-out AUC on the same aligned test customers for:

  bank-only           the bank's columns alone (split-learning code, no passive party), DP
  vertical, non-DP    both parties' columns through split learning, no noise
  vertical, DP        both parties' columns, DP-SGD at each party, protected labels behind the
                      returned gradients (label_epsilon of the bank's epsilon), epsilon per party
  ..., no label DP    DP-SGD at each party only; returned gradients from the TRUE labels
  pooled, non-DP      both parties' columns in one place (a centralised MLP), for reference

Usage: python benchmarks/bench_vertical.py [DATA_DIR] [--epsilon 3] [--rounds 8] [--seeds 3] [--label-epsilon 1]
(defaults: the vertical job's own)
DATA_DIR defaults to $FEDCUSTOMER_DATA_DIR or ../shared/data relative to the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcustomer.models.metrics import classification_metrics
from fedcustomer.partner.home import PartnerHome
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.data import load_party_table, plan_parties, split_positions
from fedcustomer.vertical.job import DEFAULTS, VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.runner import drive, prepare_vertical, run_vertical_local


def pooled_auc(job: VerticalJob, homes: Path, epochs: int) -> float:
    """A centralised MLP on both parties' aligned columns (what pooling the data would give)."""
    active, passive = plan_parties(job)
    a = load_party_table(
        PartnerHome(homes / active.name), active.name, active.dataset, passive.name, active.spec, True
    )
    p = load_party_table(
        PartnerHome(homes / passive.name), passive.name, passive.dataset, active.name, passive.spec, False
    )
    X = torch.as_tensor(np.hstack([a.X, p.X]))
    y = torch.as_tensor(a.y)
    train, test = split_positions(len(X), job.test_fraction, job.seed)
    torch.manual_seed(job.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=job.lr)
    tr = torch.as_tensor(train)
    for _ in range(epochs):
        for idx in tr[torch.randperm(len(tr))].split(job.batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X[idx]).squeeze(-1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        scores = torch.sigmoid(model(X[torch.as_tensor(test)]).squeeze(-1)).numpy()
    return classification_metrics(y[torch.as_tensor(test)].numpy(), scores)["auc"]


def bank_only_world(job: VerticalJob) -> dict:
    """The label owner's own DP model as the only release about its customers (fresh homes)."""
    setup = prepare_vertical(job)
    active, passive = plan_parties(job)
    grid = LocalGrid(party_app([str(setup.active.root)]), num_nodes=1)
    result = drive(grid, job, active, None, peer_of_active=passive.name)
    eps = [r.epsilon[active.name] for r in result.rounds if active.name in r.epsilon]
    return {
        "metrics": result.final_metrics,
        "partners": [{"name": active.name, "epsilon_spent": eps[-1] if eps else 0.0}],
    }


def one_seed(args: argparse.Namespace, seed: int, tmp: str) -> tuple[dict[str, tuple[float, str]], dict]:
    """Every model of the table for one seed (data split and initial weights; DP noise is always fresh)."""
    common = dict(
        task="repayment",
        data="uci-credit",
        data_dir=args.data_dir,
        rounds=args.rounds,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
    )
    plain = run_vertical_local(VerticalJob(**common, dp=False, baseline=True, out=f"{tmp}/plain"))
    # Two counterfactual worlds, each spending the bank's whole budget on one model: the joint
    # model, and (on separate homes) the bank's own model. In the product one budget pays for both.
    dp = run_vertical_local(
        VerticalJob(
            **common,
            dp=True,
            epsilon=args.epsilon,
            label_epsilon=args.label_epsilon,
            baseline=False,
            out=f"{tmp}/dp",
        )
    )
    dp["baseline"] = bank_only_world(
        VerticalJob(**common, dp=True, epsilon=args.epsilon, baseline=False, out=f"{tmp}/dp-bank-only")
    )
    no_label = run_vertical_local(
        VerticalJob(
            **common, dp=True, epsilon=args.epsilon, label_dp=False, baseline=False, out=f"{tmp}/dp-no-label"
        )
    )
    pooled = pooled_auc(
        VerticalJob(**common, out=f"{tmp}/plain"), Path(tmp) / "plain" / "partners", args.rounds
    )

    def spent(summary: dict) -> str:
        return " / ".join(f"{p['name']} {p['epsilon_spent']:.2f}" for p in summary["partners"])

    rows = {
        "bank-only, non-DP": (plain["baseline"]["metrics"]["auc"], "-"),
        f"bank-only, DP eps={args.epsilon:g}": (dp["baseline"]["metrics"]["auc"], spent(dp["baseline"])),
        "vertical, non-DP": (plain["metrics"]["auc"], "-"),
        f"vertical, DP eps={args.epsilon:g}": (dp["metrics"]["auc"], spent(dp)),
        f"vertical, DP eps={args.epsilon:g}, no label DP": (no_label["metrics"]["auc"], spent(no_label)),
        "pooled (centralised), non-DP": (pooled, "-"),
    }
    return rows, dp


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "data_dir",
        nargs="?",
        default=os.environ.get("FEDCUSTOMER_DATA_DIR", str(ROOT.parent / "shared" / "data")),
    )
    parser.add_argument("--epsilon", type=float, default=DEFAULTS["epsilon"])
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (data split, initial weights)")
    parser.add_argument("--label-epsilon", type=float, default=DEFAULTS["label_epsilon"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_seed: list[dict[str, tuple[float, str]]] = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            rows, dp = one_seed(args, seed, tmp)
        per_seed.append(rows)
        print(f"seed {seed}: " + ", ".join(f"{k} {v[0]:.4f}" for k, v in rows.items()), flush=True)
    print(
        f"UCI credit default, split by columns; PSI size {dp['psi_size']}, aligned train {dp['aligned_train']}, "
        f"test {dp['aligned_test']}; {args.rounds} rounds, batch {args.batch_size}, lr {args.lr}, "
        f"label epsilon {args.label_epsilon:g}; {args.seeds} seeds in {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'model':40s} {'test AUC (mean +- sd)':>22s}  epsilon spent (last seed)")
    for name in per_seed[0]:
        aucs = np.array([r[name][0] for r in per_seed])
        print(
            f"{name:40s} {aucs.mean():10.4f} +- {aucs.std(ddof=1) if len(aucs) > 1 else 0.0:.4f}  {per_seed[-1][name][1]}"
        )
    gap = np.array(
        [
            r[f"vertical, DP eps={args.epsilon:g}"][0] - r[f"bank-only, DP eps={args.epsilon:g}"][0]
            for r in per_seed
        ]
    )
    upper = np.array(
        [r["pooled (centralised), non-DP"][0] - r[f"vertical, DP eps={args.epsilon:g}"][0] for r in per_seed]
    )
    print(
        f"vertical DP - bank-only DP: {gap.mean():+.4f} (per seed {', '.join(f'{g:+.4f}' for g in gap)}); "
        f"pooled upper bound - vertical DP: {upper.mean():+.4f}"
    )
    acc = next(p for p in dp["partners"] if p["role"] == "active")["accounting"]
    passive_sigma = next(p for p in dp["partners"] if p["role"] == "passive")["accounting"][
        "noise_multiplier"
    ]
    print(
        f"last seed: label owner noise multiplier {acc['noise_multiplier']:.2f}, label release {acc['label_dp']}, "
        f"passive noise multiplier {passive_sigma:.2f}"
    )


if __name__ == "__main__":
    main()
