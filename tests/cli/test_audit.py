"""`fedcustomer audit verify / query`: verdicts, exit codes, exports."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from tests.people import Person

from .cli_runner import only_group, run
from .identities import as_, cast_keys, use_passphrase


@pytest.fixture(autouse=True)
def audit_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the real ``main()`` error handling over an app holding just the audit group."""
    only_group(monkeypatch, audit_cli.register)


ROWS = [
    ("alice", "analyst", "read", "allowed", ("income", "age"), "credit_risk", ()),
    ("bob", "analyst", "read", "denied", ("phone",), "marketing", ()),
    ("carol", "officer", "approve", "allowed", (), "credit_risk", ("carol",)),
    ("alice", "analyst", "decrypt", "allowed", ("phone",), "credit_risk", ("carol",)),
    ("trainer", "fl_client", "fl_round", "allowed", ("income",), "credit_risk", ()),
    ("alice", "analyst", "query", "allowed", ("income",), "reporting", ()),
]

#: The people of the signed home: who may ask (carol) and who may not.
CAST = {
    "adam": "partner_admin",
    "carol": "compliance_officer",
    "mia": "marketing_analyst",
    "dana": "data_scientist",
    "rick": "risk_officer",
}


def _append_rows(log: AuditLog) -> None:
    for i, (actor, role, action, decision, fields, purpose, approvals) in enumerate(ROWS, start=1):
        log.append(
            actor=actor,
            role=role,
            action=action,
            decision=decision,
            dataset="loans",
            fields=fields,
            purpose=purpose,
            approvals=approvals,
            row_count=10 * i,
            pseudonyms=[f"{i:02d}" * 32],  # pseudonym-shaped: 64 hex characters
            details={"n": i},
        )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A bare home (keys and audit log, no store): the six entries are seqs 1-6."""
    h = PartnerHome.create(tmp_path / "bank", "bank")
    log = AuditLog.open(h.audit_dir, keys_dir=h.keys_dir, checkpoint_every=5)
    _append_rows(log)
    log.close()
    return h.root


@dataclass
class Signed:
    """An initialised home with a people registry, the six entries after the registry's own."""

    root: Path
    base: int  # entries written by init and `people add` before the six
    people: dict[str, Person]

    def seqs(self, relative: list[int]) -> list[int]:
        return [self.base + s for s in relative]


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Signed:
    from fedcustomer.data.people_admin import PeopleAdmin
    from fedcustomer.data.store import PartnerStore

    use_passphrase(monkeypatch)
    people = cast_keys(tmp_path / "people-keys", CAST)
    admin = people["adam"]
    with PartnerStore.init(
        PartnerHome(tmp_path / "signed"), "bank", admin=admin.signer, admin_name="adam"
    ) as store:
        for p in people.values():
            if p.name != "adam":
                PeopleAdmin(store).add(admin.signer, p.signer.public_key, p.name, p.role)
        base = len(list(store.audit))
        _append_rows(store.audit)
    return Signed(tmp_path / "signed", base, people)


@pytest.fixture
def ASKER(signed: Signed) -> list[str]:
    """The registered compliance officer's identity key."""
    return as_(signed.people["carol"])


def _lines(home: Path) -> list[bytes]:
    return (home / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)


