"""Many partners on the in-process grid: a DP round with 50 partner homes completes."""

import shutil
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.clients import job_matrices
from fedcustomer.data import provision
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid
from tests.toy import SPEC, toy_frame

PARTNERS = 50
TEMPLATES = 5


def test_fifty_partners_complete_a_dp_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Five homes are provisioned the product's way (their files share columns, so the schema is
    # drafted once) and copied to make fifty; each copy has its own name, ledger, audit log and
    # store file. Provisioning cost is measured by benchmarks/bench_scale.py, not here.
    drafted: list = []
    draft = provision.schema_for

    def schema_once(*args, **kwargs):
        if not drafted:
            drafted.append(draft(*args, **kwargs))
        return drafted[0]

    monkeypatch.setattr(provision, "schema_for", schema_once)
    job = JobConfig(
        data="toy.csv",
        partners=PARTNERS,
        rounds=1,
        arch="logreg",
        lr=0.5,
        batch_size=10,
        local_epochs=1,
        epsilon=3.0,
        out=str(tmp_path / "run"),
        min_partners=PARTNERS,
        federated_eval="none",
    )
    templates = []
    for i in range(TEMPLATES):
        train, test = toy_frame(30, i), toy_frame(8, 1000 + i)
        train["customer_id"] = f"p{i}-" + train["customer_id"]
        test["customer_id"] = f"p{i}-t" + test["customer_id"]
        home, _ = provision.provision_partner(
            tmp_path / f"p{i}",
            f"p{i}",
            source=job.data,
            task=job.task,
            spec=SPEC,
            train=train,
            test=test,
            budget=DatasetBudget(job.epsilon, job.delta),
        )
        templates.append(home)
    homes = [str(h.root) for h in templates]
    for i in range(TEMPLATES, PARTNERS):
        copy = tmp_path / f"p{i}"
        shutil.copytree(templates[i % TEMPLATES].root, copy)
        home = PartnerHome(copy)
        config = home.config()
        config.name = copy.name
        home.write_config(config)
        homes.append(str(copy))
    grid = LocalGrid(make_client_app(homes), PARTNERS)
    summary = run_job_on_grid(grid, job, SPEC, num_partners=PARTNERS)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    partners = summary["partners"]
    assert sorted(p["name"] for p in partners) == sorted(f"p{i}" for i in range(PARTNERS))
    assert all(p["rounds_trained"] == 1 and 0 < p["epsilon_spent"] <= 3.0 for p in partners)
    assert not [k for k in job_matrices.CACHE._entries if k[1] == job.run_id]  # the job's matrices are gone
