"""Noise calibration is computed once per distinct set of inputs in a process (simulated partners)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.privacy.dp import release
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger


def _ledger(path: Path, epsilon: float = 3.0) -> BudgetLedger:
    return BudgetLedger(path / "ledger.db", "loans", DatasetBudget(epsilon, 1e-5))


def test_identical_partners_share_one_search_and_get_the_exact_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release, "_CALIBRATED", {})
    searches: list[float] = []
    search = BudgetLedger.calibrate_noise

    def counted(self: BudgetLedger, *args: object, **kwargs: object) -> float:
        searches.append(1.0)
        return search(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BudgetLedger, "calibrate_noise", counted)
    a, b = _ledger(tmp_path / "a"), _ledger(tmp_path / "b")
    sigma = release.calibrate_noise(a, 0.05, 20, 3, sigma_max=50.0)
    assert release.calibrate_noise(b, 0.05, 20, 3, sigma_max=50.0) == sigma
    assert len(searches) == 1
    assert search(b, 0.05, 60, sigma_max=50.0) == sigma  # what the search itself says
    # anything that moves the answer is a new search: another history, budget or plan
    b.charge_gaussian("earlier", GaussianSteps(2.0, 0.05, 20))
    assert release.calibrate_noise(b, 0.05, 20, 3, sigma_max=50.0) > sigma
    assert release.calibrate_noise(_ledger(tmp_path / "c", 2.0), 0.05, 20, 3, sigma_max=50.0) > sigma
    assert release.calibrate_noise(a, 0.05, 20, 2, sigma_max=50.0) < sigma
    assert len(searches) == 4
