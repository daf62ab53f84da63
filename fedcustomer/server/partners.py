"""Run a job on one machine: simulated partner homes + Flower's simulation engine.

Each virtual partner gets its own home (``<out>/partners/<name>`` unless ``--homes``
names a directory) with its own ``partner.toml``, ledger and data, so budgets
persist across jobs exactly as they would on a real node.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.placement import PlacementRegistry
from fedcustomer.data.provision import provision_partner, shared_schema
from fedcustomer.data.schema import ROW_ID_FIELD, Schema
from fedcustomer.data.sources import load_partitions
from fedcustomer.errors import BudgetExhausted, ConfigError, DataError
from fedcustomer.partner.federation import write_index
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.deployment import load_declared_spec
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
    declared = load_declared_spec(job.feature_spec) if job.feature_spec else None
    if uses_existing_homes(job):
        from fedcustomer.server.existing import existing_homes

        spec, homes = existing_homes(job, declared, notices)
        write_index(homes_dir(job), homes)
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
    _refuse_other_homes(root, [d.name for d in datasets], job)
    root.mkdir(parents=True, exist_ok=True)
    registry = PlacementRegistry(root)
    if spec.id_column is None:
        datasets = registry.with_row_ids(datasets)
        spec = replace(spec, id_column=ROW_ID_FIELD)
        notices.append(
            "the data has no customer id column (customer_id, customerID, client_id, id, ...): each row is taken as one "
            "customer, identified by a keyed digest of its values (a reordered copy of the file finds "
            "the same customers)"
        )
    layout = {"partners": str(job.partners), "split": job.split, "seed": str(job.seed), "data": job.data}
    placed = registry.apply(datasets, spec.id_column, layout)
    notices.extend(placed.notices)
    for ds in placed.datasets:
        if len(ds.train) == 0:
            raise DataError(f"partner {ds.name!r} has no training rows; use fewer partners or more data")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        schema = shared_schema(
            job.data, job.task, spec, [(d.train, d.test) for d in placed.datasets], Path(tmp)
        )
    budget = DatasetBudget(job.epsilon, job.delta)
    work = [
        _Home(root / ds.name, ds.name, job.data, job.task, ds.train, ds.test, budget)
        for ds in placed.datasets
    ]
    homes: list[PartnerHome] = []
    for home, told in _provision_all(work, spec, schema):
        homes.append(home)
        notices.extend(told)
    write_index(root, homes)
    return spec, homes


def _refuse_other_homes(root: Path, names: list[str], job: JobConfig) -> None:
    """Refuse before writing anything when ``root`` holds partner homes this job would not provision.

    A simulated job provisions its partners (``bank_1``...) in ``--homes``; homes of other names
    there (made by ``init`` or ``node prepare``, or by a job over another source) would be left
    untouched while the job trained on new homes beside them, which is never what was meant.
    """
    if not root.is_dir():
        return
    others = sorted(p.name for p in root.iterdir() if (p / "partner.toml").is_file() and p.name not in names)
    if others:
        raise ConfigError(
            f"--homes {root} holds partner homes this job did not make ({', '.join(others)}); "
            f"`--data {job.data}` provisions its own simulated partners ({', '.join(names)}) and would train on "
            "them instead. To train on the data those homes hold, pass its dataset name as --data with "
            "--feature-spec FILE (README, `--data`); to simulate from this source, give another --homes directory"
        )


# Simulated homes provisioned per worker task, and the fewest homes worth a process pool
# (a worker spends a second or two importing before its first home).
_HOMES_PER_TASK = 25
POOL_FROM_HOMES = 100
PROVISION_WORKERS_ENV = "FEDCUSTOMER_PROVISION_WORKERS"


@dataclass(frozen=True)
class _Home:
    """One simulated partner to provision: where, who, and its rows."""

    root: Path
    name: str
    source: str
    task: str
    train: pd.DataFrame
    test: pd.DataFrame
    budget: DatasetBudget


def provision_workers(homes: int) -> int:
    """Processes that provision ``homes`` homes: ``$FEDCUSTOMER_PROVISION_WORKERS``, else one per core
    for a federation of at least POOL_FROM_HOMES homes, else 1 (this process)."""
    raw = os.environ.get(PROVISION_WORKERS_ENV)
    if raw:
        try:
            workers = int(raw)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigError(f"{PROVISION_WORKERS_ENV} must be a whole number >= 1, got {raw!r}")
        return min(workers, max(1, homes))
    return min(os.cpu_count() or 1, 8) if homes >= POOL_FROM_HOMES else 1


def _provision_all(
    work: list[_Home], spec: FeatureSpec, schema: Schema | None
) -> Iterator[tuple[PartnerHome, list[str]]]:
    """Each home with its notices, in order; in worker processes when there are many.

    Every home is made by :func:`provision_partner` with its own keys from ``os.urandom``
    (in whichever process makes it); a pool changes only where that runs. A failure stops
    the job as in one process: homes already made stay as they are, complete.
    """
    workers = provision_workers(len(work))
    size = max(1, min(_HOMES_PER_TASK, -(-len(work) // workers)))
    tasks = [work[i : i + size] for i in range(0, len(work), size)]
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield from _provision_some(task, spec, schema)
        return
    context = multiprocessing.get_context("forkserver")  # safe inside threaded (torch, Flower) processes
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        try:
            for made in pool.map(_provision_some, tasks, [spec] * len(tasks), [schema] * len(tasks)):
                yield from made
        except BrokenProcessPool:
            pool.shutdown(wait=True, cancel_futures=True)
            raise ConfigError(
                "a worker process provisioning partner homes stopped abruptly (killed, out of memory, or "
                "started from a script without an `if __name__ == '__main__':` guard); homes already made "
                f"are kept. Set {PROVISION_WORKERS_ENV}=1 to provision in this process"
            ) from None
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running tasks finish their homes first
            raise


def _provision_some(
    work: list[_Home], spec: FeatureSpec, schema: Schema | None
) -> list[tuple[PartnerHome, list[str]]]:
    made = []
    for item in work:
        told: list[str] = []
        home, _ = provision_partner(
            item.root,
            item.name,
            source=item.source,
            task=item.task,
            spec=spec,
            train=item.train,
            test=item.test,
            budget=item.budget,
            notices=told,
            schema=schema,
        )
        made.append((home, told))
    return made


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


# A partner with less than this share of its target left cannot train anything useful.
EXHAUSTED_SHARE = 0.01


def check_budgets(homes: list[PartnerHome], job: JobConfig) -> list[str]:
    """Say up front what earlier releases left of each partner's budget; refuse a job nobody can pay for."""
    notices, exhausted = [], []
    for home in homes:
        config = home.config()
        budget = config.budget_for(job.dataset_name)
        spent = home.ledger(job.dataset_name, budget).spent()
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
            f"{homes_dir(job)} used it: use a new --homes (or --out) directory only for customers not in these homes (the same customers "
            "ingested again elsewhere are still covered by this spent budget), or ask the partners for more budget"
        )
    notices.extend(f"partner {name} has no budget left and will refuse every round" for name in exhausted)
    return notices
