"""`fedcustomer audit query` answers only registered people whose role the policy allows audit_read,
and audits who asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.audit.writer import AuditLog

from .cli_runner import only_group, run
from .identities import as_
from .test_audit import Signed, signed


@pytest.fixture(autouse=True)
def audit_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    only_group(monkeypatch, audit_cli.register)


def _entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit" / "audit.jsonl").read_bytes().splitlines()]


def test_query_of_a_home_without_an_identity_is_refused(
    signed: Signed,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = _entries(signed.root)
    code, out, err = run(["audit", "query", "--home", str(signed.root)], capsys)
    assert code == ConfigError.exit_code and "--identity" in err and out == ""
    assert _entries(signed.root) == before


@pytest.mark.parametrize("name", ["dana", "adam", "rick"])  # data_scientist, partner_admin, risk_officer
def test_roles_without_audit_read_are_refused_and_the_refusal_is_logged(
    signed: Signed,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    person = signed.people[name]
    code, out, err = run(
        ["audit", "query", "--home", str(signed.root), *as_(person), "--format", "json"],
        capsys,
    )
    assert code == AccessDenied.exit_code == 5 and out == "" and "audit_read" in err
    last = _entries(signed.root)[-1]
    assert (last["action"], last["decision"], last["actor"], last["role"]) == (
        "audit_query",
        "denied",
        name,
        person.role,  # the registered role, never one the caller typed
    )
    assert (
        AuditLog(signed.root / "audit", public_key_path=signed.root / "keys" / "audit_signing.pub")
        .verify()
        .ok
    )


def test_compliance_officer_query_is_answered_then_logged(
    signed: Signed,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        [
            "audit",
            "query",
            "--home",
            str(signed.root),
            *as_(signed.people["carol"]),
            "--decision",
            "denied",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["count"] == 1
    last = _entries(signed.root)[-1]
    assert (last["action"], last["decision"], last["actor"], last["role"], last["row_count"]) == (
        "audit_query",
        "allowed",
        "carol",
        "compliance_officer",
        1,
    )
    assert last["details"]["filters"] == {"decision": "denied", "format": "json"}
    assert last["details"]["auth"]  # the signed request goes with the entry


def test_a_bare_log_directory_is_read_without_a_check_or_a_record(
    signed: Signed,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A copy of a log its reader already holds: nothing to protect, nowhere to record."""
    before = _entries(signed.root)
    code, out, _ = run(["audit", "query", "--log", str(signed.root / "audit"), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["count"] == len(before)
    assert _entries(signed.root) == before


def test_query_on_a_copy_without_the_signing_key_creates_no_key(
    signed: Signed,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    copy = tmp_path / "auditor-copy"
    shutil.copytree(signed.root, copy)
    (copy / "keys" / "audit_signing.key").unlink()  # an auditor gets the log and the public key only
    code, out, err = run(
        ["audit", "query", "--home", str(copy), *as_(signed.people["carol"]), "--format", "json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["count"] == signed.base + 6
    code, out, err = run(["audit", "query", "--home", str(copy), *as_(signed.people["dana"])], capsys)
    assert code == AccessDenied.exit_code and "audit_read" in err and out == ""  # the copy checks roles too
    assert not (copy / "keys" / "audit_signing.key").exists()
