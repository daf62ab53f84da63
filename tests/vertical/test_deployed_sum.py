"""The deployed two-party ServerApp's intersection-sum mode (``--mode psi --reveal sum``) on the
in-process grid: each party reads its column through its governed store, the rate comes back
within its noise, and a column the policy does not grant is refused before anyone pays."""

from __future__ import annotations

import json

import pytest

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.psi.intersection_sum import MECHANISM
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import pin_each_other
from tests.vertical.conftest import grid_for, pinned_party_homes


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=500, seed=4)


def _raw(tmp_path, **sum_options):
    job = VerticalJob(out=str(tmp_path / "run"), seed=0)
    options = {"value": "defaulted", "where": "loyalty_member", "epsilon": 4.0} | sum_options
    return two_party_run_config(job, mode="psi", wait_for_partners=5, reveal="sum", sum_options=options)


def _paid(home) -> list[str]:
    return [c.mechanism for c in home.ledger(home.config().name).charges() if c.mechanism == MECHANISM]


def test_the_rate_over_shared_loyalty_members_comes_back_within_its_noise(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path)
    summary = run_two_party(grid_for([bank, retail]), raw)
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    ids_b, flags = PartnerDataAccess(retail).linkage_column("retailer", "loyalty_member")
    members = {normalize_id(i) for i, f in zip(ids_b, flags, strict=True) if int(f) == 1}
    ids_a, labels = PartnerDataAccess(bank).linkage_column("bank", "defaulted")
    chosen = [int(v) for i, v in zip(ids_a, labels, strict=True) if normalize_id(i) in members]
    assert summary["status"] == "completed" and len(chosen) > 50
    assert abs(summary["noisy_count"] - len(chosen)) <= 12 / 2
    assert abs(summary["noisy_sum"] - sum(chosen)) <= 2 * 12 / 2
    assert summary["epsilon"] == {"total": 4.0, "count": 2.0, "sum": 2.0}
    assert "intersection_size" not in summary and "kept_by" not in summary
    assert _paid(bank) == _paid(retail) == [MECHANISM]


def test_a_column_the_policy_does_not_grant_is_refused_and_nobody_pays(homes, tmp_path):
    bank, retail = homes
    with pytest.raises(FederationError, match="full_name"):
        run_two_party(grid_for([bank, retail]), _raw(tmp_path, where="full_name"))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"
    assert _paid(bank) == _paid(retail) == []


def test_sum_options_are_checked_on_the_coordinator():
    job = VerticalJob(out="run")
    with pytest.raises(ConfigError, match="needs --value COLUMN"):
        two_party_run_config(job, mode="psi", reveal="sum", sum_options={"value": "defaulted"})
    with pytest.raises(ConfigError, match="go with --reveal sum"):
        two_party_run_config(job, mode="psi", reveal="count", sum_options={"value": "defaulted"})
    with pytest.raises(ConfigError, match="count only with --mode psi, as is sum"):
        two_party_run_config(job, mode="vertical", reveal="sum")
    with pytest.raises(ConfigError, match="epsilon must be"):
        two_party_run_config(
            job, mode="psi", reveal="sum", sum_options={"value": "a", "where": "b", "epsilon": 0}
        )


def test_a_small_psi_chunk_size_streams_the_sum_in_several_chunks(homes, tmp_path):
    bank, retail = homes
    job = VerticalJob(out=str(tmp_path / "run"), seed=0)
    options = {"value": "defaulted", "where": "loyalty_member", "epsilon": 4.0}
    raw = two_party_run_config(
        job, mode="psi", wait_for_partners=5, reveal="sum", sum_options=options, psi_chunk_size=120
    )
    summary = run_two_party(grid_for([bank, retail]), raw)
    assert summary["status"] == "completed" and summary["parties"] == {"bank": 500, "retailer": 500}
    assert summary["chunks"] == {"bank": 5, "retailer": 5, "size": 120}
    assert summary["rate"] is not None and 0 <= summary["rate"] <= 1
    assert (tmp_path / "run" / "psi-progress.txt").read_text().endswith("released\n")
    assert _paid(bank) == _paid(retail) == [MECHANISM]
