"""Simulating a job over partner homes that already hold their data (``run --homes DIR --data NAME``).

The homes were set up as real partners are (``init``, ``budget set``, ``ingest``); the
simulation only stands in for the network. Nothing is provisioned, split or inferred:
the job reads dataset NAME through each home's governed store, with the feature spec
the user declared, and each partner's held-out rows are the ones it chose itself.
"""

from __future__ import annotations

from pathlib import Path

from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.store import dataset_schema
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.home import PartnerHome, kept_budget_notice
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.job import JobConfig


def existing_homes(
    job: JobConfig, spec: FeatureSpec | None, notices: list[str] | None = None
) -> tuple[FeatureSpec, list[PartnerHome]]:
    """The homes in ``job.homes`` holding ``job.dataset_name``, checked against the declared ``spec``.

    Each home keeps the budget its people set; where it differs from the job's ``--epsilon`` /
    ``--delta`` a notice is appended to ``notices`` (the job never changes a partner's budget).
    """
    root = Path(str(job.homes))
    dataset = job.dataset_name
    if not root.is_dir():
        raise DataError(f"--homes {root} is not a directory of partner homes")
    homes = [PartnerHome(p) for p in sorted(root.iterdir()) if (p / "partner.toml").is_file()]
    if not homes:
        raise ConfigError(
            f"--data {job.data!r} is neither a built-in source nor a file, and {root} holds no partner homes; "
            "give a data file, or --homes DIR with homes made by `fedcustomer init` and `ingest`"
        )
    if spec is None:
        raise ConfigError(
            f"training on the dataset {dataset!r} already in the homes of {root} needs --feature-spec FILE: the "
            "coordinator never reads partner data to infer one. Write it from the schema with "
            f"`fedcustomer features draft --home HOME --dataset {dataset} --label LABEL --output FILE`"
        )
    if spec.task != job.task:
        raise ConfigError(f"the feature spec is for task {spec.task!r} but the job's --task is {job.task!r}")
    if len(homes) != job.partners:
        raise ConfigError(
            f"{root} holds {len(homes)} partner home(s) ({', '.join(h.root.name for h in homes)}); "
            f"pass --partners {len(homes)}"
        )
    requested = DatasetBudget(job.epsilon, job.delta)
    for home in homes:
        _check_home(home, dataset, spec)
        told = kept_budget_notice(home.config(), requested)
        if told is not None and notices is not None:
            notices.append(told)
    return spec, homes


def _check_home(home: PartnerHome, dataset: str, spec: FeatureSpec) -> None:
    """The home holds ``dataset`` with every field the spec reads, typed as the spec reads it, none core-tier."""
    spec.check_against(dataset_schema(home, dataset), home.root.name)
