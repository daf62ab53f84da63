"""The governance commands end to end, through the real `fedcustomer` entry point."""

import json
import re

import pandas as pd
import pytest

from fedcustomer.errors import AccessDenied, ConfigError, DataError, KeyMaterialError, SchemaError
from tests.data.test_ingest import bank_frame, plant_bad_rows

from .cli_runner import run
from .identities import as_, cast_keys, register, use_passphrase


@pytest.fixture()
def people(tmp_path, monkeypatch):
    """Each person's own identity key file (outside any partner home)."""
    use_passphrase(monkeypatch)
    return cast_keys(tmp_path / "people-keys")


@pytest.fixture()
def ADMIN(people):
    return as_(people["alice"])


@pytest.fixture()
def bank_csv(tmp_path):
    frame, _ = plant_bad_rows(bank_frame(25))
    path = tmp_path / "bank.csv"
    frame.to_csv(path, index=False)
    return path, frame


@pytest.fixture()
def home(tmp_path, capsys, bank_csv, people, ADMIN):
    h = tmp_path / "home"
    code, out, err = run(["init", "--home", str(h), "--name", "bank_a", *ADMIN, "--admin", "alice"], capsys)
    assert code == 0, err
    assert "first admin: alice" in out and (h / "people.jsonl").exists()
    register(h, people)
    code, _, err = run(
        ["ingest", "--schema", "bank", "--input", str(bank_csv[0]), "--home", str(h), *ADMIN], capsys
    )
    assert code == 0, err
    return h


