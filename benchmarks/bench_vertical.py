"""Vertical learning on UCI credit default split by columns: what the retailer's columns add.

The "bank" holds the card account (limit, repayment status pay_0..pay_6) and the label;
the "retailer" holds bill and payment amounts and demographics for a share of the same
customers. Held-out AUC on the same aligned test customers for:

  bank-only           the bank's columns alone (split-learning code, no passive party), DP
  vertical, non-DP    both parties' columns through split learning, no noise
  vertical, DP        both parties' columns, DP-SGD at each party + label DP, epsilon per party
  ..., no label DP    DP-SGD at each party only; returned gradients NOT label-protected
  pooled, non-DP      both parties' columns in one place (a centralised MLP), for reference

Usage: python benchmarks/bench_vertical.py [DATA_DIR] [--epsilon 3] [--rounds 5]
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

from fedcustomer.clients.home import PartnerHome  # noqa: E402
from fedcustomer.models.metrics import classification_metrics  # noqa: E402
from fedcustomer.vertical.data import load_party_table, plan_parties, split_positions  # noqa: E402
from fedcustomer.vertical.job import VerticalJob  # noqa: E402
from fedcustomer.vertical.runner import run_vertical_local  # noqa: E402


def pooled_auc(job: VerticalJob, homes: Path, epochs: int) -> float:
    """A centralised MLP on both parties' aligned columns (what pooling the data would give)."""
    active, passive = plan_parties(job)
    a = load_party_table(PartnerHome(homes / active.name), active.name, active.dataset, passive.name, active.spec, True)
    p = load_party_table(PartnerHome(homes / passive.name), passive.name, passive.dataset, active.name, passive.spec, False)
    X = torch.as_tensor(np.hstack([a.X, p.X]))
    y = torch.as_tensor(a.y)
    train, test = split_positions(len(X), job.test_fraction, job.seed)
    torch.manual_seed(job.seed)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 1))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default=os.environ.get("FEDCUSTOMER_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(task="repayment", data="uci-credit", data_dir=args.data_dir, rounds=args.rounds,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        t0 = time.perf_counter()
        plain = run_vertical_local(VerticalJob(**common, dp=False, baseline=True, out=f"{tmp}/plain"))
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        dp = run_vertical_local(VerticalJob(**common, dp=True, epsilon=args.epsilon, baseline=True, out=f"{tmp}/dp"))
        t_dp = time.perf_counter() - t0
        no_label = run_vertical_local(VerticalJob(**common, dp=True, epsilon=args.epsilon, label_dp=False,
                                                  baseline=False, out=f"{tmp}/dp-no-label"))
        pooled = pooled_auc(VerticalJob(**common, out=f"{tmp}/plain"), Path(tmp) / "plain" / "partners", args.rounds)
        eps = {p["name"]: p["epsilon_spent"] for p in dp["partners"]}
        rows = [
            ("bank-only, non-DP", plain["baseline"]["metrics"].get("auc"), "-"),
            (f"bank-only, DP eps={args.epsilon:g}", dp["baseline"]["metrics"].get("auc"),
             f"{dp['baseline']['partners'][0]['epsilon_spent']:.2f}"),
            ("vertical, non-DP", plain["metrics"].get("auc"), "-"),
            (f"vertical, DP eps={args.epsilon:g}", dp["metrics"].get("auc"),
             " / ".join(f"{k} {v:.2f}" for k, v in eps.items())),
            (f"vertical, DP eps={args.epsilon:g}, no label DP", no_label["metrics"].get("auc"),
             " / ".join(f"{p['name']} {p['epsilon_spent']:.2f}" for p in no_label["partners"])),
            ("pooled (centralised), non-DP", pooled, "-"),
        ]
        print(f"UCI credit default, split by columns; PSI size {plain['psi_size']}, aligned train "
              f"{plain['aligned_train']}, test {plain['aligned_test']}; {args.rounds} rounds, batch {args.batch_size}")
        print(f"{'model':34s} {'test AUC':>9s}  epsilon spent")
        for name, auc, e in rows:
            print(f"{name:34s} {auc:9.4f}  {e}")
        print(f"wall time: non-DP job (+baseline) {t_plain:.1f} s, DP job (+baseline) {t_dp:.1f} s")
        acc = next(p for p in dp["partners"] if p["role"] == "active")["accounting"]
        print(f"label owner noise multiplier {acc['noise_multiplier']:.2f}, label-DP use cap {acc['label_dp']['use_cap']}, "
              f"passive noise multiplier {next(p for p in dp['partners'] if p['role'] == 'passive')['accounting']['noise_multiplier']:.2f}")


if __name__ == "__main__":
    main()
