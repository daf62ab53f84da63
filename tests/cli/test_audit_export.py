"""`fedcustomer audit verify --anchors` and `fedcustomer audit export` (jsonl, csv, RFC 5424 syslog)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

import fedcustomer.cli.audit_export
from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import current_anchor, received_anchor
from fedcustomer.privacy.audit.export import SD_ID, sd_escape
from fedcustomer.privacy.audit.records import PUBLIC_KEY_NAME
from fedcustomer.privacy.audit.writer import AuditLog
from tests.privacy.audit.log_rewrite import rewrite_and_resign

from .cli_runner import only_group, run
from .identities import as_, cast_keys, use_passphrase
from .test_audit import CAST, Signed, home


@pytest.fixture(autouse=True)
def audit_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    only_group(monkeypatch, audit_cli.register)


@pytest.fixture
def anchors(home: Path, tmp_path: Path) -> Path:
    """The home's current anchor as a coordinator recorded it, plus one more after a further entry."""
    return _anchors_for(home, tmp_path / "anchors.jsonl")


@pytest.fixture
def export_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Signed:
    """A home with a people registry whose six extra entries are node-side records (rounds, queries).

    Governance entries in such a home must carry a signed request, or the export refuses the
    log; entries a node writes for its own rounds and queries need none.
    """
    from fedcustomer.data.people_admin import PeopleAdmin
    from fedcustomer.data.store import PartnerStore

    use_passphrase(monkeypatch)
    people = cast_keys(tmp_path / "people-keys", CAST)
    admin = people["adam"]
    root = tmp_path / "exported"
    with PartnerStore.init(PartnerHome(root), "bank", admin=admin.signer, admin_name="adam") as store:
        for p in people.values():
            if p.name != "adam":
                PeopleAdmin(store).add(admin.signer, p.signer.public_key, p.name, p.role)
        base = len(list(store.audit))
        for i in range(1, 7):
            store.audit.append(
                actor="node:bank",
                role="training_pipeline",
                action="fl_round" if i % 2 else "query",
                decision="allowed",
                dataset="loans",
                fields=["income"],
                purpose="training",
                row_count=10 * i,
                pseudonyms=[f"ps_{i:02d}"],
                details={"n": i},
            )
    return Signed(root, base, people)


@pytest.fixture
def shome(export_home: Signed) -> Path:
    return export_home.root


@pytest.fixture
def ASKER(export_home: Signed) -> list[str]:
    return as_(export_home.people["carol"])


@pytest.fixture
def sanchors(shome: Path, tmp_path: Path) -> Path:
    return _anchors_for(shome, tmp_path / "signed-anchors.jsonl")


def _anchors_for(home: Path, path: Path) -> Path:
    h = PartnerHome(home)
    lines = []
    for rnd in (1, 2):
        anchor = current_anchor(h.audit_dir, "bank", h.keys_dir / PUBLIC_KEY_NAME)
        assert anchor is not None
        lines.append(received_anchor(anchor.to_json(), partner="bank", run_id="r1", kind="round", round=rnd))
        with AuditLog.open(h.audit_dir, keys_dir=h.keys_dir) as log:
            log.append(
                actor='o"brien\\x]', role="analyst", action="query", dataset="loans", fields=["income"]
            )
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit" / "audit.jsonl").read_bytes().splitlines()]


