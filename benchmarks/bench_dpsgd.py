"""DP-SGD epoch time against the non-private epoch, per clipping implementation.

Usage: python benchmarks/bench_dpsgd.py [--rows 24000] [--epochs 3] [--json out.json]

Random data of the UCI credit-default shape (23 numeric features, binary label), so no
data file is needed. One torch thread. For each model it times non-private training,
Opacus per-sample hooks, Opacus ghost clipping and our fast clipping (all DP modes with
the geometric Poisson sampler), fast clipping with its noise drawn on the training thread
(``fast`` draws the next block on a helper thread when a second core is free, as a
partner's trainer does by default) and fast clipping with Opacus's stock sampler, and
prints the median epoch time and its ratio to the non-private median measured in the same
run, in wall time and in the CPU time of the whole process, helper thread included (the
latter is what the code costs when other processes share the cores).
Modes are interleaved epoch by epoch so background load hits them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from fedcustomer.models.repayment import LogisticRegression, RepaymentMLP
from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer

FEATURES = 23
MODES = ("non-private", "opacus-hooks", "opacus-ghost", "fast", "fast/noise-inline", "fast/opacus-sampler")


def make_data(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, FEATURES, generator=gen)
    w = torch.randn(FEATURES, generator=gen)
    y = (torch.rand(rows, generator=gen) < torch.sigmoid(X @ w)).float()
    return X, y


def make_trainer(mode: str, arch: str, X: torch.Tensor, y: torch.Tensor, batch: int):
    torch.manual_seed(0)
    model = RepaymentMLP(FEATURES, hidden=(64, 32)) if arch == "mlp" else LogisticRegression(FEATURES)
    common = dict(batch_size=batch, lr=0.05)
    if mode == "non-private":
        return PlainTrainer(model, X, y, nn.BCEWithLogitsLoss(), seed=0, **common)
    clipping = mode.split("/")[0].removeprefix("opacus-")
    sampler = "opacus" if mode.endswith("opacus-sampler") else "geometric"
    # "fast" draws its noise ahead on the second core when there is one (the default);
    # "fast/noise-inline" draws it on the training thread, as every other mode does.
    return DPTrainer(
        model,
        X,
        y,
        nn.BCEWithLogitsLoss(),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        clipping=clipping,
        sampler=sampler,
        noise_ahead=False if mode == "fast/noise-inline" else None,
        **common,
    )


def bench(arch: str, rows: int, epochs: int, batch: int) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds per epoch of each mode."""
    X, y = make_data(rows)
    trainers = {m: make_trainer(m, arch, X, y, batch) for m in MODES}
    for t in trainers.values():  # warm-up epoch (allocator, lazy init)
        t.train_epoch()
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(epochs):
        for m, t in trainers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            t.train_epoch()  # returns after the noise helper's last draw of the epoch
            cpu[m].append(time.process_time() - start_cpu)
            wall[m].append(time.perf_counter() - start)
    return {m: (statistics.median(wall[m]), statistics.median(cpu[m])) for m in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=24000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for arch in ("mlp", "logreg"):
        medians = bench(arch, args.rows, args.epochs, args.batch)
        base, base_cpu = medians["non-private"]
        results[arch] = {
            m: {"epoch_s": t, "ratio": t / base, "cpu_s": c, "cpu_ratio": c / base_cpu}
            for m, (t, c) in medians.items()
        }
        print(f"{arch}: rows={args.rows} batch={args.batch} median of {args.epochs} epochs, 1 thread")
        for m, (t, c) in medians.items():
            print(
                f"  {m:<20} {t * 1000:8.1f} ms/epoch  {t / base:5.2f}x   cpu {c * 1000:8.1f} ms  {c / base_cpu:5.2f}x"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"rows": args.rows, "batch": args.batch, "epochs": args.epochs, "results": results},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
