"""Replacing a node's PSI link key is a signed, audited act the peer must answer by re-pinning.

`node keys --force` replaces the node key pair only; `node link-key --rotate` replaces the link
key the peer pinned. Until the peer pins the new key, its PSI refuses our values with an error
that names both fingerprints; a refusal or a failed audit write leaves the old key in place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.clientapp import ClientApp

from fedcustomer.errors import FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import public_path
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.psi.protocol import register_psi_handlers
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.signing import link_key_path
from fedcustomer.server.inprocess import LocalGrid
from tests.cli.cli_runner import run
from tests.cli.identities import as_, use_passphrase
from tests.people import Person, people_home

IDS = {"bank": [f"C{i:04d}" for i in range(30)], "retailer": [f"C{i:04d}" for i in range(20, 45)]}


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict:
    """A bank and a retailer, each with people, node keys and the other's link key pinned."""
    use_passphrase(monkeypatch)
    homes: dict[str, PartnerHome] = {}
    admins: dict[str, dict[str, Person]] = {}
    for name in ("bank", "retailer"):
        store, people = people_home(tmp_path / name, name)
        store.close()
        homes[name], admins[name] = PartnerHome(tmp_path / name / name), people
        code, _, err = run(["node", "keys", "--home", str(homes[name].root), *as_(people["alice"])], capsys)
        assert code == 0, err
    for me, peer in (("bank", "retailer"), ("retailer", "bank")):
        assert run(_pin_cmd(homes, me, peer, admins[me]["alice"]), capsys)[0] == 0
    return {"homes": homes, "people": admins}


def _pin_cmd(homes: dict[str, PartnerHome], me: str, peer: str, who: Person) -> list[str]:
    pub = public_path(link_key_path(homes[peer]))
    return ["node", "pin-peer", str(pub), "--home", str(homes[me].root), "--peer", peer, *as_(who)]


def _rotate_cmd(home: PartnerHome, *who: str) -> list[str]:
    return ["node", "link-key", "--rotate", "--home", str(home.root), *who]


def _link_files(home: PartnerHome) -> tuple[bytes, bytes]:
    path = link_key_path(home)
    return path.read_bytes(), public_path(path).read_bytes()


def _psi(homes: dict[str, PartnerHome], session: str) -> int:
    order = [homes["bank"], homes["retailer"]]
    app = ClientApp()
    register_psi_handlers(
        app,
        lambda ctx: order[int(ctx.node_config["partition-id"])],
        lambda home, dataset: list(IDS[dataset]),
        local_labels=lambda home, dataset, ids: [str(k) for k in range(len(ids))],
    )
    view = run_psi_on_grid(
        LocalGrid(app, 2), 1, 2, "bank", "retailer", name_a="bank", name_b="retailer", session_id=session
    )
    return int(view.intersection_size)


