"""Many partners on the in-process grid: a DP round with 50 partner homes completes."""

from pathlib import Path

from fedcustomer.apps.client import make_client_app
from fedcustomer.clients import job_matrices
from fedcustomer.data import provision
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.run import run_job_on_grid
from tests.toy import SPEC, toy_frame

PARTNERS = 50


def test_fifty_partners_complete_a_dp_round(tmp_path: Path) -> None:
    # Fifty homes provisioned the product's way, each with its own keys, store, ledger and audit
    # log (no copies); their files share columns, so they share one drafted schema as
    # prepare_partners gives them. Provisioning cost is measured by benchmarks/bench_scale.py.
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
    parts = []
    for i in range(PARTNERS):
        train, test = toy_frame(30, i), toy_frame(8, 1000 + i)
        train["customer_id"] = f"p{i}-" + train["customer_id"]
        test["customer_id"] = f"p{i}-t" + test["customer_id"]
        parts.append((train, test))
    schema = provision.shared_schema(job.data, job.task, SPEC, parts, tmp_path)
    homes = []
    for i, (train, test) in enumerate(parts):
        home, _ = provision.provision_partner(
            tmp_path / f"p{i}",
            f"p{i}",
            source=job.data,
            task=job.task,
            spec=SPEC,
            train=train,
            test=test,
            budget=DatasetBudget(job.epsilon, job.delta),
            schema=schema,
        )
        homes.append(str(home.root))
    assert len({(Path(h) / "keys" / "keyring.json").read_bytes() for h in homes}) == PARTNERS
    grid = LocalGrid(make_client_app(homes), PARTNERS)
    summary = run_job_on_grid(grid, job, SPEC, num_partners=PARTNERS)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 1
    partners = summary["partners"]
    assert sorted(p["name"] for p in partners) == sorted(f"p{i}" for i in range(PARTNERS))
    assert all(p["rounds_trained"] == 1 and 0 < p["epsilon_spent"] <= 3.0 for p in partners)
    assert not [k for k in job_matrices.CACHE._entries if k[1] == job.run_id]  # the job's matrices are gone
