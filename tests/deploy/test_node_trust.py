"""Changing whom a node trusts is a signed, audited act: ``node pin-peer`` and ``node keys``.

Pinning the peer's link key decides whose PSI signatures the node accepts; replacing its key
pair decides which key the coordinator must accept as this node. Both need a registered
identity in the right role, are audit-logged with the key's fingerprint and what it
replaced (never key material), and a refusal or a failed audit write leaves the files as
they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.deploy.pki import NodeKeys
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import KeySigner, write_identity_file
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.psi.signing import peer_key_path
from tests.cli.cli_runner import run
from tests.cli.identities import as_, use_passphrase
from tests.people import make_person, people_home


@pytest.fixture
def bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A bank home with its people registered, and two link keys a retailer might hand it."""
    use_passphrase(monkeypatch)
    store, people = people_home(tmp_path, "bank")
    store.close()
    links = {}
    for n in ("first", "second"):
        links[n] = write_identity_file(tmp_path / "retailer-links" / n, KeySigner.generate(), None)
    return {"home": PartnerHome(tmp_path / "bank"), "people": people, "links": links}


def _pin(bank: dict, link: str, *who: str) -> list[str]:
    pub = Path(f"{bank['links'][link]}.pub")
    return ["node", "pin-peer", str(pub), "--home", str(bank["home"].root), "--peer", "retailer", *who]


def _entries(home: PartnerHome, action: str) -> list:
    return [e for e in AuditLog(home.audit_dir) if e.action == action]


