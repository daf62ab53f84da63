"""`fedcustomer audit repair` cuts a torn last line only for a registered partner admin, and records the cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.audit.writer import AuditLog

from .cli_runner import only_group, run
from .identities import as_
from .test_audit import Signed, signed

TORN = b'{"seq": 99, "actor": "half-writ'


@pytest.fixture(autouse=True)
def audit_only_app(monkeypatch: pytest.MonkeyPatch) -> None:
    only_group(monkeypatch, audit_cli.register)


def _log(home: Path) -> Path:
    return home / "audit" / "audit.jsonl"


def _verifies(home: Path) -> bool:
    return AuditLog(home / "audit", public_key_path=home / "keys" / "audit_signing.pub").verify().ok


def test_partner_admin_repairs_a_torn_tail_and_the_cut_bytes_are_kept(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    with _log(signed.root).open("ab") as f:
        f.write(TORN)
    assert not _verifies(signed.root)
    code, out, err = run(
        ["audit", "repair", "--home", str(signed.root), *as_(signed.people["adam"]), "--json"], capsys
    )
    assert code == 0, err
    entry = json.loads(out)
    assert (entry["action"], entry["actor"], entry["role"]) == ("audit_repair", "adam", "partner_admin")
    assert entry["details"]["cut_bytes"] == len(TORN)
    assert _log(signed.root).read_bytes().endswith(b"\n") and _verifies(signed.root)


def test_repair_by_a_role_without_keys_is_refused_and_changes_nothing(
    signed: Signed, capsys: pytest.CaptureFixture[str]
) -> None:
    with _log(signed.root).open("ab") as f:
        f.write(TORN)
    before = _log(signed.root).read_bytes()
    code, out, err = run(
        ["audit", "repair", "--home", str(signed.root), *as_(signed.people["carol"])], capsys
    )
    assert code == AccessDenied.exit_code and out == "" and "keys" in err
    assert _log(signed.root).read_bytes() == before
