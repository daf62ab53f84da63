"""Run analytics on one machine: simulated partner homes and an in-process Flower grid.

Simulated partners are provisioned like real ones (schema with tiers, validated
encrypted ingest into the governed store), so queries take the product path: the
``query.analytics`` message, a store read under the access policy, the ledger, the
audit log. :func:`true_partials` reads the same store without noise; it exists for
local checks (``--show-truth``) and is never reachable over the network.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.analytics.combine import QueryResult
from fedcustomer.analytics.federated import register_analytics_handlers, run_query_on_grid
from fedcustomer.analytics.local import Partials, compute_partials
from fedcustomer.analytics.partner import PURPOSE, LoadFrame
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.data.schema import Schema
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.federation import read_index, write_index
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget

CDNOW_DATASET = "cdnow"
_CDNOW_SCHEMA = """
dataset: cdnow
description: CDNOW customers summarised over the calibration period (analytics view)
fields:
  - {name: customer_id, type: string, tier: core, role: id, validation: {regex: "^[0-9]{1,12}$"}}
  - {name: cohort, type: category, tier: public, role: feature, validation: {allowed: ["1997-01", "1997-02", "1997-03"]}}
  - {name: frequency, type: integer, tier: sensitive, role: feature, validation: {min: 0}, masking: "bucket:5"}
  - {name: monetary, type: float, tier: sensitive, role: feature, validation: {min: 0}, masking: "bucket:50"}
  - {name: days_since_last, type: integer, tier: sensitive, role: feature, validation: {min: 0}, masking: "bucket:30"}
  - {name: future_spend, type: float, tier: sensitive, role: label, validation: {min: 0}, masking: "bucket:50"}
"""
CDNOW_COHORTS = ("1997-01", "1997-02", "1997-03")


def provision(
    root: Path,
    name: str,
    schema: Schema,
    frame: pd.DataFrame,
    budget: DatasetBudget,
    notices: list[str] | None = None,
) -> PartnerHome:
    """A partner home holding ``frame`` in its store under ``schema`` (re-running adds nothing).

    An existing home keeps its own budget; when it differs from ``budget`` a notice is appended.
    """
    from fedcustomer.data.provision import admin, open_partner_store

    home, store = open_partner_store(root, name, budget, notices)
    try:
        with tempfile.TemporaryDirectory(dir=home.state_dir) as tmp:
            path = Path(tmp) / f"{schema.dataset}.csv"
            frame[[f.name for f in schema.fields if f.name in frame.columns]].to_csv(path, index=False)
            store.ingest(admin(name), schema, path)
    finally:
        store.close()
    return home


def setup_synthetic(
    root: Path,
    partners: int = 3,
    *,
    seed: int = 0,
    budget: DatasetBudget = DatasetBudget(10.0, 1e-5),
    customers: Sequence[int] | int = (5000, 3500, 7000),
    notices: list[str] | None = None,
) -> list[PartnerHome]:
    """Retailers from ``generate_federation`` as partner homes under ``root`` (dataset ``retailer``)."""
    from fedcustomer.data.schema import load_bundled
    from fedcustomer.data.synthetic import generate_federation

    if partners < 1:
        raise ConfigError(f"need at least 1 partner, got {partners}")
    fed = generate_federation(0, partners, customers_per_retailer=customers, seed=seed)
    parts = {r.name: pd.concat([r.train, r.test], ignore_index=True) for r in fed.retailers}
    return _provision_all(
        Path(root),
        load_bundled("retailer"),
        parts,
        budget,
        {"data": "synthetic", "partners": str(partners), "seed": str(seed)},
        notices,
    )


def setup_cdnow(
    root: Path,
    partners: int = 3,
    *,
    data_dir: Path,
    seed: int = 0,
    budget: DatasetBudget = DatasetBudget(10.0, 1e-5),
    notices: list[str] | None = None,
) -> list[PartnerHome]:
    """CDNOW customers split at random across ``partners`` stores (dataset ``cdnow``)."""
    from fedcustomer.data.cdnow import load_cdnow

    if partners < 1:
        raise ConfigError(f"need at least 1 partner, got {partners}")
    frame = load_cdnow(Path(data_dir))
    order = np.random.default_rng(seed).permutation(len(frame))
    schema = Schema.from_yaml(_CDNOW_SCHEMA, source="cdnow analytics schema")
    parts = {
        f"cdnow_{i + 1}": frame.iloc[part].reset_index(drop=True)
        for i, part in enumerate(np.array_split(order, partners))
    }
    return _provision_all(
        Path(root),
        schema,
        parts,
        budget,
        {"data": "cdnow", "partners": str(partners), "seed": str(seed)},
        notices,
    )


def _provision_all(
    root: Path,
    schema: Schema,
    parts: dict[str, pd.DataFrame],
    budget: DatasetBudget,
    layout: dict[str, str],
    notices: list[str] | None,
) -> list[PartnerHome]:
    """Provision every simulated partner, each customer at the partner it was first placed at."""
    from fedcustomer.data.partition import PartnerDataset
    from fedcustomer.data.placement import PlacementRegistry

    id_field = next((f.name for f in schema.fields if f.role == "id"), None)
    datasets = [PartnerDataset(name, "partner", frame, frame.iloc[:0]) for name, frame in parts.items()]
    placed = PlacementRegistry(root).apply(datasets, id_field, layout)
    if notices is not None:
        notices.extend(placed.notices)
    homes = [
        provision(
            root / ds.name,
            ds.name,
            schema,
            pd.concat([ds.train, ds.test], ignore_index=True),
            budget,
            notices,
        )
        for ds in placed.datasets
    ]
    write_index(root, homes)
    return homes


def homes_in(directory: Path) -> list[PartnerHome]:
    """Partner homes under ``directory`` (its federation.json order, else every sub-folder with partner.toml)."""
    directory = Path(directory)
    homes = read_index(directory)
    if homes is None:
        homes = [
            PartnerHome(p) for p in sorted(directory.iterdir()) if (p / PartnerHome.CONFIG_NAME).exists()
        ]
    if not homes:
        raise ConfigError(f"{directory} holds no partner homes (folders with {PartnerHome.CONFIG_NAME})")
    return homes


def run_inprocess(
    homes: Sequence[PartnerHome],
    spec: QuerySpec,
    *,
    load_frame: LoadFrame | None = None,
    requests: Mapping[str, Any] | None = None,
) -> QueryResult:
    """Send ``spec`` as ``query.analytics`` messages to a ClientApp per home over an in-process grid,
    with the person's signed ``requests`` (:func:`fedcustomer.analytics.requester.sign_query`)."""
    from flwr.clientapp import ClientApp

    from fedcustomer.clients.context import resolve_home
    from fedcustomer.server.inprocess import LocalGrid

    paths = [str(Path(h.root).resolve()) for h in homes]
    app = ClientApp()
    register_analytics_handlers(app, lambda ctx: resolve_home(ctx, paths), load_frame)
    return run_query_on_grid(LocalGrid(app, len(paths)), spec, requests=requests)


