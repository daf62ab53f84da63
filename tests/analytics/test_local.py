"""True partial aggregates: clamping, declared cells, bands, funnels, RFM segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedcustomer.analytics import rfm
from fedcustomer.analytics.customer import furthest_step
from fedcustomer.analytics.local import compute_partials
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import DataError

FRAME = pd.DataFrame(
    {
        "region": ["north", "north", "south", "mars", "south"],
        "spend": [10.0, 5000.0, -3.0, 7.0, np.nan],
        "age": [20, 35, 70, 40, 50],
    }
)


def test_sum_clamps_each_value_to_the_declared_bounds() -> None:
    spec = QuerySpec(
        dataset="d",
        kind="sum",
        field="spend",
        bounds=(0.0, 100.0),
        group_by=("region",),
        groups={"region": ("north", "south")},
    )
    p = compute_partials(FRAME, spec)
    assert p.stats["sum"].tolist() == [
        110.0,
        0.0,
    ]  # 5000 -> 100, -3 -> 0, 'mars' outside the domain, NaN left out
    assert p.weights["sum"] == 100.0 and p.clamped == 2


def test_mean_releases_count_and_sum_as_two_statistics() -> None:
    spec = QuerySpec(dataset="d", kind="mean", field="spend", bounds=(-10.0, 100.0))
    p = compute_partials(FRAME, spec)
    assert p.statistics == 2 and p.stats["count"].tolist() == [4.0] and p.weights["sum"] == 100.0


def test_bands_assign_the_last_edge_to_the_last_band_and_drop_values_outside() -> None:
    spec = QuerySpec(dataset="d", kind="count", group_by=("age_band",), bands={"age": (18, 40, 70)})
    assert compute_partials(FRAME, spec).stats["count"].tolist() == [2.0, 3.0]


def test_histogram_clamps_into_the_outer_bins() -> None:
    spec = QuerySpec(dataset="d", kind="histogram", field="spend", bins=(0, 10, 100))
    assert compute_partials(FRAME, spec).stats["hist"].tolist() == [[2.0, 2.0]]


def test_missing_field_is_a_data_error() -> None:
    with pytest.raises(DataError, match="lacks"):
        compute_partials(FRAME, QuerySpec(dataset="d", kind="sum", field="income", bounds=(0, 1)))


def test_furthest_step_requires_steps_in_order() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "b", "c"],
            "event": ["visit", "cart", "buy", "visit", "buy", "cart"],
            "time": [1, 2, 3, 1, 2, 1],
        }
    )
    stages = furthest_step(events, ["visit", "cart", "buy"])
    assert stages.to_dict() == {"a": "buy", "b": "visit"}  # b skipped the cart; c never visited


def test_rfm_segments_partition_every_scored_customer() -> None:
    grid = pd.DataFrame(
        [(r, f, 100.0) for r in (0, 20, 50, 100, 400) for f in (0, 2, 3, 5, 9)],
        columns=["recency_days", "frequency_12m", "monetary_12m"],
    )
    seg = rfm.segment(grid, rfm.SYNTHETIC_RETAILER)
    assert seg.notna().all() and set(seg) == set(rfm.SEGMENTS)
    sc = rfm.scores(grid, rfm.SYNTHETIC_RETAILER)
    assert sc.loc[0, "R"] == 5 and sc.loc[24, "R"] == 1 and sc.loc[24, "F"] == 5
    assert seg[(sc["R"] >= 4).to_numpy() & (sc["F"] >= 4).to_numpy()].eq("champions").all()
