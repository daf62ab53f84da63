"""Declaring (or withdrawing) a party's own data for vertical jobs is a signed, audited governance act.

``node setup --mode vertical`` sets what a party trains on, like a budget change sets what it
may release: the person acting signs with their identity key, their registered role must be
allowed ``policy_edit``, and the audit log records who did what and when. A refusal leaves
the declaration as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.vertical.declaration import declaration_path
from tests.cli.cli_runner import run
from tests.cli.identities import as_, use_passphrase
from tests.people import make_person, people_home
from tests.vertical.test_own_data import BANK_BOUNDS, _ok, _schema, own_files


@pytest.fixture
def bank(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """A bank home with its people registered, its own file ingested and its spec drafted (not declared)."""
    use_passphrase(monkeypatch)
    store, people = people_home(tmp_path, "bank")
    store.close()
    home = PartnerHome(tmp_path / "bank")
    files = own_files(tmp_path, n=300)
    schema = _schema(files["bank"], tmp_path / "cards.yaml", "cards", BANK_BOUNDS, capsys, [])
    alice = as_(people["alice"])
    _ok(["ingest", "--schema", str(schema), "--input", str(files["bank"]), "--home", str(home.root), *alice],
        capsys)  # fmt: skip
    spec = tmp_path / "bank-spec.json"
    _ok(["features", "draft", "--home", str(home.root), "--dataset", "cards", "--label", "default",
         "--output", str(spec)], capsys)  # fmt: skip
    return {"home": home, "people": people, "spec": spec}


def _declare(bank: dict, *who: str) -> list[str]:
    return ["node", "setup", "--home", str(bank["home"].root), "--mode", "vertical", "--dataset", "cards",
            "--feature-spec", str(bank["spec"]), "--label-owner", *who]  # fmt: skip


def _remove(bank: dict, *who: str) -> list[str]:
    return ["node", "setup", "--home", str(bank["home"].root), "--mode", "vertical", "--remove", *who]


def _entries(home: PartnerHome) -> list:
    return [e for e in AuditLog(home.audit_dir) if e.action in ("vertical_declare", "vertical_remove")]


def test_declaring_needs_a_signed_partner_admin_and_is_audited(
    bank: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = bank["home"], bank["people"]
    path = declaration_path(home)
    # no identity at all: a name on a command line is not enough, and there is no name to type
    code, _, err = run(_declare(bank), capsys)
    assert code != 0 and "--identity" in err and not path.exists()
    # a registered data scientist: authenticated, but her role may not change what the node trains on
    code, _, err = run(_declare(bank, *as_(people["dana"])), capsys)
    assert code == 5 and "policy_edit" in err and not path.exists()
    # a partner admin's key that this home never registered
    stranger = make_person(tmp_path / "elsewhere", "mallory", "partner_admin")
    code, _, err = run(_declare(bank, *as_(stranger)), capsys)
    assert code != 0 and "Traceback" not in err and not path.exists()
    # the partner admin: declared, signed and audited
    _ok(_declare(bank, *as_(people["alice"])), capsys)
    assert json.loads(path.read_text())["dataset"] == "cards"
    entries = _entries(home)
    assert [(e.action, e.decision) for e in entries] == [
        ("vertical_declare", "denied"),
        ("vertical_declare", "denied"),
        ("vertical_declare", "allowed"),
    ]
    assert entries[0].actor == "dana" and entries[2].actor == "alice" and entries[2].role == "partner_admin"
    done = entries[2].details
    assert done["dataset"] == "cards" and done["label_owner"] is True and done["previous"] is None
    assert done["auth"]["key_id"] == people["alice"].signer.key_id  # the signed request goes with it
    assert "income" not in json.dumps(done)  # a digest tells specs apart; no column is named
    # declaring again records what it replaced
    _ok(_declare(bank, *as_(people["alice"])), capsys)
    again = _entries(home)[-1].details
    assert again["previous"]["spec_sha256"] == done["spec_sha256"]


def test_withdrawing_needs_the_same_and_a_refusal_keeps_the_declaration(
    bank: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = bank["home"], bank["people"]
    path = declaration_path(home)
    code, _, err = run(_remove(bank, *as_(people["alice"])), capsys)
    assert code != 0 and "has no vertical declaration to remove" in " ".join(err.split())
    _ok(_declare(bank, *as_(people["alice"])), capsys)
    kept = path.read_bytes()
    code, _, err = run(_remove(bank, *as_(people["dana"])), capsys)
    assert code == 5 and "policy_edit" in err and path.read_bytes() == kept
    code, _, err = run([*_remove(bank, *as_(people["alice"])), "--dataset", "cards"], capsys)
    assert code != 0 and "--remove takes no --dataset" in " ".join(err.split()) and path.read_bytes() == kept
    out = _ok(_remove(bank, *as_(people["alice"])), capsys)
    assert "withdrew its vertical declaration (was dataset 'cards')" in out and not path.exists()
    last = _entries(home)[-2:]
    assert [(e.actor, e.action, e.decision) for e in last] == [
        ("dana", "vertical_remove", "denied"),
        ("alice", "vertical_remove", "allowed"),
    ]
    assert last[1].details["previous"]["dataset"] == "cards"
    # every entry's signed request still checks out against the registry
    code, out, err = run(["audit", "verify", "--home", str(home.root), "--json"], capsys)
    assert code == 0, out + err
    assert json.loads(out)["signatures"]["ok"] is True


def test_a_failed_audit_write_puts_the_declaration_back(
    bank: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change is never left unaudited: if the allowed entry cannot be written, the file is restored."""
    from fedcustomer.data.store_core import StoreCore
    from fedcustomer.errors import IntegrityError

    home, people = bank["home"], bank["people"]
    path = declaration_path(home)
    _ok(_declare(bank, *as_(people["alice"])), capsys)
    kept = path.read_bytes()
    real_log = StoreCore.log

    def failing(self, actor, action, decision="allowed", **fields):  # type: ignore[no-untyped-def]
        if action == "vertical_remove" and decision == "allowed":
            raise IntegrityError("the audit log cannot be appended to")
        return real_log(self, actor, action, decision, **fields)

    monkeypatch.setattr(StoreCore, "log", failing)
    code, _, err = run(_remove(bank, *as_(people["alice"])), capsys)
    assert code != 0 and "cannot be appended" in err and path.read_bytes() == kept
