"""`fedcustomer people` and `init --identity --admin`: who may act on a partner home, end to end."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV, load_identity_file
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.audit.writer import AuditLog
from tests.people import PASSPHRASE, Person

from .cli_runner import run
from .identities import as_, cast_keys, use_passphrase


@pytest.fixture()
def people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Person]:
    use_passphrase(monkeypatch)
    return cast_keys(tmp_path / "people-keys")


@pytest.fixture()
def home(tmp_path: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]) -> Path:
    """A home made by `init`, with rick (risk officer) and mia (marketing analyst) added by `people add`."""
    h = tmp_path / "bank"
    code, out, err = run(
        ["init", "--home", str(h), "--name", "bank", *as_(people["alice"]), "--admin", "alice"], capsys
    )
    assert code == 0, err
    assert people["alice"].signer.key_id in " ".join(out.split())
    for name in ("rick", "mia"):
        person = people[name]
        code, _, err = run(
            ["people", "add", "--home", str(h), *as_(people["alice"]), "--name", name, "--role", person.role]
            + ["--public-key", f"{person.key_file}.pub"],
            capsys,
        )
        assert code == 0, err
    return h


def _entries(home: Path) -> list[dict]:
    return [e.to_dict() for e in AuditLog(home / "audit")]


def _listed(home: Path, who: Person, capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    code, out, err = run(["people", "list", "--home", str(home), *as_(who), "--json"], capsys)
    assert code == 0, err
    return {p["name"]: p for p in json.loads(out)}


def test_keygen_writes_an_encrypted_owner_only_key_and_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    key = tmp_path / "me.key"
    code, out, err = run(["people", "keygen", "--out", str(key)], capsys)
    assert code == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in Path(f"{key}.pub").read_bytes()
    signer = load_identity_file(key, PASSPHRASE)
    assert signer.key_id in " ".join(out.split())
    code, _, err = run(["people", "keygen", "--out", str(key)], capsys)  # never overwrites a key
    assert (
        code == ConfigError.exit_code
        and "exists" in err
        and load_identity_file(key, PASSPHRASE).key_id == signer.key_id
    )


def test_keygen_refuses_a_short_or_missing_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "short")
    code, _, err = run(["people", "keygen", "--out", str(tmp_path / "a.key")], capsys)
    assert code == ConfigError.exit_code and "shorter than 12" in err and not (tmp_path / "a.key").exists()
    monkeypatch.delenv(PASSPHRASE_ENV)  # and no terminal to ask on
    code, _, err = run(["people", "keygen", "--out", str(tmp_path / "b.key")], capsys)
    assert code == ConfigError.exit_code and PASSPHRASE_ENV in err and not (tmp_path / "b.key").exists()


def test_a_wrong_passphrase_is_a_key_error_without_a_traceback(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _entries(home)
    monkeypatch.setenv(PASSPHRASE_ENV, "not the right passphrase")
    code, out, err = run(["keys", "list", "--home", str(home), *as_(people["alice"])], capsys)
    assert code == KeyMaterialError.exit_code == 8
    assert "wrong passphrase" in err and "Traceback" not in err and out == ""
    assert _entries(home) == before  # nobody was identified, nothing acted


def test_init_makes_the_first_admin_and_the_node_service_keys(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    listed = _listed(home, people["rick"], capsys)  # any registered person may look
    assert {n: (p["role"], p["kind"], p["status"]) for n, p in listed.items()} == {
        "alice": ("partner_admin", "person", "active"),
        "node:bank": ("training_pipeline", "service", "active"),
        "node:bank:analytics": ("data_scientist", "service", "active"),
        "rick": ("risk_officer", "person", "active"),
        "mia": ("marketing_analyst", "person", "active"),
    }
    assert listed["alice"]["key_id"] == people["alice"].signer.key_id
    code, table, err = run(["people", "list", "--home", str(home), *as_(people["rick"])], capsys)
    assert code == 0 and "node:bank:analytics" in table and "\N{BANK}" not in table  # no emoji codes
    for role in ("training_pipeline", "data_scientist"):
        service_key = home / "keys" / f"service_{role}.pem"
        assert stat.S_IMODE(service_key.stat().st_mode) == 0o600
    adds = [e for e in _entries(home) if e["action"] == "people_add"]
    assert {e["details"]["name"] for e in adds} == set(listed) and {e["actor"] for e in adds} == {"alice"}
    code, _, err = run(
        ["init", "--home", str(home), "--name", "bank", *as_(people["alice"]), "--admin", "x"], capsys
    )
    assert code == ConfigError.exit_code and "already" in err


def test_an_unregistered_person_is_refused_and_the_refusal_is_audited(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["keys", "list", "--home", str(home), *as_(people["dana"])], capsys)  # never added
    assert code == AccessDenied.exit_code and "not registered" in err
    said = " ".join(err.split())
    assert "sign with a key registered in this home" in said and "fedcustomer people add" in said
    last = _entries(home)[-1]
    assert (last["actor"], last["decision"]) == ("unauthenticated", "denied")
    assert last["details"]["key_id"] == people["dana"].signer.key_id


def test_revoked_person_is_refused_at_once_and_the_refusal_is_audited(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    read = ["read", "--home", str(home), *as_(people["mia"]), "--purpose", "marketing"]
    code, _, err = run(read, capsys)
    assert (
        code == ConfigError.exit_code and "dataset" in err.lower()
    )  # mia is let in (the store is still empty)
    code, out, err = run(
        ["people", "revoke", "--home", str(home), *as_(people["alice"]), "--name", "mia", "--reason", "left"],
        capsys,
    )
    assert code == 0, err
    assert "revoked key" in out
    revocation = _entries(home)[-1]
    assert (revocation["action"], revocation["actor"], revocation["details"]["revoke_reason"]) == (
        "people_revoke",
        "alice",
        "left",
    )
    assert _listed(home, people["alice"], capsys)["mia"]["status"] == "revoked"
    code, _, err = run(read, capsys)
    assert code == AccessDenied.exit_code == 5 and "revoked" in err and "Traceback" not in err
    last = _entries(home)[-1]
    assert (last["actor"], last["role"], last["decision"]) == ("mia", "marketing_analyst", "denied")
    assert "revoked" in last["reason"]


def test_a_person_who_is_not_an_admin_cannot_add_people(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    registry = (home / "people.jsonl").read_bytes()
    code, _, err = run(
        [
            "people",
            "add",
            "--home",
            str(home),
            *as_(people["rick"]),
            "--name",
            "dana",
            "--role",
            "partner_admin",
        ]
        + ["--public-key", f"{people['dana'].key_file}.pub"],
        capsys,
    )
    assert code == AccessDenied.exit_code and "people" in err and "Traceback" not in err
    assert (home / "people.jsonl").read_bytes() == registry
    last = _entries(home)[-1]
    assert (last["action"], last["actor"], last["role"], last["decision"]) == (
        "people_add",
        "rick",
        "risk_officer",
        "denied",
    )


def test_a_role_the_policy_does_not_know_is_refused_at_people_add_not_when_the_person_acts(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    # `--role analyst` was registered; dana could then do nothing, and her key could not be added again under
    # the right role without revoking it (found by a new-user trial).
    registry = (home / "people.jsonl").read_bytes()
    args = ["people", "add", "--home", str(home), *as_(people["alice"]), "--name", "dana"]
    key = ["--public-key", f"{people['dana'].key_file}.pub"]
    code, _, err = run([*args, "--role", "analyst", *key], capsys)
    assert code == ConfigError.exit_code and "role 'analyst' is not a role of the access policy" in err
    assert "data_scientist" in err and (home / "people.jsonl").read_bytes() == registry
    last = _entries(home)[-1]
    assert (last["action"], last["actor"], last["decision"]) == ("people_add", "alice", "denied")
    code, _, err = run([*args, "--role", "data_scientist", *key], capsys)
    assert code == 0, err


def test_an_edited_registry_stops_every_request_until_restored(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    path = home / "people.jsonl"
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"risk_officer"', b'"partner_admin"'))  # rick makes himself admin
    code, _, err = run(["keys", "list", "--home", str(home), *as_(people["rick"])], capsys)
    assert code == IntegrityError.exit_code and "people" in err and "Traceback" not in err
    code, _, _ = run(["keys", "list", "--home", str(home), *as_(people["alice"])], capsys)
    assert code == IntegrityError.exit_code  # nobody acts on a registry that fails its signatures
    path.unlink()  # deleting it does not switch authentication off either
    code, _, err = run(["keys", "list", "--home", str(home), *as_(people["alice"])], capsys)
    assert code == IntegrityError.exit_code and "missing" in err
    path.write_bytes(original)
    assert run(["keys", "list", "--home", str(home), *as_(people["alice"])], capsys)[0] == 0
    assert (
        run(["keys", "list", "--home", str(home), *as_(people["rick"])], capsys)[0] == AccessDenied.exit_code
    )


def test_people_init_on_a_home_made_before_registries(
    tmp_path: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str]
) -> None:
    home = PartnerHome(tmp_path / "old")
    PartnerStore.init(home, "old").close()  # a development home: bare actors, no registry
    with PartnerStore.open(home) as store:
        assert store.principal(Actor("bob", "partner_admin"), action="keys", audit_action="keys") == Actor(
            "bob", "partner_admin"
        )
    code, out, err = run(
        ["people", "init", "--home", str(home.root), *as_(people["alice"]), "--admin", "alice"], capsys
    )
    assert code == 0, err
    assert "every governance command must be signed" in " ".join(out.split())
    code, out, err = run(["keys", "list", "--home", str(home.root), *as_(people["alice"]), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "active"
    with PartnerStore.open(home) as store:  # the Python API with a bare name is refused now
        with pytest.raises(AccessDenied, match="not authenticated"):
            store.principal(Actor("bob", "partner_admin"), action="keys", audit_action="keys_list")
    last = _entries(home.root)[-1]
    assert (last["actor"], last["decision"], last["details"]["claimed_name"]) == (
        "unauthenticated",
        "denied",
        "bob",
    )
    code, _, err = run(
        ["people", "init", "--home", str(home.root), *as_(people["alice"]), "--admin", "alice"], capsys
    )
    assert code == ConfigError.exit_code and "already has a people registry" in err


def test_people_list_is_readable_at_80_columns_with_full_ids_on_request(
    home: Path, people: dict[str, Person], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # found by a new-user trial: at 80 columns the key id and time columns were folded to nothing
    monkeypatch.setenv("COLUMNS", "80")
    listed = _listed(home, people["rick"], capsys)
    code, out, err = run(["people", "list", "--home", str(home), *as_(people["rick"])], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in listed}
    assert set(rows) == set(listed)  # every name whole, on its own line
    for name, person in listed.items():
        cells = rows[name]
        assert person["role"] in cells and person["key_id"][:8] in cells  # role whole, key id shortened
        assert person["key_id"] not in out and str(person["added_at"])[:10] in cells
    assert "--wide or --json" in out
    code, out, err = run(["people", "list", "--home", str(home), *as_(people["rick"]), "--wide"], capsys)
    assert code == 0, err
    flat = "".join(out.split())  # a folded cell continues on the next line
    assert all(person["key_id"] in flat for person in listed.values())
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = run(["people", "list", "--home", str(home), *as_(people["rick"])], capsys)
    assert code == 0 and all(p["key_id"] in out for p in listed.values()) and "--wide" not in out
