"""Federated jobs of bench_federated.py: a (partners, split) cell's partners, provisioned once.

Every federated figure (the accuracy table and the round-overhead timing) runs its jobs through
:class:`FederatedCell`, so both measure the same provisioned homes and the same job settings.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from federated_recipes import DELTA, SOURCE, TASK, Recipe

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.partition import PartnerDataset, split_train_test
from fedcustomer.data.provision import provision_partner
from fedcustomer.models.baseline import pooled
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model
from fedcustomer.partner.datasets import dataset_name
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid

VALIDATION_FRACTION = 0.2


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
        os.sync()  # the copies on disk before the job: its fsyncs must not wait on the benchmark's own writes
        return homes

    def run(self, recipe: Recipe, *, dp: bool, epsilon: float, seed: int) -> dict[str, Any]:
        n = len(self.datasets)
        homes = self.homes(epsilon)
        out = Path(homes[0]).parent / "run"
        job = JobConfig(
            data=SOURCE,
            task=TASK,
            partners=n,
            **recipe.job_fields(),
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