def test_ingest_writes_quality_json_and_reingest_adds_nothing(home, bank_csv, tmp_path, capsys, ADMIN):
    quality = tmp_path / "q.json"
    code, out, _ = run(
        [
            "ingest",
            "--schema",
            "bank",
            "--input",
            str(bank_csv[0]),
            "--home",
            str(home),
            *ADMIN,
            "--quality",
            str(quality),
            "--json",
        ],
        capsys,
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["skipped_file"] is True and doc["rows"]["inserted"] == 0
    assert json.loads(quality.read_text())["format"] == "fedcustomer.quality/1"
    first = json.loads((home / "state" / "quality.json").read_text())
    assert first["rows"]["read"] == 25 and not first["skipped_file"]


def test_first_ingest_creates_the_home(tmp_path, bank_csv, capsys, ADMIN):
    h = tmp_path / "fresh"
    code, _, err = run(
        ["ingest", "--schema", "bank", "--input", str(bank_csv[0]), "--home", str(h), *ADMIN], capsys
    )
    assert code == ConfigError.exit_code and "--admin" in err and not (h / "store.db").exists()
    code, out, err = run(
        ["ingest", "--schema", "bank", "--input", str(bank_csv[0]), "--home", str(h), *ADMIN]
        + ["--admin", "alice", "--json"],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rows"]["invalid"] == 5 and doc["rows"]["inserted"] == 20
    assert (
        (h / "store.db").exists() and (h / "keys" / "keyring.json").exists() and (h / "partner.toml").exists()
    )
    assert (h / "people.jsonl").exists()  # the first ingest's signer became the home's first admin


def test_read_to_csv_for_training_pipeline(home, tmp_path, capsys, monkeypatch):
    out_csv = tmp_path / "out.csv"
    monkeypatch.delenv("FEDCUSTOMER_PASSPHRASE")  # the node's service key is not encrypted
    code, out, err = run(
        [
            "read",
            "--home",
            str(home),
            "--identity",
            str(home / "keys" / "service_training_pipeline.pem"),
            "--purpose",
            "training",
            "--fields",
            "age,income,defaulted",
            "--where",
            "region=north",
            "--where",
            "region=south",
            "--output",
            str(out_csv),
        ],
        capsys,
    )
    assert code == 0, err
    frame = pd.read_csv(out_csv, index_col="pseudonym")
    assert list(frame.columns) == ["age", "income", "defaulted"]
    assert 0 < len(frame) <= 20


def test_a_marketing_read_says_which_columns_are_masked(home, tmp_path, capsys, people):
    # found by a new-user trial: masked values (an age of 30 for 34) read like real ones, and only the
    # audit entry's views said which were masked
    out_csv = tmp_path / "marketing.csv"
    args = [
        "read",
        "--home",
        str(home),
        *as_(people["mia"]),
        "--purpose",
        "marketing",
        "--fields",
        "region,income",
    ]
    code, out, err = run([*args, "--output", str(out_csv)], capsys)
    assert code == 0, err
    assert "masked for purpose marketing (each by its schema rule): income" in " ".join(out.split())
    code, out, err = run(["read", "--home", str(home), *as_(people["dana"]), "--purpose", "training"], capsys)
    assert code == 0, err
    assert "masked for purpose" not in out  # nothing masked: nothing said


def test_denied_read_exits_with_access_denied_code(home, capsys, people):
    code, _, err = run(
        [
            "read",
            "--home",
            str(home),
            *as_(people["mia"]),  # registered as marketing_analyst
            "--purpose",
            "marketing",
            "--fields",
            "full_name",
        ],
        capsys,
    )
    assert code == AccessDenied.exit_code == 5
    assert "full_name" in err and "Traceback" not in err


def test_approval_flow_then_clear_core_read(home, bank_csv, capsys, people, ADMIN):
    risk = as_(people["rick"])
    code, out, _ = run(
        [
            "approvals",
            "request",
            "--home",
            str(home),
            *risk,
            "--dataset",
            "bank",
            "--fields",
            "full_name",
            "--purpose",
            "risk_review",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    rid = json.loads(out)["request_id"]
    code, out, _ = run(["approvals", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert [p["request_id"] for p in json.loads(out)] == [rid]
    assert run(["approvals", "approve", rid, "--home", str(home), *ADMIN], capsys)[0] == 0
    assert (
        run(["approvals", "approve", rid, "--home", str(home), *ADMIN], capsys)[0] == 5
    )  # same approver again
    code, out, _ = run(
        [
            "approvals",
            "approve",
            rid,
            "--home",
            str(home),
            *as_(people["carol"]),
            "--json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["complete"] is True
    code, out, err = run(
        [
            "read",
            "--home",
            str(home),
            *risk,
            "--purpose",
            "risk_review",
            "--fields",
            "full_name",
            "--approval",
            rid,
            "--limit",
            "100",
        ],
        capsys,
    )
    assert code == 0, err
    names = set(bank_csv[1]["full_name"].iloc[5:])
    assert any(name in out for name in names)


def test_keys_rotate_list_retire(home, capsys, people, ADMIN):
    code, out, _ = run(["keys", "retire", "1", "--home", str(home), *ADMIN], capsys)
    assert code == KeyMaterialError.exit_code
    code, out, _ = run(["keys", "rotate", "--home", str(home), *ADMIN, "--json"], capsys)
    assert code == 0 and json.loads(out)["active_version"] == 2
    assert run(["keys", "retire", "1", "--home", str(home), *ADMIN], capsys)[0] == 0
    code, out, _ = run(["keys", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert {v["version"]: v["status"] for v in json.loads(out)} == {1: "retired", 2: "active"}
    code, _, _ = run(["keys", "list", "--home", str(home), *as_(people["mia"])], capsys)
    assert code == AccessDenied.exit_code


def test_erase_requires_permission_and_never_echoes_the_id(home, bank_csv, capsys, people, ADMIN):
    cid = bank_csv[1].at[10, "customer_id"]
    code, _, _ = run(
        [
            "erase",
            "--customer",
            cid,
            "--home",
            str(home),
            *as_(people["mia"]),
            "--yes",
        ],
        capsys,
    )
    assert code == AccessDenied.exit_code
    code, out, err = run(["erase", "--customer", cid, "--home", str(home), *ADMIN, "--yes", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["found"] and result["datasets"] == {"bank": 1}
    assert cid not in out


def test_erasing_an_id_the_store_does_not_hold_needs_not_held(home, capsys, ADMIN):
    """A mistyped id must not silently block a future customer: refused, nothing recorded."""
    store_before = (home / "store.db").read_bytes()
    audit_before = (home / "audit" / "audit.jsonl").read_bytes()
    typo = "NO-SUCH-CUSTOMER-7731"
    code, out, err = run(["erase", "--customer", typo, "--home", str(home), *ADMIN, "--yes"], capsys)
    assert code == DataError.exit_code and "--not-held" in err and typo not in err + out
    assert (home / "store.db").read_bytes() == store_before
    assert b"erase" not in (home / "audit" / "audit.jsonl").read_bytes()[len(audit_before) :]
    code, out, err = run(
        ["erase", "--customer", typo, "--home", str(home), *ADMIN, "--yes", "--not-held", "--json"], capsys
    )
    assert code == 0, err
    assert not json.loads(out)["found"] and typo not in out


def test_schema_draft(tmp_path, capsys):
    src = tmp_path / "customers.csv"
    bank_frame(12).to_csv(src, index=False)
    out = tmp_path / "draft.yaml"
    code, _, err = run(["schema", "draft", "--input", str(src), "--output", str(out)], capsys)
    assert code == 0, err
    from fedcustomer.data.schema import Schema

    schema = Schema.load(out)
    assert (
        schema.field("national_id").tier == "core"
        and schema.field("national_id").validation.checksum == "prc_id"
    )
    assert (
        run(["schema", "draft", "--input", str(src), "--output", str(out)], capsys)[0]
        == ConfigError.exit_code
    )


def test_bad_schema_and_missing_home_give_clear_exit_codes(tmp_path, bank_csv, capsys, ADMIN):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nfields: []\n")
    code, _, err = run(
        ["ingest", "--schema", str(bad), "--input", str(bank_csv[0]), "--home", str(tmp_path / "h"), *ADMIN],
        capsys,
    )
    assert code == SchemaError.exit_code and "bad.yaml" in err
    code, _, err = run(
        ["read", "--home", str(tmp_path / "none"), *ADMIN, "--purpose", "administration"], capsys
    )
    assert code == ConfigError.exit_code and "fedcustomer init" in err


def test_wrong_keyring_exit_code(home, tmp_path, capsys, ADMIN):
    other = tmp_path / "other"
    assert run(["init", "--home", str(other), "--name", "b", *ADMIN, "--admin", "alice"], capsys)[0] == 0
    (home / "keys" / "keyring.json").write_bytes((other / "keys" / "keyring.json").read_bytes())
    code, _, err = run(["keys", "list", "--home", str(home), *ADMIN], capsys)
    assert code == KeyMaterialError.exit_code and "keyring" in err


NOTE_SCHEMA = """dataset: notes
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: note, type: string, tier: public, role: feature}
"""


def test_read_output_is_owner_only_and_formula_cells_are_escaped(tmp_path, capsys, ADMIN):
    schema = tmp_path / "notes.yaml"
    schema.write_text(NOTE_SCHEMA)
    src = tmp_path / "notes.csv"
    pd.DataFrame(
        {"customer_id": ["C1", "C2", "C3"], "note": ['=HYPERLINK("http://evil","x")', "@SUM(A1)", "plain"]}
    ).to_csv(src, index=False)
    h = tmp_path / "h"
    code, _, err = run(
        [
            "ingest",
            "--schema",
            str(schema),
            "--input",
            str(src),
            "--home",
            str(h),
            *ADMIN,
            "--name",
            "shop",
            "--admin",
            "alice",
        ],
        capsys,
    )
    assert code == 0, err
    out_csv = tmp_path / "notes-out.csv"
    code, _, err = run(
        ["read", "--home", str(h), *ADMIN, "--purpose", "administration", "--output", str(out_csv)], capsys
    )
    assert code == 0, err
    assert oct(out_csv.stat().st_mode & 0o777) == oct(0o600)
    notes = sorted(pd.read_csv(out_csv, index_col="pseudonym", keep_default_na=False)["note"])
    assert notes == ['\'=HYPERLINK("http://evil","x")', "'@SUM(A1)", "plain"]


@pytest.mark.timeout(120)
def test_fifo_keyring_and_world_writable_keys_dir_give_clear_errors_not_a_hang(home, capsys, ADMIN):
    import os

    keyring = home / "keys" / "keyring.json"
    saved = keyring.read_bytes()
    keyring.unlink()
    os.mkfifo(keyring, 0o600)
    code, _, err = run(["keys", "list", "--home", str(home), *ADMIN], capsys)
    err = " ".join(err.split())  # the message wraps at the terminal's width, wherever the home's path ends
    assert code == KeyMaterialError.exit_code and "not a regular file" in err and "Traceback" not in err
    keyring.unlink()
    keyring.write_bytes(saved)
    os.chmod(keyring, 0o600)
    os.chmod(home / "keys", 0o777)
    code, _, err = run(["keys", "list", "--home", str(home), *ADMIN], capsys)
    err = " ".join(err.split())
    assert code == KeyMaterialError.exit_code and "chmod 700" in err and "Traceback" not in err
    os.chmod(home / "keys", 0o700)
    assert run(["keys", "list", "--home", str(home), *ADMIN], capsys)[0] == 0


def test_mixed_script_actor_name_is_refused_with_a_clear_error(home, tmp_path, capsys, ADMIN):
    """Names now enter at `people add`; a look-alike name is refused there, and so never acts."""
    from .identities import cast_keys

    twin = cast_keys(tmp_path / "twin-keys", {"r\u0456ck": "risk_officer"})["r\u0456ck"]
    code, _, err = run(
        ["people", "add", "--home", str(home), *ADMIN, "--name", "r\u0456ck", "--role", "risk_officer"]
        + ["--public-key", f"{twin.key_file}.pub"],
        capsys,
    )
    assert code == ConfigError.exit_code and "mixes scripts" in err and "Traceback" not in err
    code, _, err = run(["approvals", "list", "--home", str(home), *as_(twin)], capsys)
    assert code == AccessDenied.exit_code and "not registered" in err


def test_ingest_names_quarantined_rows_by_file_line_without_their_values(tmp_path, capsys, ADMIN):
    frame, expected = plant_bad_rows(bank_frame(12))
    path = tmp_path / "bank.csv"
    frame.to_csv(path, index=False)
    h = str(tmp_path / "h")
    code, out, err = run(
        ["ingest", "--schema", "bank", "--input", str(path), "--home", h, *ADMIN, "--admin", "alice"], capsys
    )
    assert code == 0, err
    lines = path.read_text().splitlines()
    for customer, reasons in expected.items():
        (line,) = [n for n, text in enumerate(lines, start=1) if text.startswith(customer + ",")]
        field, reason = next(iter(reasons.items()))
        assert f"line {line}: {field}: {reason}" in out
    assert frame.at[0, "national_id"] not in out and "a lot" not in out  # core and sensitive values never


def test_missing_key_files_exit_8_in_every_command(home, tmp_path, capsys, people, ADMIN, bank_csv):
    gone = ["--identity", str(tmp_path / "nope.key")]
    for args in (
        ["read", "--home", str(home), *gone, "--purpose", "marketing"],
        ["keys", "list", "--home", str(home), *gone],
        ["ingest", "--schema", "bank", "--input", str(bank_csv[0]), "--home", str(home), *gone],
        ["audit", "query", "--home", str(home), *gone],
        ["approvals", "list", "--home", str(home), *gone],
        ["init", "--home", str(tmp_path / "new"), "--name", "x", *gone, "--admin", "zed"],
        ["people", "add", "--home", str(home), *ADMIN, "--name", "zed", "--role", "marketing_analyst"]
        + ["--public-key", str(tmp_path / "zed.key.pub")],
    ):
        code, _, err = run(args, capsys)
        assert code == KeyMaterialError.exit_code == 8, (args, err)
        assert "not found" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_read_where_on_text_ignores_case_and_help_says_so(home, capsys, people):
    mia = as_(people["mia"])
    base = [
        "read",
        "--home",
        str(home),
        *mia,
        "--purpose",
        "marketing",
        "--fields",
        "region",
        "--limit",
        "100",
    ]
    code, lower, err = run([*base, "--where", "region=north"], capsys)
    assert code == 0, err
    code, upper, err = run([*base, "--where", "region=NORTH"], capsys)
    assert code == 0, err
    assert lower == upper and "0 rows" not in lower
    code, out, _ = run(["read", "--help"], capsys)
    assert "ignoring case" in " ".join(out.split())


def test_read_with_an_unknown_approval_id_says_so_and_how_to_list(home, capsys, people):
    code, _, err = run(
        ["read", "--home", str(home), *as_(people["rick"]), "--purpose", "risk_review"]
        + ["--fields", "full_name", "--approval", "typo-1234"],
        capsys,
    )
    assert code == AccessDenied.exit_code
    text = " ".join(err.split())
    assert "no approval request with that id exists in this home" in text and "approvals list" in text


def test_keys_list_shows_customers_keys_not_the_key_check(home, capsys, ADMIN):
    code, out, err = run(["keys", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert code == 0, err
    (version,) = json.loads(out)
    assert (version["customer_keys"], version["quarantined_rows"], version["key_check"]) == (20, 5, 1)
    code, out, _ = run(["keys", "list", "--home", str(home), *ADMIN], capsys)
    assert "customer keys" in out and re.search(r"│\s+20\s+│\s+5\s+│", out)  # 26 keys in all: not shown
    code, out, _ = run(["keys", "rotate", "--home", str(home), *ADMIN], capsys)
    text = " ".join(out.split())
    assert "re-wrapped 20 customer key(s), 5 quarantined row key(s) and the store's own key check" in text


def test_schema_draft_points_at_the_lines_that_made_a_number_column_text(tmp_path, capsys):
    frame = bank_frame(12).astype(object)
    frame.at[6, "income"] = "SECRET-INCOME"  # a sensitive field: the line is named, the value never
    src = tmp_path / "customers.csv"
    frame.to_csv(src, index=False)
    code, out, err = run(
        ["schema", "draft", "--input", str(src), "--output", str(tmp_path / "d.yaml")], capsys
    )
    assert code == 0, err
    text = " ".join(out.split())
    assert "income: typed string because 1 of 12 values is not a number (first on line 8)" in text
    assert "SECRET" not in out + err and "credit_limit:" not in text  # all-number columns get no note


def test_schema_confirm_rewrites_only_the_named_fields_and_features_draft_then_accepts_them(tmp_path, capsys):
    from tests.data.test_schema_draft import _file

    src = _file(tmp_path)
    schema = tmp_path / "customers.yaml"
    code, out, err = run(["schema", "draft", "--input", str(src), "--output", str(schema)], capsys)
    assert code == 0, err
    assert "observed in this file" in out and "fewer than 10 times" in out and "Ynys" not in out
    spec = tmp_path / "spec.json"
    draft = ["features", "draft", "--schema", str(schema), "--label", "default", "--output", str(spec)]
    draft += ["--bound", "age=18:100"]
    code, _, err = run(draft, capsys)
    assert code == SchemaError.exit_code and "region" in err and "schema confirm" in err and not spec.exists()
    before = schema.read_bytes()
    code, _, err = run(["schema", "confirm", "--schema", str(schema), "--field", "age"], capsys)
    assert code == ConfigError.exit_code and "no observed category list" in err
    assert schema.read_bytes() == before  # a refused confirmation changes nothing
    code, out, err = run(["schema", "confirm", "--schema", str(schema), "--field", "region"], capsys)
    assert code == 0, err
    assert "still observed, not confirmed: plan" in out
    code, _, err = run([*draft, "--drop", "plan"], capsys)
    assert code == 0, err
    assert spec.exists()


def test_ingest_of_a_file_with_no_valid_row_exits_4_with_its_quality_report_and_stores_nothing(
    tmp_path, capsys, people, ADMIN
):
    h = tmp_path / "h"
    code, _, err = run(["init", "--home", str(h), "--name", "bank_a", *ADMIN, "--admin", "alice"], capsys)
    assert code == 0, err
    register(h, people)
    schema = tmp_path / "s.yaml"
    schema.write_text(
        "dataset: accounts\nfields:\n  - {name: customer_id, type: string, tier: core, role: id}\n"
        "  - {name: churn, type: integer, tier: sensitive, role: label}\n"
    )
    data = tmp_path / "c.csv"
    data.write_text("customer_id,churn\nC-1,Yes\nC-2,No\n")
    quality = tmp_path / "q.json"
    args = ["ingest", "--schema", str(schema), "--input", str(data), "--home", str(h), *ADMIN]
    code, out, err = run([*args, "--quality", str(quality)], capsys)
    assert code == DataError.exit_code and "none of the 2 rows was valid" in err + out
    assert "C-1" not in err + out and "Yes" not in err + out
    doc = json.loads(quality.read_text())
    assert doc["rows"]["invalid"] == 2 and doc["rows"]["inserted"] == 0 and doc["ingest_id"] is None
    code, out, err = run(
        ["audit", "query", "--home", str(h), *as_(people["carol"]), "--action", "ingest", "--format", "json"],
        capsys,
    )
    assert code == 0, err
    assert "ingest failed: c.csv: none of the 2 rows was valid" in out and "C-1" not in out
    schema.write_text(schema.read_text().replace("churn, type: integer", "churn, type: string"))
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rows"]["inserted"] == 2  # the same file again, not skipped as already ingested
