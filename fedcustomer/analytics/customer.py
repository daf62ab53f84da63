"""Customer analytics built on the query layer: RFM segments, funnels, data quality.

Each is an ordinary :class:`QuerySpec`, so it is noised, charged and audited at every
partner like any other query.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fedcustomer.analytics.mechanisms import LAPLACE
from fedcustomer.analytics.rfm import SEGMENT_FIELD, RFMConfig
from fedcustomer.analytics.spec import QuerySpec, new_query_id
from fedcustomer.errors import DataError

FUNNEL_FIELD = "funnel_stage"


def rfm_query(
    dataset: str,
    config: RFMConfig,
    *,
    epsilon: float,
    delta: float = 0.0,
    mechanism: str = LAPLACE,
    confidence: float = 0.95,
    query_id: str | None = None,
    extra_groups: Sequence[str] = (),
    groups: dict[str, tuple[str, ...]] | None = None,
) -> QuerySpec:
    """DP segment sizes and mean spend per segment (spend clamped to [0, monetary_upper])."""
    return QuerySpec(
        dataset=dataset,
        kind="mean",
        field=config.monetary,
        bounds=(0.0, config.monetary_upper),
        group_by=(SEGMENT_FIELD, *extra_groups),
        groups=dict(groups or {}),
        rfm=config,
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        confidence=confidence,
        query_id=query_id or new_query_id(),
    )


def furthest_step(
    events: pd.DataFrame,
    steps: Sequence[str],
    *,
    customer: str = "customer_id",
    step: str = "event",
    time: str = "time",
) -> pd.Series:
    """Each customer's furthest step of an ordered funnel, from an event log.

    A step counts only once every earlier step happened at or before it, so one
    customer lands in exactly one stage (sensitivity 1 for the released stage counts);
    customers who never reached the first step get no stage.
    """
    missing = [c for c in (customer, step, time) if c not in events.columns]
    if missing:
        raise DataError(f"the event log lacks column(s) {', '.join(missing)}")
    order = {s: i for i, s in enumerate(steps)}
    ev = events[events[step].isin(order)].sort_values([customer, time], kind="stable")
    result: dict[object, str] = {}
    for cid, group in ev.groupby(customer, sort=False):
        reached = -1
        for s in group[step]:
            if order[s] == reached + 1:
                reached += 1
        if reached >= 0:
            result[cid] = steps[reached]
    return pd.Series(result, name=FUNNEL_FIELD, dtype=object)


def funnel_query(
    dataset: str, steps: Sequence[str], *, epsilon: float, field: str = FUNNEL_FIELD, **kw: object
) -> QuerySpec:
    return QuerySpec(dataset=dataset, kind="funnel", field=field, steps=tuple(steps), epsilon=epsilon, **kw)  # type: ignore[arg-type]


def quality_query(dataset: str, fields: Sequence[str], *, epsilon: float, **kw: object) -> QuerySpec:
    return QuerySpec(dataset=dataset, kind="quality", fields=tuple(fields), epsilon=epsilon, **kw)  # type: ignore[arg-type]