# --- verify --anchors -------------------------------------------------------------------------
def test_verify_with_anchors_passes_on_an_intact_log(
    home: Path,
    anchors: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        ["audit", "verify", "--home", str(home), "--anchors", str(anchors), "--json"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] and doc["anchors"]["ok"] and doc["anchors"]["checked"] == 2


def test_verify_with_anchors_catches_a_resigned_rewrite_naming_the_anchor(
    home: Path,
    anchors: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rewrite_and_resign(PartnerHome(home), lambda es: es[1].update(decision="allowed"))
    code, out, _ = run(["audit", "verify", "--home", str(home)], capsys)
    assert code == 0 and "INTACT" in out
    code, out, err = run(["audit", "verify", "--home", str(home), "--anchors", str(anchors)], capsys)
    assert code == IntegrityError.exit_code
    assert "REWRITTEN" in out
    assert "anchors.jsonl line 1 (run r1, round 1)" in err and "rewritten" in err


def test_verify_anchors_needs_a_partner_with_log_and_refuses_other_partners(
    home: Path,
    anchors: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = ["audit", "verify", "--log", str(home / "audit"), "--anchors", str(anchors)]
    code, _, err = run(log, capsys)
    assert code == ConfigError.exit_code and "--partner" in err
    code, _, err = run([*log, "--partner", "bank"], capsys)
    assert code == 0, err
    code, _, err = run([*log, "--partner", "retail"], capsys)
    assert code == ConfigError.exit_code and "no anchor of partner 'retail'" in err and "bank" in err
    code, _, err = run([*log[:-1], str(home / "nope.jsonl"), "--partner", "bank"], capsys)
    assert code == ConfigError.exit_code and "not found" in err


# --- export -------------------------------------------------------------------------------------
def _export(home: Path, asker: list[str], out: Path, fmt: str, *extra: str) -> list[str]:
    return ["audit", "export", "--home", str(home), *asker, "--format", fmt, "--out", str(out), *extra]


def test_jsonl_export_is_the_stored_lines_with_verification_beside(
    shome: Path,
    ASKER: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored = (shome / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "export.jsonl"
    code, _, err = run(_export(shome, ASKER, out, "jsonl", "--from", "2", "--to", "5"), capsys)
    assert code == 0, err
    assert out.read_bytes() == b"".join(stored[1:5])  # byte for byte: hashes can be recomputed
    sidecar = tmp_path / "export.jsonl.verification.json"
    assert (out.stat().st_mode & 0o777, sidecar.stat().st_mode & 0o777) == (0o600, 0o600)
    doc = json.loads((tmp_path / "export.jsonl.verification.json").read_text())
    assert doc["verification"]["ok"] and doc["count"] == 4 and doc["partner"] == "bank"
    assert (doc["range"]["first_seq"], doc["range"]["last_seq"]) == (2, 5)
    assert doc["anchor"]["partner"] == "bank" and doc["unsigned_in_export"] == 0
    import hashlib

    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    last = _entries(shome)[-1]  # the export itself is on record
    assert (last["action"], last["actor"], last["details"]["exported"]["count"]) == (
        "audit_query",
        "carol",
        4,
    )
    # ... with the request carol signed intact: the log still verifies, signatures included,
    # and a second export (which verifies before exporting) goes through.
    code, out_json, err = run(["audit", "verify", "--home", str(shome), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out_json)["ok"]
    code, _, err = run(_export(shome, ASKER, tmp_path / "again.jsonl", "jsonl"), capsys)
    assert code == 0, err


def test_csv_export_by_time(
    shome: Path, export_home: Signed, ASKER: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export.csv"
    code, _, err = run(_export(shome, ASKER, out, "csv", "--since", "2000-01-01"), capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1)) and len(
        rows
    ) >= export_home.base + 6
    assert rows[export_home.base]["pseudonyms"] == "ps_01"  # pseudonyms only, as stored


SYSLOG = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) "
    r"(?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) "
    r"(?P<sd>\[(?:[^\]\\]|\\.)*\]) \ufeff(?P<msg>.*)"
)
SD_PARAM = re.compile(r' ([^= \]"]{1,32})="((?:[^"\\\]]|\\["\\\]])*)"')


def _sd_params(sd: str) -> tuple[str, dict[str, str]]:
    sd_id = sd[1:].split(" ", 1)[0]
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(sd[1 + len(sd_id) : -1])}
    return sd_id, params


def test_syslog_export_is_rfc5424_with_structured_data(
    shome: Path,
    ASKER: list[str],
    sanchors: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "audit.log"
    code, _, err = run(_export(shome, ASKER, out, "syslog", "--anchors", str(sanchors)), capsys)
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    entries = _entries(shome)
    assert len(lines) == len(entries) - 1  # all but the export's own entry, written after
    for line, entry in zip(lines, entries, strict=False):
        m = SYSLOG.fullmatch(line)
        assert m, line
        assert m["pri"] in ("109", "110") and m["app"] == "fedcustomer" and m["host"] == "bank"
        assert m["ts"] == entry["time"] and m["msgid"] == entry["action"]
        sd_id, params = _sd_params(m["sd"])
        assert sd_id == SD_ID
        assert params["actor"] == entry["actor"] and params["hash"] == entry["hash"]
        assert params["decision"] == entry["decision"] and params["seq"] == str(entry["seq"])
        assert json.loads(m["msg"]) == entry
    tricky = next(line for line in lines if 'o\\"brien' in line)
    assert 'actor="o\\"brien\\\\x\\]"' in tricky  # '"', '\' and ']' escaped per RFC 5424 6.3.3
    doc = json.loads((tmp_path / "audit.log.verification.json").read_text())
    assert doc["anchors"]["report"]["ok"] and doc["anchors"]["report"]["checked"] == 2


def test_sd_escape() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'


def test_export_is_refused_for_a_role_without_audit_read(
    shome: Path,
    export_home: Signed,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "x.jsonl"
    argv = ["audit", "export", "--home", str(shome), *as_(export_home.people["dana"])]
    code, _, err = run([*argv, "--format", "jsonl", "--out", str(out)], capsys)
    assert code == AccessDenied.exit_code and "audit_read" in err
    assert not out.exists()
    assert (_entries(shome)[-1]["action"], _entries(shome)[-1]["decision"]) == ("audit_query", "denied")


def test_export_of_a_tampered_log_or_a_rewritten_one_writes_nothing(
    shome: Path,
    ASKER: list[str],
    sanchors: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "x.jsonl"
    rewrite_and_resign(PartnerHome(shome), lambda es: es[0].update(purpose="audit"))
    code, _, err = run(_export(shome, ASKER, out, "jsonl", "--anchors", str(sanchors)), capsys)
    assert code == IntegrityError.exit_code and "Nothing exported" in err
    log = shome / "audit" / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"actor":"node:bank"', b'"actor":"node:bonk"', 1))
    code, _, err = run(_export(shome, ASKER, out, "jsonl"), capsys)
    assert code == IntegrityError.exit_code and "Nothing exported" in err
    assert not out.exists() and not (tmp_path / "x.jsonl.verification.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "xml"], "choose one of jsonl, csv, syslog"),
        (["--format", "jsonl", "--from", "5", "--to", "2"], "--from 5 is after --to 2"),
        (["--format", "jsonl", "--from", "0"], "start at 1"),
        (["--format", "jsonl", "--from", "999"], "the log holds"),
        (["--format", "jsonl", "--since", "yesterday"], "ISO 8601"),
    ],
)
def test_export_bad_options_are_clear_errors(
    shome: Path,
    ASKER: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.out"
    code, _, err = run(["audit", "export", "--home", str(shome), *ASKER, "--out", str(out), *extra], capsys)
    assert code == ConfigError.exit_code and message in err
    assert not out.exists()


def test_a_resigned_log_naming_someone_else_fails_the_signature_check(
    shome: Path, ASKER: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admin who rewrites 'who' and re-signs the chain with the node's key passes the hash check only."""

    def blame_mia(entries: list[dict]) -> None:
        signed = next(e for e in entries if e["action"] == "people_add" and "auth" in e["details"])
        signed["actor"], signed["role"] = "mia", "marketing_analyst"

    rewrite_and_resign(PartnerHome(shome), blame_mia)
    code, out, err = run(["audit", "verify", "--home", str(shome)], capsys)
    assert code == IntegrityError.exit_code and "INTACT" in out and "SIGNATURES" in out
    assert "belongs to 'adam'" in err
    out_file = tmp_path / "x.jsonl"
    code, _, err = run(_export(shome, ASKER, out_file, "jsonl"), capsys)
    assert code == IntegrityError.exit_code and "Nothing" in err and not out_file.exists()
