"""Run a job on one machine: simulated partner homes + Flower's simulation engine.

Each virtual partner gets its own home (``<out>/partners/<name>`` unless ``--homes``
names a directory) with its own ``partner.toml``, ledger and data, so budgets
persist across jobs exactly as they would on a real node.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcustomer.clients.app import FEDERATION_INDEX, make_client_app
from fedcustomer.clients.home import DatasetBudget, PartnerHome
from fedcustomer.data.placement import PlacementRegistry
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.schema import ROW_ID_FIELD
from fedcustomer.data.sources import load_partitions
from fedcustomer.errors import BudgetExhausted, DataError, FedCustomerError, FederationError
from fedcustomer.models.features import FeatureSpec
from fedcustomer.privacy.ledger import BudgetLedger
from fedcustomer.server.app import RoundCallback, make_server_app
from fedcustomer.server.job import JobConfig

log = logging.getLogger(__name__)


def homes_dir(job: JobConfig) -> Path:
    return Path(job.homes) if job.homes else Path(job.out) / "partners"


def prepare_partners(
    job: JobConfig, notices: list[str] | None = None
) -> tuple[FeatureSpec, list[PartnerHome]]:
    """Load and split the data, and give every simulated partner its home with its split.

    The split of a homes directory is fixed at its first provisioning
    (:mod:`fedcustomer.data.placement`); what differs from the job's options is appended
    to ``notices``, as is a partner budget that differs from ``--epsilon``/``--delta``.
    """
    notices = notices if notices is not None else []
    declared = FeatureSpec.load(job.feature_spec) if job.feature_spec else None
    if uses_existing_homes(job):
        from fedcustomer.server.existing import existing_homes

        spec, homes = existing_homes(job, declared)
        _write_index(homes_dir(job), homes)
        return spec, homes
    spec, datasets = load_partitions(
        job.task,
        job.data,
        job.partners,
        split=job.split,
        seed=job.seed,
        data_dir=Path(job.data_dir) if job.data_dir else None,
        label=job.label,
        notices=notices,
        spec=declared,
    )
    root = homes_dir(job)
    root.mkdir(parents=True, exist_ok=True)
    registry = PlacementRegistry(root)
    if spec.id_column is None:
        datasets = registry.with_row_ids(datasets)
        spec = replace(spec, id_column=ROW_ID_FIELD)
        notices.append(
            "the data has no customer id column (customer_id, id or ID): each row is taken as one "
            "customer, identified by a keyed digest of its values (a reordered copy of the file finds "
            "the same customers)"
        )
    layout = {"partners": str(job.partners), "split": job.split, "seed": str(job.seed), "data": job.data}
    placed = registry.apply(datasets, spec.id_column, layout)
    notices.extend(placed.notices)
    homes: list[PartnerHome] = []
    for ds in placed.datasets:
        if len(ds.train) == 0:
            raise DataError(f"partner {ds.name!r} has no training rows; use fewer partners or more data")
        home, _ = provision_partner(
            root / ds.name,
            ds.name,
            source=job.data,
            task=job.task,
            spec=spec,
            train=ds.train,
            test=ds.test,
            budget=DatasetBudget(job.epsilon, job.delta),
            notices=notices,
        )
        homes.append(home)
    _write_index(root, homes)
    return spec, homes


def uses_existing_homes(job: JobConfig) -> bool:
    """``--data NAME --homes DIR`` with NAME neither built-in nor a file: the homes' own dataset NAME."""
    from fedcustomer.data.sources import SOURCES, TABLE_SUFFIXES

    looks_like_a_file = (
        Path(job.data).suffix.lower() in TABLE_SUFFIXES or "/" in job.data or os.sep in job.data
    )
    return (
        job.homes is not None
        and job.data not in SOURCES
        and not looks_like_a_file
        and not Path(job.data).exists()
    )


def _write_index(root: Path, homes: list[PartnerHome]) -> None:
    """The simulation index: partition id -> home (read by ``flwr run`` client apps)."""
    index = root / FEDERATION_INDEX
    index.write_text(
        json.dumps({"partners": [h.root.name for h in homes]}, indent=2) + "\n", encoding="utf-8"
    )


def run_simulated_job(
    job: JobConfig,
    *,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    verbose: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``job`` in Flower's simulation engine; returns the run's summary.json content.

    Notices (a partner budget that is not ``--epsilon``, budgets already spent by earlier
    jobs, a split kept from the homes' first provisioning, a guessed label) go to
    ``on_notice`` before training starts and into summary.json. A job whose partners have
    no budget left is refused before anything runs.
    """
    from flwr.simulation import run_simulation

    notices: list[str] = []
    spec, homes = prepare_partners(job, notices)
    if job.dp:
        notices.extend(check_budgets(homes, job))
    for notice in notices:
        if on_notice is not None:
            on_notice(notice)
    errors: list[BaseException] = []
    server_app = make_server_app(
        job, spec, num_partners=len(homes), on_round=on_round, resume=resume, errors=errors, notices=notices
    )
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
                "init_args": {
                    "num_cpus": max(1, min(len(homes), os.cpu_count() or 1)),
                    "log_to_driver": verbose,
                    "include_dashboard": False,
                },
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
        raise FederationError(f"the coordinator failed: {type(errors[0]).__name__}: {errors[0]}") from errors[
            0
        ]
    summary_path = Path(job.out) / "summary.json"
    if not summary_path.exists():
        raise FederationError("the job ended without writing summary.json; see the log above")
    return json.loads(summary_path.read_text(encoding="utf-8"))


# A partner with less than this share of its target left cannot train anything useful.
EXHAUSTED_SHARE = 0.01


def check_budgets(homes: list[PartnerHome], job: JobConfig) -> list[str]:
    """Say up front what earlier releases left of each partner's budget; refuse a job nobody can pay for."""
    notices, exhausted = [], []
    for home in homes:
        config = home.config()
        budget = config.budget_for(job.dataset_name)
        spent = BudgetLedger(home.ledger_path, job.dataset_name, budget).spent()
        if spent.epsilon <= 0:
            continue
        if spent.epsilon_remaining <= EXHAUSTED_SHARE * budget.epsilon:
            exhausted.append(f"{config.name} ({spent.epsilon:.3f} of {budget.epsilon:g})")
        else:
            notices.append(
                f"partner {config.name!r} has already spent epsilon {spent.epsilon:.3f} of {budget.epsilon:g} "
                f"on its customers in earlier jobs; this job can use the {spent.epsilon_remaining:.3f} left"
            )
    if exhausted and len(exhausted) > len(homes) - job.min_partners:
        raise BudgetExhausted(
            f"the privacy budget is spent at {', '.join(exhausted)}, so fewer than --min-partners "
            f"({job.min_partners}) partners could train; nothing was run. Earlier jobs on the homes in "
            f"{homes_dir(job)} used it: use a new --homes (or --out) directory for new customers, or ask the "
            "partners for more budget"
        )
    notices.extend(f"partner {name} has no budget left and will refuse every round" for name in exhausted)
    return notices


def _quiet_flower(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
