"""`fedcustomer query`, `rfm` and `budget show`: outputs, acceptance against true values, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.cli import analytics as analytics_cli
from fedcustomer.privacy.dp.budget import DatasetBudget

from .cli_runner import only_group, run


@pytest.fixture(autouse=True)
def analytics_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    only_group(monkeypatch, analytics_cli.register)


def test_rfm_show_truth_intervals_contain_true_sizes_and_ledger_shows_the_charge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rfm"
    code, stdout, err = run(
        [
            "rfm",
            "--epsilon",
            "1",
            "--show-truth",
            "--seed",
            "7",
            "--confidence",
            "0.9999",
            "--out",
            str(out),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    payload = json.loads(stdout)
    assert (out / "rfm.json").exists() and (out / "rfm.png").stat().st_size > 0
    for row, truth in zip(payload["rows"], payload["truth"]):
        assert row["group"] == truth["group"]
        assert row["count"]["ci_low"] <= truth["count"] <= row["count"]["ci_high"]
    code, stdout, _ = run(
        ["budget", "show", "--home", str(out / "partners" / "retail_east"), "--json"], capsys
    )
    report = json.loads(stdout)
    [ds] = report["datasets"]
    assert [c["query_id"] for c in ds["charges"]] == [payload["query_id"]]
    assert report["totals"]["epsilon"] == pytest.approx(1.0)


def test_show_truth_is_refused_for_partner_homes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["rfm", "--homes", str(tmp_path), "--show-truth"], capsys)
    assert code == 3 and "only allowed for a local simulated run" in err


def test_query_spec_file_runs_and_writes_result_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "q.yaml"
    spec.write_text(
        "id: spend-by-region\ndataset: retailer\nkind: sum\nfield: monetary_12m\nbounds: [0, 1000]\n"
        "group_by: [region]\ngroups: {region: [north, south, east, west, central]}\nepsilon: 0.5\n"
    )
    out = tmp_path / "q"
    code, stdout, err = run(
        ["query", "--spec", str(spec), "--data", "synthetic", "--partners", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "spend-by-region" in stdout and "clamped" in stdout
    result = json.loads((out / "result.json").read_text())
    assert len(result["rows"]) == 5 and result["partners"] == ["retail_east", "retail_west"]
    # asking again with the same id replays the same release without a new charge
    code, _, _ = run(
        ["query", "--spec", str(spec), "--homes", str(out / "partners"), "--out", str(out)], capsys
    )
    assert code == 0
    code, stdout, _ = run(
        ["budget", "show", "--home", str(out / "partners" / "retail_west"), "--json"], capsys
    )
    charges = [c for ds in json.loads(stdout)["datasets"] for c in ds["charges"]]
    assert [c["query_id"] for c in charges].count("spend-by-region") == 1


def test_query_over_budget_exits_with_the_budget_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "q.json"
    spec.write_text(json.dumps({"dataset": "retailer", "kind": "count", "epsilon": 50}))
    code, _, err = run(
        [
            "query",
            "--spec",
            str(spec),
            "--data",
            "synthetic",
            "--partners",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 6 and "past this partner's target" in err
    code, stdout, _ = run(
        ["budget", "show", "--home", str(tmp_path / "o" / "partners" / "retail_east"), "--json"], capsys
    )
    ds = json.loads(stdout)["datasets"][0]
    assert ds["charges"] == [] and len(ds["refusals"]) == 1


def test_budget_set_is_audited_refuses_a_silent_change_and_needs_a_partner_admin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.audit.writer import AuditLog
    from tests.people import people_home

    from .identities import as_, governed_home

    home, people = governed_home(tmp_path, monkeypatch)
    base = ["budget", "set", "--home", str(home.root)]
    # dana is registered as a data scientist: her role comes from the registry, never the command line
    code, _, err = run([*base, *as_(people["dana"]), "--epsilon", "2", "--delta", "1e-5"], capsys)
    assert code == 5 and "policy_edit" in err and home.config().budget is None
    admin = [*base, *as_(people["alice"])]
    code, out, err = run([*admin, "--epsilon", "2", "--delta", "1e-5"], capsys)
    assert code == 0, err
    assert home.config().budget_for() == DatasetBudget(2.0, 1e-5)
    code, _, err = run([*admin, "--epsilon", "9", "--delta", "1e-5"], capsys)
    assert code == 3 and "--replace" in err and home.config().budget_for().epsilon == 2.0
    code, out, err = run([*admin, "--epsilon", "1", "--delta", "1e-5", "--replace"], capsys)
    assert code == 0 and "was 2" in out
    entries = [e for e in AuditLog(home.audit_dir) if e.action == "budget_set"]
    assert [(e.actor, e.decision) for e in entries] == [
        ("dana", "denied"),
        ("alice", "allowed"),
        ("alice", "allowed"),
    ]
    code, out, _ = run(["budget", "show", "--home", str(home.root), "--json"], capsys)
    assert json.loads(out)["totals"]["epsilon_target"] == 1.0


def test_budget_set_needs_an_initialised_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedcustomer.partner.home import PartnerHome

    home = PartnerHome.create(tmp_path / "bare", "bare")
    code, _, err = run(
        ["budget", "set", "--home", str(home.root), "--identity", str(tmp_path / "x.key")]
        + ["--epsilon", "2", "--delta", "1e-5"],
        capsys,
    )
    assert code == 3 and "fedcustomer init" in err and home.config().budget is None


def test_budget_set_selects_pld_and_budget_verify_recomputes_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.audit.writer import AuditLog
    from fedcustomer.privacy.dp.accounting import GaussianSteps
    from tests.people import people_home

    from .identities import as_, governed_home

    home, people = governed_home(tmp_path, monkeypatch)
    admin = [
        "budget",
        "set",
        "--home",
        str(home.root),
        *as_(people["alice"]),
        "--epsilon",
        "8",
        "--delta",
        "1e-5",
    ]
    assert run(admin, capsys)[0] == 0
    home.ledger("loans").charge_gaussian("run:a:round:1", GaussianSteps(1.1, 0.05, 20))  # under RDP
    code, _, err = run([*admin, "--replace", "--accountant", "moments"], capsys)
    assert code == 3 and "rdp, pld" in err
    code, out, err = run([*admin, "--replace", "--accountant", "pld"], capsys)
    assert code == 0 and "accountant pld" in out, err
    assert home.config().accountant == "pld" and 'accountant = "pld"' in home.config_path.read_text()
    assert [e.details.get("accountant") for e in AuditLog(home.audit_dir) if e.action == "budget_set"][
        -1
    ] == "pld"
    charge = home.ledger("loans").charge_gaussian("run:a:round:2", GaussianSteps(1.1, 0.05, 20))
    assert charge.accountant == "pld" and charge.pld_interval == 1e-4
    code, out, _ = run(["budget", "show", "--home", str(home.root), "--json"], capsys)
    shown = json.loads(out)
    assert shown["accountant"]["accountant"] == "pld"
    assert [c["accountant"] for c in shown["datasets"][0]["charges"]] == ["rdp", "pld"]
    code, out, err = run(["budget", "verify", "--home", str(home.root), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["mismatches"] == 0 and [r["accountant"] for r in report["rows"]] == ["rdp", "pld"]
    assert report["epsilon_now"] == pytest.approx(charge.epsilon_total)
    with sqlite3.connect(home.ledger_path) as conn:  # a row whose total was lowered after the fact
        conn.execute(
            "UPDATE charges SET epsilon_total = epsilon_total / 2 WHERE charge_key = 'run:a:round:2'"
        )
    code, out, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "do not recompute" in err and "MISMATCH" in out


def test_budget_verify_names_a_distributed_row_charged_with_noise_its_trust_does_not_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.dp import distributed as dd
    from tests.people import people_home

    from .identities import as_, governed_home

    home, people = governed_home(tmp_path, monkeypatch)
    budget = ["budget", "set", "--home", str(home.root), *as_(people["alice"]), "--epsilon", "50"]
    assert run([*budget, "--delta", "1e-5"], capsys)[0] == 0
    untrusted = dd.DistributedStep(1.3, 0.05, 0.7, 4, shares=4)
    ledger = home.ledger("loans")
    for r, steps in enumerate((untrusted.charged_steps(), untrusted.coordinator_steps())):
        eps_a, eps_b = dd.both_epsilons(ledger.all_charges(), 1e-5, extra=untrusted)
        ledger.charge_gaussian(
            f"run:d:round:{r + 1}",
            steps,  # round 2 is charged the coordinator's noise although the partner did not trust SecAgg+
            mechanism=dd.MECHANISM,
            details=untrusted.details()
            | {"epsilon_total_coordinator": eps_a, "epsilon_total_single_update": eps_b},
        )
    code, out, err = run(["budget", "verify", "--home", str(home.root), "--json"], capsys)
    report = json.loads(out)
    assert code == 7 and report["mismatches"] == 1
    assert [r["problems"] for r in report["rows"]] == [
        [],
        ["charged noise multiplier 1.3 is not the single_update view's 0.65"],
    ]
    assert "seq 2, 'run:d:round:2': charged noise multiplier 1.3 is not the single_update view's 0.65" in err
    code, out, err = run(["budget", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "MISMATCH" in out and "not the single_update view's 0.65" in err
    # (the table folds the problem's text to the terminal's width; --json above has it whole)
    code, out, _ = run(["budget", "show", "--home", str(home.root)], capsys)
    assert code == 0 and "SecAgg+ trust not accepted" in out  # each row's cell: test_budget_show_names_...


def test_budget_show_names_a_distributed_rounds_charged_view_and_its_event() -> None:
    from fedcustomer.cli.analytics import _mechanism_cell
    from fedcustomer.privacy.dp import distributed as dd

    trusted = dd.DistributedStep(1.3, 0.05, 0.7, 3, trust_secagg=True, shares=3)
    row = {"mechanism": dd.MECHANISM, "details": trusted.details() | {"event_probability": 6e-15}}
    assert (
        _mechanism_cell(row)
        == "dpsgd-distributed\ncharged: coordinator (SecAgg+ trusted)\nevent p 6.0e-15 in delta"
    )
    assert _mechanism_cell({"mechanism": "laplace", "details": {}}) == "laplace"


def test_query_on_homes_with_people_is_signed_with_the_askers_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a new-user trial: who asked was a name typed into the query file
    from fedcustomer.data.people_admin import PeopleAdmin
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.partner.home import PartnerHome

    from .identities import as_, cast_keys, use_passphrase

    use_passphrase(monkeypatch)
    people = cast_keys(tmp_path / "keys", {"alice": "partner_admin", "dana": "data_scientist"})
    spec = tmp_path / "q.json"
    spec.write_text(json.dumps({"id": "q-signed", "dataset": "retailer", "kind": "count", "epsilon": 0.5}))
    out = tmp_path / "q"
    code, _, err = run(
        ["query", "--spec", str(spec), "--data", "synthetic", "--partners", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    homes = sorted((out / "partners").glob("retail_*"))
    for home in homes:
        with PartnerStore.open(PartnerHome(home)) as store:
            PeopleAdmin(store).create(people["alice"].signer, "alice")
            PeopleAdmin(store).add(
                people["alice"].signer, people["dana"].signer.public_key, "dana", "data_scientist"
            )
    spec.write_text(json.dumps({"id": "q-signed-2", "dataset": "retailer", "kind": "count", "epsilon": 0.5}))
    args = ["query", "--spec", str(spec), "--homes", str(out / "partners"), "--out", str(out)]
    code, _, err = run(args, capsys)
    assert code == 5 and "query --identity FILE" in " ".join(
        err.split()
    )  # refused by every partner, unsigned
    code, _, err = run([*args, *as_(people["dana"])], capsys)
    assert code == 0, err
    code, stdout, _ = run(["budget", "show", "--home", str(homes[0]), "--json"], capsys)
    charges = [c for ds in json.loads(stdout)["datasets"] for c in ds["charges"]]
    assert [c["query_id"] for c in charges] == ["q-signed", "q-signed-2"]
