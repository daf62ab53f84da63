"""Partners that account with PLD: calibration, charges and reports through a whole job."""

from pathlib import Path

from fedcustomer.apps.client import make_client_app
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp import pld
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.recompute import recompute
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.run import run_job_on_grid
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC


def test_a_pld_partner_spends_its_budget_with_less_noise_than_an_rdp_one(tmp_path: Path) -> None:
    job = _job(tmp_path, partners=2, min_partners=2, rounds=2, federated_eval="none")
    homes = _federation(tmp_path, job, n=2)
    pld_home = PartnerHome(homes[0])
    config = pld_home.config()
    config.accountant, config.pld_discretization = "pld", 1e-3
    pld_home.write_config(config)
    assert pld_home.config().accountant_spec().pld_interval == 1e-3
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 2), job, SPEC, num_partners=2)
    assert summary["status"] == "completed"
    by_name = {p["name"]: p for p in summary["partners"]}
    tight, loose = by_name["bank_0"], by_name["bank_1"]
    assert tight["accounting"]["accountant"] == "pld" and loose["accounting"]["accountant"] == "rdp"
    assert tight["accounting"]["noise_multiplier"] < loose["accounting"]["noise_multiplier"]
    assert 0.99 * 3.0 < tight["epsilon_spent"] <= 3.0  # the planned rounds use the budget, within it
    history = [GaussianSteps(*h) for h in tight["accounting"]["history"]]
    interval = tight["accounting"]["value_discretization_interval"]  # the summary alone recomputes it
    assert interval == 1e-3 and "value_discretization_interval" not in loose["accounting"]
    assert tight["epsilon_spent"] == pld.epsilon(history, 1e-5, interval)
    charges = pld_home.ledger(job.dataset_name).all_charges()
    assert [(c.accountant, c.pld_interval) for c in charges] == [("pld", 1e-3)] * 2
    assert all(r.ok for r in recompute(charges))
