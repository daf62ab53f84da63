"""`fedcustomer audit query` answers only roles the policy allows audit_read, and audits who asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.audit.writer import AuditLog

from .cli_runner import only_group, run
from .test_audit import home


@pytest.fixture(autouse=True)
def audit_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    only_group(monkeypatch, audit_cli.register)


def _entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit" / "audit.jsonl").read_bytes().splitlines()]


def test_query_without_a_role_is_a_usage_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["audit", "query", "--home", str(home)], capsys)
    assert code == 2 and "--as-actor" in err


@pytest.mark.parametrize("role", ["data_scientist", "partner_admin", "risk_officer"])
def test_roles_without_audit_read_are_refused_and_the_refusal_is_logged(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    role: str,
) -> None:
    code, out, err = run(
        ["audit", "query", "--home", str(home), "--as-actor", "mia", "--as-role", role, "--format", "json"],
        capsys,
    )
    assert code == AccessDenied.exit_code == 5 and out == "" and "audit_read" in err
    last = _entries(home)[-1]
    assert (last["action"], last["decision"], last["actor"], last["role"]) == (
        "audit_query",
        "denied",
        "mia",
        role,
    )
    assert AuditLog(home / "audit", public_key_path=home / "keys" / "audit_signing.pub").verify().ok


def test_compliance_officer_query_is_answered_then_logged(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        [
            "audit",
            "query",
            "--home",
            str(home),
            "--as-actor",
            "carol",
            "--as-role",
            "compliance_officer",
            "--decision",
            "denied",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["count"] == 1
    last = _entries(home)[-1]
    assert (last["action"], last["decision"], last["actor"], last["row_count"]) == (
        "audit_query",
        "allowed",
        "carol",
        1,
    )
    assert last["details"]["filters"] == {"decision": "denied", "format": "json"}


def test_bare_log_directory_uses_the_bundled_policy(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["audit", "query", "--log", str(home / "audit"), "--format", "json"]
    assert run([*base, "--as-actor", "mia", "--as-role", "marketing_analyst"], capsys)[0] == 5
    assert run([*base, "--as-actor", "carol", "--as-role", "compliance_officer"], capsys)[0] == 0


def test_query_on_a_copy_without_the_signing_key_creates_no_key(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    copy = tmp_path / "auditor-copy"
    shutil.copytree(home, copy)
    (copy / "keys" / "audit_signing.key").unlink()  # an auditor gets the log and the public key only
    code, out, _ = run(
        [
            "audit",
            "query",
            "--home",
            str(copy),
            "--as-actor",
            "carol",
            "--as-role",
            "compliance_officer",
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["count"] == 6
    assert not (copy / "keys" / "audit_signing.key").exists()
