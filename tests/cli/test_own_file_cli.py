"""A partner's own file end to end, as docs/GOVERNANCE.md walks it: init, budget, schema, ingest, features, training.

The file has a text column, one-hot-style and dotted column names and no id column.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.data.schema import Schema, Validation, replace_field
from tests.cli.cli_runner import run
from tests.data.test_own_file import own_file


def fedcustomer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fedcustomer", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(argv, capsys)
    assert code == 0, out + err
    return " ".join(out.split())  # rich wraps long lines


def test_own_file_through_the_governed_store_to_a_dp_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cli.identities import cast_keys, use_passphrase

    use_passphrase(monkeypatch)
    alice = [
        "--identity",
        str(cast_keys(tmp_path / "people-keys", {"alice": "partner_admin"})["alice"].key_file),
    ]
    whole = pd.read_csv(own_file(tmp_path / "all.csv", n=3000, seed=4))
    files = {"bank_a": tmp_path / "bank_a.csv", "bank_b": tmp_path / "bank_b.csv"}
    whole.iloc[:1500].to_csv(files["bank_a"], index=False)
    whole.iloc[1500:].to_csv(files["bank_b"], index=False)
    homes = tmp_path / "homes"
    schema_path = tmp_path / "customers.yaml"
    out = _ok(
        [
            "schema",
            "draft",
            "--input",
            str(files["bank_a"]),
            "--output",
            str(schema_path),
            "--dataset",
            "customers",
            "--id-from-row",
        ],
        capsys,
    )
    assert "emp.var.rate -> emp_var_rate" in out
    # review: the admin declares public bounds for age (domain knowledge) before ingesting
    schema = replace_field(Schema.load(schema_path), "age", validation=Validation(min=18, max=100))
    schema.save(schema_path)
    # the drafted categories of 'housing' were observed in bank_a's file: the admin reviews and confirms them
    assert "housing: its 3 categories were observed in this file" in out
    _ok(["schema", "confirm", "--schema", str(schema_path), "--field", "housing"], capsys)
    for name, path in files.items():
        home = str(homes / name)
        _ok(["init", "--home", home, "--name", name, *alice, "--admin", "alice"], capsys)
        _ok(["budget", "set", "--home", home, "--epsilon", "3", "--delta", "1e-5", *alice], capsys)
        _ok(
            [
                "ingest",
                "--schema",
                str(schema_path),
                "--input",
                str(path),
                "--home",
                home,
                *alice,
                "--id-from-row",
            ],
            capsys,
        )
    spec_path = tmp_path / "spec.json"
    code, out, err = run(
        [
            "features",
            "draft",
            "--home",
            str(homes / "bank_a"),
            "--dataset",
            "customers",
            "--label",
            "default",
            "--output",
            str(spec_path),
        ],
        capsys,
    )
    assert code != 0 and "without declared bounds: emp_var_rate, checking_status_a11, job_admin_" in " ".join(
        err.split()
    )
    _ok(
        [
            "features",
            "draft",
            "--home",
            str(homes / "bank_a"),
            "--dataset",
            "customers",
            "--label",
            "default",
            "--output",
            str(spec_path),
            "--bound",
            "emp_var_rate=-6:6",
            "--bound",
            "checking_status_a11=0:1",
            "--bound",
            "job_admin_=0:1",
        ],
        capsys,
    )
    spec = json.loads(spec_path.read_text())
    assert {"type": "categorical", "name": "housing", "categories": ["free", "own", "rent"]} in spec[
        "features"
    ]

    result = fedcustomer(
        "run",
        "--homes",
        str(homes),
        "--data",
        "customers",
        "--feature-spec",
        str(spec_path),
        "--partners",
        "2",
        "--rounds",
        "3",
        "--out",
        str(tmp_path / "run"),
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    assert summary["metrics"]["auc"] > 0.65  # DP noise from the OS RNG: about 0.75 over runs
    for p in summary["partners"]:
        assert 0 < p["epsilon_spent"] <= p["epsilon_target"] == 3.0
    assert not any("NOT covered" in n for n in summary["notices"])  # every bound and category was declared
    assert json.loads((tmp_path / "run" / "feature_spec.json").read_text()) == spec


def test_own_file_with_run_data_path_records_its_notices(tmp_path: Path) -> None:
    data = own_file(tmp_path / "marketing.csv", n=1200)
    result = fedcustomer(
        "run",
        "--data",
        str(data),
        "--label",
        "default",
        "--partners",
        "2",
        "--rounds",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)  # notices go to stderr, so stdout stays JSON
    notices = " ".join(summary["notices"])
    assert "'emp.var.rate' -> 'emp_var_rate'" in notices
    assert "housing (3 categories)" in notices and "training rows (held-out rows never used)" in notices
    assert "no customer id column" in notices
    assert "notice:" in result.stderr and "Traceback" not in result.stderr
    assert (
        str(tmp_path / "run") not in result.stderr
    )  # no internal (partner home) paths in what the user reads
