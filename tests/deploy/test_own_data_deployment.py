"""A partner's own file on the Deployment Engine: ingested homes, a feature spec from the schema, real processes.

Two partners ingest their halves of a file with a text column, odd column names and no id
column; the coordinator runs a job with the spec `features draft` wrote. A job on a dataset
the partners do not hold fails with an error naming both partners and their reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.cli import deploy
from fedcustomer.data.feature_draft import spec_from_schema
from fedcustomer.data.provision import admin
from fedcustomer.data.schema_draft import confirm_categories, draft_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy import node as nd
from fedcustomer.deploy import pki
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.cli.cli_runner import only_group, run
from tests.data.test_own_file import own_file

pytestmark = pytest.mark.slow

PARTNERS = ("bank_a", "bank_b")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    whole = pd.read_csv(own_file(root / "all.csv", n=1600, seed=5))
    schema = draft_schema(root / "all.csv", dataset="customers", id_from_row=True)
    schema = confirm_categories(schema, ["housing"])  # the admin reviewed the drafted categories
    certs = pki.make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coordinator")
    port = fl.free_port()
    procs = []
    try:
        procs.append(co.start_superlink(cdir, port=port, certs=certs))
        for i, name in enumerate(PARTNERS):
            part = root / f"{name}.csv"
            whole.iloc[i * 800 : (i + 1) * 800].to_csv(part, index=False)
            home = PartnerHome.create(root / name, name, budget=DatasetBudget(3.0, 1e-5))
            with PartnerStore.init(home, name, actor=admin(name)) as store:
                store.ingest(admin(name), schema, part, id_from_row=True)
            keys = pki.make_node_keys(home.keys_dir)
            co.register_node(cdir, keys.public_key, name)
            log = home.state_dir / "supernode.log"
            proc = nd.start_supernode(
                home.root,
                superlink=f"127.0.0.1:{port}",
                root_cert=certs.ca_cert,
                auth_key=keys.private_key,
                runtime_port=fl.free_port(),
                partner=name,
            )
            procs.append(proc)
            nd.wait_connected(proc, log)
        spec, _ = spec_from_schema(
            schema,
            task="repayment",
            label="default",
            bounds={
                "age": (18, 100),
                "emp_var_rate": (-6, 6),
                "checking_status_a11": (0, 1),
                "job_admin_": (0, 1),
            },
        )
        (root / "spec.json").write_text(json.dumps(spec.to_dict()))
        yield root, cdir
    finally:
        for proc in reversed(procs):
            fl.stop(proc)


def _coordinator_run(root: Path, cdir: co.CoordinatorDir, data: str, out: str, monkeypatch, capsys):
    monkeypatch.chdir(root)  # the spec is named relative to the user's shell
    only_group(monkeypatch, deploy.register)
    return run(
        [
            "coordinator",
            "run",
            "--workdir",
            str(cdir.root),
            "--data",
            data,
            "--feature-spec",
            "spec.json",
            "--partners",
            "2",
            "--min-partners",
            "2",
            "--rounds",
            "2",
            "--federated-eval",
            "final",
            "--round-timeout",
            "120",
            "--wait-for-partners",
            "30",
            "--out",
            out,
        ],
        capsys,
    )


def test_own_data_trains_on_the_deployment_engine(federation, monkeypatch, capsys):
    root, cdir = federation
    code, out, err = _coordinator_run(root, cdir, "customers", str(root / "run"), monkeypatch, capsys)
    assert code == 0, out + err
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert sorted(p["name"] for p in summary["partners"]) == list(PARTNERS)
    assert all(0 < p["epsilon_spent"] <= 3.0 for p in summary["partners"])
    assert "auc" in summary["metrics"]


def test_a_dataset_nobody_holds_fails_naming_the_partners(federation, monkeypatch, capsys):
    root, cdir = federation
    code, out, err = _coordinator_run(root, cdir, "other", str(root / "run-other"), monkeypatch, capsys)
    text = " ".join((out + err).split())
    assert code != 0 and "Traceback" not in text and "NoneType" not in text
    assert "failed at every round: bank_a, bank_b" in text and "holds no dataset 'other'" in text
