"""A partner home with people, an ingest, an open approval request, ledger charges and runs, for the console.

Built once per test module (key generation, store init and an ingest take a few seconds).
The console's credential clock is a test clock: each sign-in moves it one TOTP step on,
so a code is never refused as a replay of the previous test's.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcustomer.console.app import create_app
from fedcustomer.console.context import ConsoleContext, ConsoleSettings
from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.schema import load_bundled
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.data.test_ingest import bank_frame
from tests.people import Person, people_home

PASSWORDS = {
    "alice": "alice-console-pass-1",
    "carol": "carol-console-pass-1",
    "dana": "dana-console-pass-1",
    "mia": "mia-console-pass-12",
    "rick": "rick-console-pass-1",
}
XSS = '<script>alert("x")</script>'
XSS_FILE = "<img src=x onerror=alert(1)>"  # no slash: a legal file name


class FakeClock:
    """Wall-clock seconds that the tests move on."""

    def __init__(self) -> None:
        import time

        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@dataclass
class World:
    root: Path
    home: PartnerHome
    runs: Path
    people: dict[str, Person]
    request_id: str
    clock: FakeClock

    def context(self) -> ConsoleContext:
        ctx = ConsoleContext(ConsoleSettings(home=self.home.root, runs=self.runs))
        ctx.credentials._clock = self.clock
        return ctx

    def app(self) -> Any:
        app = create_app(ConsoleSettings(home=self.home.root, runs=self.runs))
        app.state.console.credentials._clock = self.clock
        return app

    def code(self, ctx: ConsoleContext, name: str) -> str:
        self.clock.t += 30
        return ctx.credentials.current_code(self.people[name].signer.key_id)


def write_run(
    root: Path, name: str, rounds: int, partners: list[str], *, done: bool = True, seed: int = 0
) -> Path:
    """A run directory in the job writer's format (config.json, metrics.csv, summary.json)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "repayment", "rounds": rounds}))
    rows = []
    for r in range(1, rounds + 1):
        row: dict[str, Any] = {
            "round": r,
            "applied": 1,
            "partners_trained": len(partners),
            "partners_refused": 0,
            "partners_failed": 0,
            "wall_time_s": 0.5,
            "eval_auc": 0.6 + 0.01 * r + 0.001 * seed,
            "eval_loss": 0.7 - 0.01 * r,
        }
        for i, p in enumerate(partners):
            row[f"epsilon_{p}"] = 0.1 * r * (1 + 0.1 * i)
        rows.append(row)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if done:
        summary = {
            "schema_version": 1,
            "run_id": name,
            "task": "repayment",
            "status": "completed",
            "rounds_planned": rounds,
            "rounds_completed": rounds,
            "metrics": {"auc": 0.7 + 0.001 * seed, "loss": 0.5},
            "partners": [
                {
                    "name": p,
                    "epsilon_target": 3.0,
                    "epsilon_spent": 0.1 * rounds,
                    "rounds_trained": rounds,
                    "rounds_refused": 1 if i == 0 else 0,
                    "rounds_failed": 0,
                    "refusals": [{"round": rounds, "reason": f"budget: {XSS}"}] if i == 0 else [],
                    "failures": [],
                }
                for i, p in enumerate(partners)
            ],
        }
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "model.pt").write_bytes(b"weights")
    return run


def build_world(root: Path) -> World:
    store, people = people_home(root, "bank_a")
    try:
        frame = bank_frame(30)
        frame.loc[3, "age"] = -5  # one row to quarantine
        path = root / f"{XSS_FILE}.csv"
        frame.to_csv(path, index=False)
        store.ingest(people["alice"].signer, load_bundled("bank"), path)
        request_id = StoreApprovals(store).request(
            people["rick"].signer, "bank", ["national_id"], "risk_review"
        )
    finally:
        store.close()
    home = PartnerHome(root / "bank_a")
    config = home.config()
    config.budget = DatasetBudget(3.0, 1e-5)
    home.write_config(config)
    ledger = home.ledger("bank")
    for r in range(1, 4):
        ledger.charge_gaussian(f"run:r1:round:{r}", GaussianSteps(1.1, 0.01, 100), run_id="r1", round=r)
    ledger.charge_approx("query:q1", 0.1, 0.0, mechanism="laplace", query_id="q1")
    home.ledger(XSS).charge_approx("query:q2", 0.05, 0.0, mechanism="laplace", query_id="q2")
    runs = root / "runs"
    write_run(runs, "run-a", 5, ["bank_a", "retail_b"])
    write_run(runs, "run-b", 5, ["bank_a", "retail_b"], seed=3)
    write_run(runs, "run-live", 8, ["bank_a"], done=False)
    world = World(root, home, runs, people, request_id, FakeClock())
    ctx = world.context()
    for name, password in PASSWORDS.items():
        ctx.credentials.enrol(people[name].signer.key_id, "alice", password)
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("console"))


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)
