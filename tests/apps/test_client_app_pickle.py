"""The partners' ClientApp travels to the simulation engine's workers as the homes it serves.

Flower's simulation engine pickles the ClientApp (inside a closure of its own) into every message it
hands a Ray worker. These tests fail if the app is pickled by value again (its nested handlers and
mods: tens of kB and about 20 ms per message), and check that what a worker loads trains as the
original does.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ray import cloudpickle

from fedcustomer.apps.client import PartnerClientApp, client_app_for, make_client_app
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.run import run_job_on_grid
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC

SMALL = 2_000  # bytes; by value the app pickles to about 40 kB


def test_the_app_pickles_as_its_homes_and_loads_once_per_process(tmp_path: Path) -> None:
    homes = [str(tmp_path / "bank_0"), str(tmp_path / "bank_1")]
    app = make_client_app(homes)
    data = pickle.dumps(app)
    assert len(data) < SMALL
    loaded, again = pickle.loads(data), pickle.loads(data)
    assert isinstance(loaded, PartnerClientApp) and loaded.homes == tuple(homes)
    assert loaded is again is client_app_for(tuple(homes))  # built once in this process, then reused
    assert pickle.loads(pickle.dumps(make_client_app(homes[:1]))).homes == (
        homes[0],
    )  # other homes, other app
    assert (
        pickle.loads(pickle.dumps(make_client_app())).homes is None
    )  # the deployed app: homes from the node


def test_the_engine_s_closure_over_the_app_stays_small(tmp_path: Path) -> None:
    app = make_client_app([str(tmp_path / "bank_0")])

    def load() -> PartnerClientApp:  # as flwr's simulation engine wraps the app it was given
        return app

    data = cloudpickle.dumps(load)
    assert len(data) < SMALL
    assert cloudpickle.loads(data)() is client_app_for((str(tmp_path / "bank_0"),))


def test_a_loaded_app_trains_a_job_as_the_original(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=2)
    homes = _federation(tmp_path, job)
    loaded = pickle.loads(pickle.dumps(make_client_app(homes)))
    summary = run_job_on_grid(LocalGrid(loaded, 3), job, SPEC, num_partners=3)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert {p["name"] for p in summary["partners"]} == {"bank_0", "bank_1", "bank_2"}
    assert all(p["rounds_trained"] == 2 and 0 < p["epsilon_spent"] <= 3.0 for p in summary["partners"])
