"""Small simulated retailer partners, provisioned through the governed store."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.analytics.runner import setup_synthetic
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget

REGIONS = ["north", "south", "east", "west", "central"]


@pytest.fixture
def homes(tmp_path: Path) -> list[PartnerHome]:
    return setup_synthetic(
        tmp_path / "partners", 3, seed=3, customers=(200, 150, 250), budget=DatasetBudget(5.0, 1e-5)
    )
