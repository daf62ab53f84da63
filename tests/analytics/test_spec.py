"""Query specs: parsing, declared domains, errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.analytics.spec import QuerySpec, load_spec, spec_from_dict
from fedcustomer.errors import ConfigError

BASE = {"dataset": "retailer", "kind": "mean", "field": "monetary_12m", "bounds": [0, 1000], "epsilon": 1.0}


def test_cells_are_the_product_of_declared_domains_including_derived_bands() -> None:
    spec = spec_from_dict(
        {
            **BASE,
            "group_by": ["region", "age_band"],
            "groups": {"region": ["north", "south"]},
            "bands": {"age": [18, 40, 120]},
        }
    )
    assert spec.cells() == [("north", "18-40"), ("north", "40-120"), ("south", "18-40"), ("south", "40-120")]
    assert spec.source_fields() == ["monetary_12m", "region", "age"]


def test_group_without_declared_values_is_refused() -> None:
    with pytest.raises(ConfigError, match="no declared values"):
        spec_from_dict({**BASE, "group_by": ["region"]})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bounds": None}, "bounds"),
        ({"bounds": [5, 1]}, "bounds"),
        ({"kind": "median"}, "kind"),
        ({"delta": 1e-5}, "delta"),
        ({"mechanism": "gaussian", "delta": 0}, "delta"),
        ({"epsilon": -1}, "epsilon"),
        ({"colour": "red"}, "unknown key"),
        ({"id": "bad id!"}, "query id"),
    ],
)
def test_invalid_specs_name_the_problem(change: dict, message: str) -> None:
    raw = {**BASE, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(raw)


def test_yaml_and_json_files_load_and_bad_files_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "q.yaml").write_text("dataset: retailer\nkind: count\nid: q1\nepsilon: 0.5\n")
    assert load_spec(tmp_path / "q.yaml").query_id == "q1"
    (tmp_path / "q.json").write_text("{not json")
    with pytest.raises(ConfigError, match="q.json"):
        load_spec(tmp_path / "q.json")
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_rfm_preset_declares_segment_groups() -> None:
    spec = spec_from_dict({**BASE, "group_by": ["segment"], "rfm": "synthetic"})
    assert [c[0] for c in spec.cells()][:2] == ["champions", "loyal"]
    with pytest.raises(ConfigError, match="preset"):
        spec_from_dict({**BASE, "group_by": ["segment"], "rfm": "nope"})


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(0.01, 20),
    lo=st.floats(-1e4, 1e4),
    width=st.floats(0.1, 1e4),
    regions=st.lists(
        st.sampled_from(["north", "south", "east", "west"]), min_size=1, max_size=4, unique=True
    ),
)
def test_spec_round_trips_through_json(eps: float, lo: float, width: float, regions: list[str]) -> None:
    spec = QuerySpec(
        dataset="retailer",
        kind="sum",
        field="monetary_12m",
        bounds=(lo, lo + width),
        epsilon=eps,
        group_by=("region",),
        groups={"region": tuple(regions)},
    )
    again = spec_from_dict(json.loads(spec.to_json()))
    assert again == spec and again.cells() == spec.cells()
