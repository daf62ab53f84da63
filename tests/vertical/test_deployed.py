"""What the deployed two-party ServerApp runs (:func:`run_two_party`), on the in-process grid:
the same code as on the Deployment Engine, without processes. Restart and drop-out paths."""

from __future__ import annotations

import json

import pytest

from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.psi.state import psi_dir
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import pin_each_other
from fedcustomer.vertical.party import forget_sessions
from tests.vertical.conftest import grid_for, pinned_party_homes


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=600, seed=2)


DIES_IN_ROUND_2 = 10  # the retailer's messages answered before it stops: it misses round 2's last backward


def _raw(tmp_path, mode="vertical", reveal="ids", **kw):
    job = VerticalJob(
        **(
            {"out": str(tmp_path / "run"), "rounds": 3, "batch_size": 64, "steps_per_round": 2, "seed": 0}
            | kw
        )
    )
    return two_party_run_config(job, mode=mode, wait_for_partners=5, reveal=reveal)


def _charges(home, run_id):
    ledger = BudgetLedger(home.ledger_path, home.config().name, home.config().budget_for(home.config().name))
    return sorted(((c.round or 0), c.mechanism) for c in ledger.charges() if c.run_id == run_id)


def test_vertical_job_completes_and_each_party_keeps_its_part(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False)
    summary = run_two_party(grid_for([bank, retail]), raw)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3 and summary["psi_size"] > 300
    for home, role in ((bank, "active"), (retail, "passive")):
        assert (home.state_dir / "vertical" / f"run-{raw['run-id']}-{role}-final.pt").exists()
        assert [r for r, _ in _charges(home, raw["run-id"]) if _ != "vertical_label_release"] == [1, 2, 3]


def test_a_restarted_coordinator_resumes_without_paying_twice(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False)
    # the first coordinator dies during round 2: the retailer is the one whose reply is lost (its 11th
    # message, round 2's last backward: hello, PSI 3 (its last one with the alignment check), setup with
    # the alignment kept and round 1's check, then round 1's begin with forward, 2 backwards, round 2's
    # begin with forward, its 1st backward)
    with pytest.raises(FederationError):
        run_two_party(grid_for([bank, retail], dead_after={2: DIES_IN_ROUND_2}), raw)
    paid = {h.config().name: _charges(h, raw["run-id"]) for h in homes}
    assert json.loads((tmp_path / "run" / "checkpoint" / raw["run-id"] / "joint-rounds.json").read_text())[
        "rounds"
    ]
    forget_sessions()  # the parties' processes restarted too: their state comes from disk
    summary = run_two_party(grid_for([bank, retail]), raw | {"resume": True})
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    for home in homes:
        charges = _charges(home, raw["run-id"])
        assert len(charges) == len(set(charges))  # each round charged once
        assert set(paid[home.config().name]) <= set(charges)
        assert [r for r, m in charges if m == "vertical_dpsgd"] == [1, 2, 3]


def test_a_party_that_drops_ends_the_job_with_no_final_model_and_no_further_charge(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False)
    with pytest.raises(FederationError, match="retailer did not answer"):
        run_two_party(grid_for([bank, retail], dead_after={2: DIES_IN_ROUND_2}), raw)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["model"]["final"] is False
    assert summary["rounds_completed"] == 1 and summary["metrics"] == {}  # round 1 was trained and paid
    for home in homes:
        assert not list((home.state_dir / "vertical").glob("*-final.pt"))
    bank_paid = [r for r, m in _charges(bank, raw["run-id"]) if m == "vertical_dpsgd"]
    retail_paid = [r for r, m in _charges(retail, raw["run-id"]) if m == "vertical_dpsgd"]
    assert max(bank_paid) <= max(retail_paid) + 1 and max(bank_paid) < 3


def test_count_only_psi_over_the_deployed_path_keeps_nothing(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path, mode="psi", reveal="count")
    summary = run_two_party(grid_for([bank, retail]), raw)
    assert summary["status"] == "completed" and summary["reveal"] == "count"
    assert (
        summary["intersection_size"] > 300
        and summary["kept_by"] == {}
        and summary["alignment_digest"] is None
    )
    for home in homes:
        assert not list(psi_dir(home).glob("*.alignment.json")) and not list(
            psi_dir(home).glob("*.party.json")
        )
        assert not (home.state_dir / "vertical").exists() or not list(
            (home.state_dir / "vertical").glob("alignment-*")
        )


def test_a_plain_psi_keeps_each_sides_alignment(homes, tmp_path):
    bank, retail = homes
    summary = run_two_party(grid_for([bank, retail]), _raw(tmp_path, mode="psi"))
    assert summary["intersection_size"] > 300 and summary["alignment_digest"]
    for home in homes:
        assert len(list(psi_dir(home).glob("*.alignment.json"))) == 1


def test_bad_two_party_configs_are_clear_errors(tmp_path):
    job = VerticalJob(out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--mode must be"):
        two_party_run_config(job, mode="sideways")
    with pytest.raises(ConfigError, match="count only with --mode psi"):
        two_party_run_config(job, mode="vertical", reveal="count")
    with pytest.raises(ConfigError, match="--partner must be one of"):
        prepare_party_home(tmp_path / "x", "bank0")
