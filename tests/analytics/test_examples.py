"""The query specs shipped in examples/ stay valid and answerable (the README points users at them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.analytics.runner import run_inprocess
from fedcustomer.analytics.spec import load_spec
from fedcustomer.partner.home import PartnerHome

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "queries").glob("*.yaml"))


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/queries/*.yaml missing"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_spec_runs_across_partners(path: Path, homes: list[PartnerHome]) -> None:
    spec = load_spec(path)
    result = run_inprocess(homes, spec)
    assert result.rows, f"{path.name} released no cell"
    assert all(r["ci_low"] <= r["estimate"] <= r["ci_high"] for r in result.rows)
