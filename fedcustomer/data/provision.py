"""Provision a partner home with its data in the governed store.

Simulated partners (and the deployment walkthrough's partners) are set up exactly as
a real partner admin would do it: a schema with tiers, then a validated, encrypted
ingest. Training later reads only through ``PartnerStore.read``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.ingest import IngestReport
from fedcustomer.data.schema import FieldSpec, Schema, Validation, load_bundled
from fedcustomer.data.schema_draft import draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import DataError
from fedcustomer.partner.datasets import BUNDLED, HOLDOUT, dataset_name
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.dp.budget import DatasetBudget


def admin(name: str) -> Actor:
    return Actor(f"admin:{name}", "partner_admin")


def open_partner_store(
    root: Path, name: str, budget: DatasetBudget, notices: list[str] | None = None
) -> tuple[PartnerHome, PartnerStore]:
    """The partner's home and open store at ``root``, both created on first use.

    An existing partner keeps its own budget (it covers all its customers); when that
    differs from ``budget`` a notice is appended to ``notices``. The caller closes the store.
    """
    home = PartnerHome(root)
    if home.config_path.exists():
        _, notice = home.ensure_budget(budget)
        if notice and notices is not None:
            notices.append(notice)
    else:
        # A simulated partner (one machine, stand-in data) also serves non-private baselines.
        home = PartnerHome.create(root, name, budget=budget, allow_non_private=True)
    store = (
        PartnerStore.open(home)
        if home.store_path.exists()
        else PartnerStore.init(home, name, actor=admin(name))
    )
    return home, store


def schema_for(source: str, task: str, spec: FeatureSpec, frame: pd.DataFrame, workdir: Path) -> Schema:
    """Bundled schema for synthetic data; otherwise a drafted one made safe for training."""
    bundled = BUNDLED.get((source, task))
    if bundled:
        schema = load_bundled(bundled)
    else:
        sample = workdir / f"{dataset_name(source, task)}.csv"
        frame.drop(columns=[HOLDOUT], errors="ignore").to_csv(sample, index=False)
        try:
            drafted = draft_schema(
                sample,
                dataset=dataset_name(source, task),
                sample_rows=max(len(frame), 1),
                id_column=spec.id_column,
            )
        except DataError as exc:  # name the user's data, not the partner's temporary copy of it
            raise DataError(str(exc).replace(f"{sample}: ", "").replace(str(sample), "the data")) from None
        fields = []
        for f in drafted.fields:
            if f.name == spec.label:
                f = replace(f, role="label", tier="sensitive", masking=None)
            elif f.role == "feature" and f.tier == "core" and f.name in spec.columns():
                f = replace(
                    f,
                    tier="sensitive",
                    masking=f.masking if f.masking != "redact" or f.type == "string" else None,
                )
            fields.append(f)
        schema = replace(drafted, fields=tuple(fields))
    holdout = FieldSpec(
        name=HOLDOUT,
        type="integer",
        tier="public",
        role="feature",
        nullable=False,
        validation=Validation(allowed=("0", "1")),
        description="evaluation split marker set by the partner (1 = held out)",
    )
    return replace(schema, fields=tuple(schema.fields) + (holdout,))


def shared_schema(
    source: str,
    task: str,
    spec: FeatureSpec,
    parts: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    workdir: Path,
) -> Schema | None:
    """One schema for simulated partners cut from one source, drafted once from all their rows.

    A simulated federation splits one file (or one public data set), so its partners agree on
    one schema, as real partners agree on the fields of a joint job: drafted from every row,
    no partner's types depend on which 24 rows it happened to get, and drafting (pandas, per
    column) is paid once instead of once per home. None when the partners' columns differ
    (each then drafts its own). Each home still validates its own rows against it at ingest.
    """
    if not parts:
        return None
    columns = list(parts[0][0].columns)
    if any(list(f.columns) != columns for pair in parts for f in pair):
        return None
    frame = pd.concat(
        [f.assign(**{HOLDOUT: h}) for pair in parts for h, f in enumerate(pair)], ignore_index=True
    )
    return schema_for(source, task, spec, frame, workdir)


def provision_partner(
    root: Path,
    name: str,
    *,
    source: str,
    task: str,
    spec: FeatureSpec,
    train: pd.DataFrame,
    test: pd.DataFrame,
    budget: DatasetBudget,
    notices: list[str] | None = None,
    schema: Schema | None = None,
) -> tuple[PartnerHome, IngestReport | None]:
    """Create (or reuse) a partner home and ingest its rows; re-running adds nothing.

    An existing partner keeps its own budget (it covers all its customers); when that
    differs from ``budget`` a notice is appended to ``notices``. ``schema`` (from
    :func:`shared_schema`) is used for a store that does not hold the dataset yet; otherwise
    the schema is drafted from this partner's rows, as before.
    """
    dataset = dataset_name(source, task)
    home, store = open_partner_store(root, name, budget, notices)
    try:
        frame = pd.concat([train.assign(**{HOLDOUT: 0}), test.assign(**{HOLDOUT: 1})], ignore_index=True)
        if spec.id_column is None or spec.id_column not in frame.columns:
            raise DataError(
                f"partner {name!r}: data has no customer id column; the store keys customers by id"
            )
        if schema is not None and dataset in store.datasets():
            schema = None  # an existing store keeps drafting from its own rows, as it always did
        with tempfile.TemporaryDirectory(dir=home.state_dir) as tmp:
            if schema is None:
                schema = schema_for(source, task, spec, frame, Path(tmp))
            path = Path(tmp) / f"{dataset}.csv"
            frame[[f.name for f in schema.fields if f.name in frame.columns]].to_csv(path, index=False)
            report = store.ingest(admin(name), schema, path)
        return home, report
    finally:
        store.close()