def _fingerprint(home: PartnerHome, capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run(["node", "link-key", "--home", str(home.root)], capsys)
    assert code == 0, err
    return out.split("fingerprint")[1].split()[0]


def test_rotation_is_refused_until_the_peer_re_pins_and_names_both_fingerprints(
    pair: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    homes, people = pair["homes"], pair["people"]
    assert _psi(homes, "before") == 10
    old = _fingerprint(homes["bank"], capsys)
    code, out, err = run(_rotate_cmd(homes["bank"], *as_(people["bank"]["alice"])), capsys)
    assert code == 0, err
    said = " ".join(out.split())
    new = _fingerprint(homes["bank"], capsys)
    assert new != old and new.startswith("SHA256:") and f"fingerprint {new}" in said
    assert f"replaced the link key {old} with {new}" in said
    assert (
        "fedcustomer node pin-peer --home PEER_HOME --peer bank" in said and "no node needs a restart" in said
    )
    with pytest.raises(FederationError) as refused:
        _psi(homes, "unpinned")
    message = " ".join(str(refused.value).split())
    assert f"signed with link key {new}" in message and f"'retailer' pinned for 'bank' is {old}" in message
    assert (
        "the admin of 'retailer' pins the new key with `fedcustomer node pin-peer --home HOME --peer bank"
        in message
    )
    assert run(_pin_cmd(homes, "retailer", "bank", people["retailer"]["alice"]), capsys)[0] == 0
    assert _psi(homes, "re-pinned") == 10


def test_a_rotation_is_a_signed_audited_act_and_a_refusal_changes_nothing(
    pair: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    bank, people = pair["homes"]["bank"], pair["people"]["bank"]
    kept = _link_files(bank)
    code, _, err = run(_rotate_cmd(bank), capsys)
    assert code != 0 and "--identity" in err and _link_files(bank) == kept
    code, _, err = run(_rotate_cmd(bank, *as_(people["dana"])), capsys)
    assert code == 5 and "keys" in err and _link_files(bank) == kept
    old = _fingerprint(bank, capsys)
    assert run(_rotate_cmd(bank, *as_(people["alice"])), capsys)[0] == 0
    assert _link_files(bank)[0] != kept[0] and _link_files(bank)[1] != kept[1]
    entries = [e for e in AuditLog(bank.audit_dir) if e.action == "link_key_replace"]
    assert [(e.actor, e.decision) for e in entries] == [("dana", "denied"), ("alice", "allowed")]
    done = entries[-1].details
    assert done["previous"] == old and done["fingerprint"] == _fingerprint(bank, capsys)
    assert done["auth"]["key_id"] == people["alice"].signer.key_id
    assert "BEGIN" not in json.dumps(done)
    code, out, err = run(["audit", "verify", "--home", str(bank.root), "--json"], capsys)
    assert code == 0 and json.loads(out)["signatures"]["ok"] is True, out + err


def test_node_keys_force_keeps_the_link_key(pair: dict, capsys: pytest.CaptureFixture[str]) -> None:
    bank, alice = pair["homes"]["bank"], pair["people"]["bank"]["alice"]
    kept = _link_files(bank)
    code, out, err = run(["node", "keys", "--home", str(bank.root), "--force", *as_(alice)], capsys)
    assert code == 0, err
    assert _link_files(bank) == kept and "node link-key --rotate" in " ".join(out.split())


def test_a_failed_audit_write_puts_the_old_link_key_back(
    pair: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.data.store_core import StoreCore
    from fedcustomer.errors import IntegrityError

    homes, people = pair["homes"], pair["people"]
    kept = _link_files(homes["bank"])
    real_log = StoreCore.log

    def failing(self, actor, action, decision="allowed", **fields):  # type: ignore[no-untyped-def]
        if action == "link_key_replace" and decision == "allowed":
            raise IntegrityError("the audit log cannot be appended to")
        return real_log(self, actor, action, decision, **fields)

    monkeypatch.setattr(StoreCore, "log", failing)
    code, _, err = run(_rotate_cmd(homes["bank"], *as_(people["bank"]["alice"])), capsys)
    assert code != 0 and "cannot be appended" in err
    assert _link_files(homes["bank"]) == kept
    assert _psi(homes, "still-pinned") == 10  # the peer's pin still matches the key we sign with


def test_an_unsigned_rotation_shows_up_in_audit_verify(
    pair: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.access.policy import Actor

    bank = pair["homes"]["bank"]
    with PartnerStore.open(bank) as store:
        store.log(Actor("alice", "partner_admin"), "link_key_replace", details={"previous": "SHA256:00"})
    code, out, _ = run(["audit", "verify", "--home", str(bank.root), "--json"], capsys)
    problems = json.loads(out)["signatures"]["problems"]
    assert code != 0 and any(
        "'link_key_replace' was allowed without a signed request" in p["problem"] for p in problems
    )


def test_a_home_without_people_or_without_a_link_key_cannot_rotate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustomer.deploy.two_party import prepare_party_home

    home = prepare_party_home(tmp_path / "bank", "bank", customers=200, seed=1)  # a development home
    link_key_path(home).unlink(missing_ok=True)
    public_path(link_key_path(home)).unlink(missing_ok=True)
    code, _, err = run(_rotate_cmd(home), capsys)
    assert code != 0 and "no link key" in " ".join(err.split())
    assert run(["node", "keys", "--home", str(home.root)], capsys)[0] == 0
    kept = _link_files(home)
    code, _, err = run(_rotate_cmd(home), capsys)
    assert code != 0 and "no people registry" in " ".join(err.split()) and _link_files(home) == kept
