"""Run a job on one machine: simulated partner homes + Flower's simulation engine.

Each virtual partner gets its own home (``<out>/partners/<name>`` unless ``--homes``
names a directory) with its own ``partner.toml``, ledger and data, so budgets
persist across jobs exactly as they would on a real node.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from fedcustomer.clients.app import FEDERATION_INDEX, make_client_app
from fedcustomer.data.provision import provision_partner
from fedcustomer.clients.home import DatasetBudget, PartnerHome
from fedcustomer.data.sources import load_partitions
from fedcustomer.errors import DataError, FedCustomerError, FederationError
from fedcustomer.models.features import FeatureSpec
from fedcustomer.server.app import RoundCallback, make_server_app
from fedcustomer.server.job import JobConfig

log = logging.getLogger(__name__)


def homes_dir(job: JobConfig) -> Path:
    return Path(job.homes) if job.homes else Path(job.out) / "partners"


def prepare_partners(job: JobConfig) -> tuple[FeatureSpec, list[PartnerHome]]:
    """Load and split the data, and give every simulated partner its home with its split."""
    spec, datasets = load_partitions(
        job.task, job.data, job.partners, split=job.split, seed=job.seed,
        data_dir=Path(job.data_dir) if job.data_dir else None, label=job.label,
    )
    root = homes_dir(job)
    root.mkdir(parents=True, exist_ok=True)
    homes: list[PartnerHome] = []
    for ds in datasets:
        if len(ds.train) == 0:
            raise DataError(f"partner {ds.name!r} has no training rows; use fewer partners or more data")
        home, _ = provision_partner(
            root / ds.name, ds.name, source=job.data, task=job.task, spec=spec, train=ds.train, test=ds.test,
            budget=DatasetBudget(job.epsilon, job.delta),
        )
        homes.append(home)
    index = root / FEDERATION_INDEX
    index.write_text(json.dumps({"partners": [h.root.name for h in homes]}, indent=2) + "\n", encoding="utf-8")
    return spec, homes


def run_simulated_job(job: JobConfig, *, on_round: RoundCallback | None = None, resume: bool = False,
                      verbose: bool = False) -> dict[str, Any]:
    """Run ``job`` in Flower's simulation engine; returns the run's summary.json content."""
    from flwr.simulation import run_simulation

    spec, homes = prepare_partners(job)
    errors: list[BaseException] = []
    server_app = make_server_app(job, spec, num_partners=len(homes), on_round=on_round, resume=resume, errors=errors)
    client_app = make_client_app([str(h.root.resolve()) for h in homes])
    _quiet_flower(verbose)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(homes),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": max(1, min(len(homes), os.cpu_count() or 1)), "log_to_driver": verbose,
                              "include_dashboard": False},
            },
            verbose_logging=verbose,
        )
    except Exception as exc:
        if errors and isinstance(errors[0], FedCustomerError):
            raise errors[0] from None
        raise FederationError(f"the simulation engine stopped: {exc}") from exc
    if errors:
        if isinstance(errors[0], FedCustomerError):
            raise errors[0]
        raise FederationError(f"the coordinator failed: {type(errors[0]).__name__}: {errors[0]}") from errors[0]
    summary_path = Path(job.out) / "summary.json"
    if not summary_path.exists():
        raise FederationError("the job ended without writing summary.json; see the log above")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _quiet_flower(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