def _verify(home: PartnerHome, capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run(["audit", "verify", "--home", str(home.root), "--json"], capsys)
    assert code == 0, out + err
    return json.loads(out)


def test_pinning_needs_a_signed_partner_admin_and_is_audited_and_verified(
    bank: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = bank["home"], bank["people"]
    pinned = peer_key_path(home, "retailer")
    code, _, err = run(_pin(bank, "first"), capsys)  # no identity: nothing to say who pins
    assert code != 0 and "--identity" in err and not pinned.exists()
    code, _, err = run(_pin(bank, "first", *as_(people["dana"])), capsys)  # authenticated, wrong role
    assert code == 5 and "policy_edit" in err and not pinned.exists()
    stranger = make_person(tmp_path / "elsewhere", "mallory", "partner_admin")  # never registered here
    code, _, err = run(_pin(bank, "first", *as_(stranger)), capsys)
    assert code != 0 and "Traceback" not in err and not pinned.exists()
    code, out, err = run(_pin(bank, "first", *as_(people["alice"])), capsys)
    assert code == 0, err
    assert "pinned retailer's link key (fingerprint SHA256:" in " ".join(out.split())
    assert pinned.read_bytes() == Path(f"{bank['links']['first']}.pub").read_bytes()
    entries = _entries(home, "peer_pin")
    assert [(e.actor, e.decision) for e in entries] == [
        ("dana", "denied"),
        ("unauthenticated", "denied"),
        ("alice", "allowed"),
    ]
    done = entries[-1].details
    assert done["peer"] == "retailer" and done["fingerprint"].startswith("SHA256:")
    assert done["previous"] is None and done["auth"]["key_id"] == people["alice"].signer.key_id
    assert "BEGIN" not in json.dumps(done)  # the fingerprint only, never the key itself
    assert _verify(home, capsys)["signatures"]["ok"] is True


def test_a_replaced_pin_records_what_it_replaced_and_a_refusal_keeps_the_pin(
    bank: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = bank["home"], bank["people"]
    pinned = peer_key_path(home, "retailer")
    assert run(_pin(bank, "first", *as_(people["alice"])), capsys)[0] == 0
    first = _entries(home, "peer_pin")[-1].details["fingerprint"]
    kept = pinned.read_bytes()
    code, _, err = run(_pin(bank, "second", *as_(people["rick"])), capsys)
    assert code == 5 and pinned.read_bytes() == kept
    code, out, err = run(_pin(bank, "second", *as_(people["alice"])), capsys)
    assert code == 0, err
    assert f"it replaced {first}" in " ".join(out.split())
    last = _entries(home, "peer_pin")[-1]
    assert last.decision == "allowed" and last.details["previous"] == first
    assert last.details["fingerprint"] != first
    assert pinned.read_bytes() == Path(f"{bank['links']['second']}.pub").read_bytes()
    assert _verify(home, capsys)["signatures"]["ok"] is True


def test_a_failed_audit_write_puts_the_old_pin_back(
    bank: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.data.store_core import StoreCore
    from fedcustomer.errors import IntegrityError

    home, people = bank["home"], bank["people"]
    pinned = peer_key_path(home, "retailer")
    assert run(_pin(bank, "first", *as_(people["alice"])), capsys)[0] == 0
    kept = pinned.read_bytes()
    real_log = StoreCore.log

    def failing(self, actor, action, decision="allowed", **fields):  # type: ignore[no-untyped-def]
        if action == "peer_pin" and decision == "allowed":
            raise IntegrityError("the audit log cannot be appended to")
        return real_log(self, actor, action, decision, **fields)

    monkeypatch.setattr(StoreCore, "log", failing)
    code, _, err = run(_pin(bank, "second", *as_(people["alice"])), capsys)
    assert code != 0 and "cannot be appended" in err and pinned.read_bytes() == kept


def test_an_unsigned_pin_shows_up_in_audit_verify(bank: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """`peer_pin` is one of the actions that must carry a signature once the home has people."""
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.access.policy import Actor

    home = bank["home"]
    with PartnerStore.open(home) as store:
        store.log(Actor("alice", "partner_admin"), "peer_pin", details={"peer": "retailer"})
    code, out, _ = run(["audit", "verify", "--home", str(home.root), "--json"], capsys)
    problems = json.loads(out)["signatures"]["problems"]
    assert code != 0 and any(
        "'peer_pin' was allowed without a signed request" in p["problem"] for p in problems
    )


def test_node_keys_in_a_home_with_people_are_a_signed_audited_act(
    bank: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = bank["home"], bank["people"]
    keys = NodeKeys.in_dir(home.keys_dir)
    base = ["node", "keys", "--home", str(home.root)]
    code, _, err = run(base, capsys)  # even the first keys: this home has people
    assert code != 0 and "--identity" in err and not keys.private_key.exists()
    assert run([*base, *as_(people["alice"])], capsys)[0] == 0
    first, old_private = keys.fingerprint(), keys.private_key.read_bytes()
    code, _, err = run([*base, *as_(people["alice"])], capsys)  # replacing needs --force
    assert code != 0 and "--force" in err and keys.private_key.read_bytes() == old_private
    code, _, err = run([*base, "--force"], capsys)
    assert code != 0 and "--identity" in err and keys.private_key.read_bytes() == old_private
    code, _, err = run([*base, "--force", *as_(people["dana"])], capsys)
    assert code == 5 and "keys" in err and keys.private_key.read_bytes() == old_private
    code, out, err = run([*base, "--force", *as_(people["alice"])], capsys)
    assert code == 0, err
    assert f"replaced the key with fingerprint {first}" in " ".join(out.split())
    assert keys.private_key.read_bytes() != old_private
    entries = _entries(home, "node_keys")
    assert [(e.actor, e.decision) for e in entries] == [
        ("alice", "allowed"),
        ("dana", "denied"),
        ("alice", "allowed"),
    ]
    last = entries[-1].details
    assert (
        last["replaced"] is True and last["previous"] == first and last["fingerprint"] == keys.fingerprint()
    )
    assert "PRIVATE" not in json.dumps(last)
    assert _verify(home, capsys)["signatures"]["ok"] is True


def test_a_failed_audit_write_puts_the_old_node_keys_back(
    bank: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.data.store_core import StoreCore
    from fedcustomer.errors import IntegrityError

    home, alice = bank["home"], as_(bank["people"]["alice"])
    keys = NodeKeys.in_dir(home.keys_dir)
    assert run(["node", "keys", "--home", str(home.root), *alice], capsys)[0] == 0
    kept = (keys.private_key.read_bytes(), keys.public_key.read_bytes())
    real_log = StoreCore.log

    def failing(self, actor, action, decision="allowed", **fields):  # type: ignore[no-untyped-def]
        if action == "node_keys" and decision == "allowed":
            raise IntegrityError("the audit log cannot be appended to")
        return real_log(self, actor, action, decision, **fields)

    monkeypatch.setattr(StoreCore, "log", failing)
    code, _, err = run(["node", "keys", "--home", str(home.root), "--force", *alice], capsys)
    assert code != 0 and "cannot be appended" in err
    assert (keys.private_key.read_bytes(), keys.public_key.read_bytes()) == kept


def test_a_home_without_people_gets_its_first_keys_unsigned_but_never_replaces_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustomer.deploy.two_party import prepare_party_home

    home = prepare_party_home(tmp_path / "bank", "bank", customers=200, seed=1)  # a development home
    keys = NodeKeys.in_dir(home.keys_dir)
    assert run(["node", "keys", "--home", str(home.root)], capsys)[0] == 0
    kept = keys.private_key.read_bytes()
    code, _, err = run(["node", "keys", "--home", str(home.root), "--force"], capsys)
    assert (
        code != 0 and "no people registry" in " ".join(err.split()) and keys.private_key.read_bytes() == kept
    )
