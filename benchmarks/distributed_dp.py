"""Distributed DP-SGD under SecAgg+ for bench_federated.py: the same step, without the per-round protocol cost.

A distributed job runs one DP-SGD step per round, so matching centralised DP-SGD takes hundreds
of rounds; on the in-process grid each SecAgg+ round also re-reads every partner's store and runs
the key agreement (seconds per round on this machine). For accuracy figures this module runs the
step as the partners and the coordinator compute it, with the same functions
(``privacy/dp/distributed.py``: Poisson sample, clipped sum, noise share; Flower's SecAgg+
quantisation of each partner's vector; the integer sum modulo 2**32; the coordinator's step) but
without masking, which cancels exactly. :func:`time_secagg_rounds` runs the real protocol (a few
rounds, for its round time).
"""

from __future__ import annotations

import io
import sqlite3
import time
from typing import Any

import numpy as np
import torch

from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.privacy.dp import distributed as dd

SGD_MOMENTUM = 0.9  # the coordinator's optimizer, as centralised DP-SGD's


def _coarse(n: int) -> int:
    return max(dd.COUNT_UNIT, int(round(n / dd.COUNT_UNIT)) * dd.COUNT_UNIT)


def secure_sum(vectors: list[list[np.ndarray]], clip_range: float, levels: int) -> list[np.ndarray]:
    """What SecAgg+ unmasks: each vector clipped and quantised, the integers summed mod 2**32, dequantised."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    quantised = [quantize(v, clip_range, levels) for v in vectors]
    totals = [
        np.mod(sum(q[i].astype(np.int64) for q in quantised), dd.MODULUS) for i in range(len(vectors[0]))
    ]
    offset = (len(vectors) - 1) * clip_range
    return [a - offset for a in dequantize(totals, clip_range, levels)]


def run_distributed(
    spec: Any,
    datasets: list[Any],
    X_test: Any,
    y_test: Any,
    *,
    passes: int,
    batch_size: int,
    lr: float,
    max_grad_norm: float,
    epsilon: float,
    delta: float,
    seed: int,
    task: str = "repayment",
    optimizer: str = "sgd",
    accountant: str = "rdp",
) -> dict[str, Any]:
    """One distributed job: ``passes * int(1/q)`` rounds of one step, q = expected union batch / rows.

    ``accountant`` (rdp or pld) calibrates sigma and reports both guarantees, as the job's
    ``distributed_accountant`` does.
    """
    acc = dd.job_accountant(accountant)
    parts = [spec.transform(d.train) for d in datasets]
    data = [(torch.as_tensor(X), torch.as_tensor(y)) for X, y in parts]
    total = sum(len(X) for X, _ in data)
    q = min(1.0, batch_size / total)
    rounds = int(1 / q) * passes
    n = len(data)
    sigma = dd.calibrate_sigma(q, rounds, epsilon, delta, sigma_max=100.0, accountant=acc, contributions=n)
    step = dd.DistributedStep(sigma, q, max_grad_norm, n, trust_secagg=True, shares=n)
    model = build_model(task, "mlp", spec.input_dim, seed=seed)
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM)
    )
    coordinates = sum(p.numel() for p in model.parameters())
    clip_range = dd.CLIP_RANGE_UNITS * max_grad_norm
    assert all(dd.required_clip_range(step, len(X), coordinates) <= clip_range for X, _ in data)
    levels = dd.quantization_levels(n)
    generator = torch.Generator().manual_seed(seed * 7919 + 1)  # benchmark: seeded noise
    loss = loss_for(task)
    started = time.perf_counter()
    for _ in range(rounds):
        vectors = []
        for X, y in data:
            partner = build_model(task, "mlp", spec.input_dim)
            partner.load_state_dict(model.state_dict())
            sums, _ = dd.clipped_gradient_sum(partner, loss, X, y, step, generator)
            noised = dd.add_noise_share(sums, step, generator)
            vectors.append([t.numpy() for t in noised] + [np.array([_coarse(len(X)) / dd.COUNT_UNIT])])
        summed = secure_sum(vectors, clip_range, levels)
        rows = round(float(summed[-1][0])) * dd.COUNT_UNIT
        dd.apply_step(model, opt, [torch.as_tensor(a) for a in summed[:-1]], dd.expected_batch(q, rows))
    wall = time.perf_counter() - started
    eps_a, eps_b = dd.run_epsilons(step, rounds, delta, acc)
    return {
        "auc": float(evaluate(model, X_test, y_test, task)["auc"]),
        "rounds": rounds,
        "sample_rate": q,
        "noise_multiplier": sigma,
        "epsilon_coordinator": eps_a,
        "epsilon_single_update": eps_b,
        "accountant": acc.name,
        "wall_s": wall,
    }


def time_secagg_rounds(
    spec: Any, datasets: list[Any], workdir: Any, *, rounds: int, recipe: Any, epsilon: float, delta: float
) -> dict[str, Any]:
    """The real protocol for a few rounds: partners' encrypted stores, Flower's SecAgg+ workflow, in-process grid."""
    from pathlib import Path

    from flwr.app import Context, RecordDict

    from fedcustomer.apps.secagg import make_secagg_client_app, run_secagg_job
    from fedcustomer.data.provision import provision_partner
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.server.inprocess import SecAggLocalGrid
    from fedcustomer.server.job import JobConfig

    homes = []
    for d in datasets:
        root = Path(workdir) / d.name
        provision_partner(
            root, d.name, source="uci-credit", task="repayment", spec=spec, train=d.train, test=d.test,
            budget=DatasetBudget(epsilon, delta),
        )  # fmt: skip
        home = PartnerHome(root)
        config = home.config()
        config.secagg_trust = True
        home.write_config(config)
        homes.append(str(root))
    total = sum(len(d.train) for d in datasets)
    job = JobConfig(
        data="uci-credit", task="repayment", partners=len(homes), min_partners=len(homes), rounds=rounds,
        dp_mode="distributed", sample_rate=min(1.0, recipe.batch_size / total), lr=recipe.lr,
        max_grad_norm=recipe.max_grad_norm, max_noise_multiplier=100.0, epsilon=epsilon, delta=delta,
        out=str(Path(workdir) / "run"), federated_eval="none",
    )  # fmt: skip
    run_config = {k: v for k, v in job.to_dict().items() if v is not None} | {"wait-for-partners": 0.0}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    started = time.perf_counter()
    summary = run_secagg_job(SecAggLocalGrid(make_secagg_client_app(homes), len(homes)), context)
    wall = time.perf_counter() - started
    train = 0.0  # the partners' own time for their share of the step (kept with their released updates)
    for home in homes:  # each update is kept in its charge's ledger row
        with sqlite3.connect(PartnerHome(home).ledger_path) as conn:
            rows = conn.execute(
                "SELECT k.data FROM kept_results k JOIN charges c USING (charge_key) WHERE c.run_id = ?",
                (job.run_id,),
            ).fetchall()
        for (data,) in rows:
            train += float(torch.load(io.BytesIO(data), weights_only=True)["metrics"]["train-seconds"])
    done = max(1, summary["rounds_completed"])
    walls = summary["round_wall_time_s"]  # the rounds alone: no partner set-up, calibration or final report
    return {
        "engine": "in-process grid, SecAgg+, distributed DP",
        "partners": len(homes),
        "rounds_timed": summary["rounds_completed"],
        "mean_round_wall_s": sum(walls) / max(1, len(walls)),
        "mean_round_wall_after_first_s": sum(walls[1:]) / max(1, len(walls) - 1) if len(walls) > 1 else None,
        "job_wall_s": wall,
        "mean_sum_local_train_s": train / done,
        "ratio": sum(walls) / max(train, 1e-9),
    }


def run_family(
    add: Any, spec: Any, datasets: list[Any], recipe: Any, args: Any, seeds: list[int], delta: float
) -> None:
    """bench_federated's "dist-dp" rows (one per epsilon), then the real protocol's round time once."""
    import tempfile

    from fedcustomer.models.baseline import pooled

    X_test, y_test = spec.transform(pooled(datasets)[1])
    kw = dict(
        passes=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        max_grad_norm=recipe.max_grad_norm,
        accountant=getattr(args, "distributed_accountant", "rdp"),
    )
    for eps in args.epsilons:
        add(
            "dist-dp",
            eps,
            [
                run_distributed(spec, datasets, X_test, y_test, **kw, epsilon=eps, delta=delta, seed=s)
                for s in seeds
            ],
        )
    if args.secagg_rounds and not args.secagg_timed:
        with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
            args.secagg_timed = time_secagg_rounds(
                spec, datasets, tmp, rounds=args.secagg_rounds, recipe=recipe, epsilon=3.0, delta=delta
            )


def print_target(by: dict[Any, Any], cells: list[Any], epsilon: float, fmt: Any) -> None:
    """The issue's target for the distributed mode, beside centralised DP-SGD of the same cell."""
    print(f"\nTarget: distributed DP (epsilon {epsilon:g}) >= 0.764 (3 IID) / 0.765 (10 non-IID):")
    for n, s in cells:
        r = by.get((n, s, "dist-dp", epsilon))
        if r and r["auc_mean"] is not None:
            central = fmt(by.get((n, s, "central-dp", epsilon)))
            print(f"  {n} partners, {s}: {fmt(r)}, beside centralised DP-SGD {central}")