def true_partials(homes: Sequence[PartnerHome], spec: QuerySpec) -> Partials:
    """Exact (unnoised) aggregates over all homes, for local checks only."""
    from fedcustomer.data.store import PartnerStore

    total: Partials | None = None
    for home in homes:
        with PartnerStore.open(home) as store:
            if spec.dataset not in store.datasets():
                raise DataError(f"partner {store.name!r} holds no dataset {spec.dataset!r}")
            frame = store.read(
                store.service_credential("local:truth", "data_scientist"),
                PURPOSE,
                fields=spec.source_fields(),
                dataset=spec.dataset,
            )
        p = compute_partials(frame, spec)
        if total is None:
            total = p
        else:
            total.stats = {k: total.stats[k] + p.stats[k] for k in total.stats}
            total.rows += p.rows
    assert total is not None
    return total


def truth_rows(spec: QuerySpec, partials: Partials) -> list[dict[str, Any]]:
    """True value per released row of count, sum and mean queries (same order as the result rows)."""
    rows = []
    for i, cell in enumerate(spec.cells()):
        group = dict(zip(spec.group_by, cell))
        s = partials.stats
        if spec.kind == "count":
            rows.append({"group": group, "statistic": "count", "truth": float(s["count"][i])})
        elif spec.kind == "sum":
            rows.append({"group": group, "statistic": "sum", "truth": float(s["sum"][i])})
        elif spec.kind == "mean":
            n = float(s["count"][i])
            rows.append(
                {
                    "group": group,
                    "statistic": "mean",
                    "truth": float(s["sum"][i]) / n if n else None,
                    "count": n,
                    "sum": float(s["sum"][i]),
                }
            )
        else:
            raise ConfigError(f"true values are shown for count, sum and mean queries, not {spec.kind!r}")
    return rows