def test_verify_intact_home_exits_zero_with_verdict(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", "verify", "--home", str(home)], capsys)
    assert code == 0
    assert "INTACT" in out and "6 entries" in out and "2 signed checkpoints" in out


def test_verify_tampered_log_exits_7_naming_the_entry(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = _lines(home)
    ls[2] = ls[2].replace(b'"actor":"carol"', b'"actor":"caro1"')
    (home / "audit" / "audit.jsonl").write_bytes(b"".join(ls))
    code, out, err = run(["audit", "verify", "--home", str(home)], capsys)
    assert code == IntegrityError.exit_code == 7
    assert "TAMPERED" in out and "entry 3" in out and "first bad entry: 3" in out
    assert "modified" in err and "entry 3" in err


def test_verify_json_report(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = _lines(home)
    del ls[3]
    (home / "audit" / "audit.jsonl").write_bytes(b"".join(ls))
    code, out, _ = run(["audit", "verify", "--home", str(home), "--json"], capsys)
    report = json.loads(out)
    assert code == 7
    assert report["ok"] is False and report["problem"] == "deleted" and report["first_bad_seq"] == 4
    assert set(report) == {
        "ok",
        "entries",
        "checkpoints",
        "first_bad_seq",
        "problem",
        "message",
        "line",
        "file",
    }


def test_verify_json_intact(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", "verify", "--log", str(home / "audit"), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["entries"] == 6


def test_verify_home_trusts_the_keys_dir_not_a_swapped_key_beside_the_log(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = AuditLog.open(tmp_path / "other" / "audit")  # a second node's key
    (home / "audit" / "audit_signing.pub").write_bytes(other.public_key_file.read_bytes())
    code, out, _ = run(["audit", "verify", "--home", str(home)], capsys)
    assert code == 7 and "replaced" in out


def test_verify_truncated_log_exits_7(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / "audit" / "audit.jsonl").write_bytes(b"".join(_lines(home)[:3]))
    code, out, _ = run(["audit", "verify", "--home", str(home), "--json"], capsys)
    assert code == 7 and json.loads(out)["problem"] == "truncated" and json.loads(out)["first_bad_seq"] == 4


def test_verify_missing_audit_dir_is_a_clear_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run(["audit", "verify", "--home", str(tmp_path / "empty")], capsys)
    assert code == ConfigError.exit_code and "no audit log at" in err
    code, _, err = run(["audit", "verify", "--log", str(tmp_path / "nope")], capsys)
    assert code == ConfigError.exit_code and "not found" in err


def test_verify_needs_exactly_one_of_home_and_log(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["audit", "verify"], capsys)
    assert code == ConfigError.exit_code and "exactly one" in err
    code, _, err = run(["audit", "verify", "--home", str(home), "--log", str(home / "audit")], capsys)
    assert code == ConfigError.exit_code


def test_verify_with_unreadable_public_key_exits_8(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    code, _, err = run(["audit", "verify", "--log", str(home / "audit"), "--public-key", str(bad)], capsys)
    assert code == KeyMaterialError.exit_code and "not a PEM public key" in err


def test_query_table_lists_matching_entries(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["audit", "query", *ASKER, "--home", str(signed.root), "--actor", "alice"], capsys)
    assert code == 0
    assert "3 audit entries" in out and "alice (analyst)" in out and "decrypt" in out and "bob" not in out


def test_query_json_filters_and_schema(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        ["audit", "query", *ASKER, "--home", str(signed.root), "--field", "phone", "--format", "json"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and doc["count"] == 2 and doc["filters"] == {"field": "phone"}
    assert [e["seq"] for e in doc["entries"]] == signed.seqs([2, 4])
    assert doc["entries"][1]["approvals"] == ["carol"] and doc["entries"][1]["pseudonyms"] == ["04" * 32]


@pytest.mark.parametrize(
    "args, seqs",
    [
        (["--decision", "denied"], [2]),
        (["--role", "officer"], [3]),
        (["--purpose", "credit_risk", "--action", "read"], [1]),
        (["--pseudonym", "05" * 32], [5]),
        # Filters ignore case, as the command's help says: what a person types is a name, not a spelling.
        (["--decision", "DENIED"], [2]),
        (["--role", "Officer"], [3]),
        (["--purpose", "Credit_Risk", "--action", "READ"], [1]),
        (["--since", "2000-01-01", "--until", "2999-01-01"], "all"),
        (["--since", "2999-01-01"], []),
    ],
)
def test_query_filters(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str], args: list[str], seqs: object
) -> None:
    code, out, _ = run(
        ["audit", "query", *ASKER, "--home", str(signed.root), "--format", "json", *args], capsys
    )
    expected = list(range(1, signed.base + 7)) if seqs == "all" else signed.seqs(seqs)  # type: ignore[arg-type]
    assert code == 0 and [e["seq"] for e in json.loads(out)["entries"]] == expected


def test_query_help_says_filters_ignore_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", "query", "--help"], capsys)
    assert code == 0 and "ignores case" in " ".join(out.split())


def test_query_csv_export_to_file(
    signed: Signed, ASKER: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = signed.root
    target = tmp_path / "report.csv"
    code, _, err = run(
        ["audit", "query", *ASKER, "--home", str(home), "--purpose", "credit_risk", "--output", str(target)],
        capsys,
    )
    assert code == 0 and "wrote 4 entries" in err
    assert target.stat().st_mode & 0o777 == 0o600  # entries name people and pseudonyms
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["seq"] for r in rows] == [str(s) for s in signed.seqs([1, 3, 4, 5])]
    assert rows[0]["fields"] == "income;age" and json.loads(rows[0]["details"]) == {"n": 1}
    assert list(rows[0]) == list(audit_cli.CSV_COLUMNS)


def test_query_csv_to_stdout(signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    home = signed.root
    code, out, _ = run(
        ["audit", "query", *ASKER, "--home", str(home), "--format", "csv", "--decision", "denied"], capsys
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 1 and rows[0]["actor"] == "bob" and rows[0]["decision"] == "denied"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--since", "yesterday"], "ISO 8601"),
        (["--format", "xml"], "--format"),
        (["--decision", "maybe"], "--decision"),
        (["--output", "report.txt"], "--format csv or json"),
    ],
)
def test_query_bad_options_are_config_errors(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    home = signed.root
    code, _, err = run(["audit", "query", *ASKER, "--home", str(home), *args], capsys)
    assert code == ConfigError.exit_code and match in err


def test_query_refuses_a_tampered_log_unless_told_not_to_verify(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    home = signed.root
    ls = _lines(home)
    ls[signed.base + 1] = ls[signed.base + 1].replace(b'"actor":"bob"', b'"actor":"bot"')
    (home / "audit" / "audit.jsonl").write_bytes(b"".join(ls))
    code, out, err = run(["audit", "query", *ASKER, "--home", str(home), "--format", "json"], capsys)
    assert code == 7 and out == "" and f"entry {signed.base + 2}" in err and "--no-verify" in err
    code, out, _ = run(
        ["audit", "query", *ASKER, "--home", str(home), "--format", "json", "--no-verify"], capsys
    )
    assert code == 0 and json.loads(out)["entries"][signed.base + 1]["actor"] == "bot"


def test_query_on_an_unparseable_log_exits_7_naming_the_line(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    home = signed.root
    ls = _lines(home)
    ls[signed.base + 1] = b"not json\n"
    (home / "audit" / "audit.jsonl").write_bytes(b"".join(ls))
    code, _, err = run(["audit", "query", *ASKER, "--home", str(home), "--no-verify"], capsys)
    assert code == 7 and "Traceback" not in err  # the store will not act on a log it cannot read
    code, _, err = run(["audit", "query", "--log", str(home / "audit"), "--no-verify"], capsys)
    assert code == 7 and f"line {signed.base + 2}" in err


def test_verify_creates_nothing(signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    home = signed.root
    before = sorted(p.name for p in (home / "audit").iterdir())
    run(["audit", "verify", "--home", str(home)], capsys)
    run(["audit", "query", *ASKER, "--home", str(home)], capsys)
    assert sorted(p.name for p in (home / "audit").iterdir()) == before


def test_query_table_keeps_essential_columns_on_a_narrow_terminal(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = signed.root
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(["audit", "query", *ASKER, "--home", str(home), "--decision", "denied"], capsys)
    assert code == 0 and "bob" in out and "denied" in out and "customers" not in out


def test_query_csv_escapes_formula_cells(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustomer.data.store import PartnerStore

    store = PartnerStore.open(PartnerHome(signed.root))
    log = store.audit
    log.append(
        actor="=cmd|' /C calc'!A0",
        role="analyst",
        action="read",
        decision="allowed",
        dataset="loans",
        fields=("income",),
        purpose="+purpose",
        reason="@SUM(1)",
    )
    store.close()
    code, out, _ = run(
        ["audit", "query", *ASKER, "--home", str(signed.root), "--format", "csv", "--purpose", "+purpose"],
        capsys,
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 1
    assert rows[0]["actor"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["purpose"] == "'+purpose" and rows[0]["reason"] == "'@SUM(1)"


def test_wide_table_names_the_approval_and_a_cut_customer_list_with_its_full_count(tmp_path: Path) -> None:
    # The column said "approved by" over an approval id, and "1000" customers for a 2,488-row decrypt
    # (found by a new-user trial).
    from rich.console import Console

    from fedcustomer.cli.audit import _table
    from fedcustomer.privacy.audit.writer import AuditLog

    log = AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    log.append(
        actor="rick",
        role="risk_officer",
        action="decrypt",
        approvals=("a1b2",),
        row_count=2488,
        pseudonyms=tuple(f"p{i}" for i in range(1000)),
        details={"pseudonyms_truncated": 2488},
    )
    log.append(actor="rick", role="risk_officer", action="decrypt", row_count=2, pseudonyms=("p1", "p2"))
    # a bulk read names no customer but cites the set it reached (found by a new-user trial: the column was empty)
    bulk = {"customers": {"set_sha256": "0" * 64, "count": 500}}
    log.append(actor="mia", role="marketing_analyst", action="read", row_count=500, details=bulk)
    console = Console(record=True, width=220)
    console.print(_table(list(log), 220))
    text = console.export_text()
    assert "approval " in text and "approved by" not in text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    assert [(r[9], r[11]) for r in rows] == [("a1b2", "1000 of 2488"), ("", "2"), ("", "500")]


def test_a_pseudonym_query_says_how_each_entry_reached_the_customer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a new-user trial: a bulk read that decrypted no core field named no customer
    log = AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    wanted = "ab" * 32
    log.append(actor="rick", role="risk_officer", action="decrypt", row_count=1, pseudonyms=[wanted])
    bulk = {"customers": {"set_sha256": "0" * 64, "count": 500}}
    log.append(
        actor="mia", role="marketing_analyst", action="read", fields=["income"], row_count=500, details=bulk
    )
    log.append(actor="rick", role="risk_officer", action="decrypt", row_count=1, pseudonyms=["cd" * 32])
    log.close()
    code, out, err = run(
        ["audit", "query", "--log", str(tmp_path / "audit"), "--pseudonym", wanted, "--format", "json"],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(out)
    # a bare log has no store.db: the bulk read's set cannot be checked here, so it may include the customer
    assert [(e["seq"], e["customer_match"]) for e in doc["entries"]] == [(1, "named"), (2, "may_include")]
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run(["audit", "query", "--log", str(tmp_path / "audit"), "--pseudonym", wanted], capsys)
    assert code == 0, err
    assert "1 read(s) may include this customer" in " ".join(out.split())


def test_a_raw_id_given_as_a_pseudonym_is_refused_and_never_logged(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # found by a new-user trial: `--pseudonym 12747` (a customer id) answered "0 entries" and the
    # query's own audit entry kept the raw id for good
    log_file = PartnerHome(signed.root).audit_dir / "audit.jsonl"
    before = log_file.read_bytes()
    code, _, err = run(["audit", "query", *ASKER, "--home", str(signed.root), "--pseudonym", "12747"], capsys)
    assert code != 0 and "--customer ID" in err and "12747" not in err
    assert log_file.read_bytes() == before  # refused before anything is appended


def test_a_customer_is_found_by_raw_id_and_only_the_pseudonym_is_logged(
    signed: Signed, ASKER: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

    home = PartnerHome(signed.root)
    wanted = Pseudonymizer.open(home.keys_dir).pseudonym("CUST-12747")
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    log.append(actor="rick", role="risk_officer", action="decrypt", row_count=1, pseudonyms=[wanted])
    log.close()
    code, out, err = run(
        [
            "audit",
            "query",
            *ASKER,
            "--home",
            str(home.root),
            "--customer",
            " cust-12747 ",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0, err
    assert [e["pseudonyms"] for e in json.loads(out)["entries"]] == [[wanted]]  # ids match as normalised
    text = (home.audit_dir / "audit.jsonl").read_text()
    assert "12747" not in text and wanted in text.splitlines()[-1]  # the query's entry names the pseudonym
    code, _, err = run(
        ["audit", "query", *ASKER, "--home", str(home.root), "--customer", "CUST-99999", "--format", "json"],
        capsys,
    )
    assert code == 0 and "no customer with that id is held in this home" in " ".join(err.split())
    assert "99999" not in err
    code, _, err = run(["audit", "query", "--log", str(home.audit_dir), "--customer", "CUST-12747"], capsys)
    assert code != 0 and "--customer needs --home" in err and "12747" not in err
    code, _, err = run(
        ["audit", "query", *ASKER, "--home", str(home.root), "--customer", "x", "--pseudonym", wanted], capsys
    )
    assert code != 0 and "not both" in err
