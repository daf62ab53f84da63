"""The signed people registry: who holds which key in which role, and edits outside it are caught."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.access.people import PeopleRegistry
from fedcustomer.privacy.access.person_keys import (
    KeySigner,
    load_identity_file,
    load_public_key_file,
    public_path,
    write_identity_file,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MANAGERS = {"partner_admin"}


def may_manage(role: str) -> bool:
    return role in MANAGERS


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PeopleRegistry, KeySigner]:
    admin = KeySigner.generate()
    registry = PeopleRegistry.create(
        tmp_path / "people.jsonl", admin, "alice", "partner_admin", may_manage, now=T0
    )
    return registry, admin


def test_first_admin_is_registered_by_its_own_key(setup) -> None:
    registry, admin = setup
    (alice,) = registry.keys()
    assert (alice.name, alice.role, alice.key_id, alice.added_by) == (
        "alice",
        "partner_admin",
        admin.key_id,
        admin.key_id,
    )
    assert registry.active(admin.key_id, T0).name == "alice"


def test_first_person_must_be_a_manager(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="may manage people"):
        PeopleRegistry.create(tmp_path / "p.jsonl", KeySigner.generate(), "rick", "risk_officer", may_manage)


def test_add_revoke_and_expiry_take_effect(setup) -> None:
    registry, admin = setup
    rick = KeySigner.generate()
    registry.add(admin, rick.public_key, "rick", "risk_officer", expires_at=T0 + timedelta(days=30), now=T0)
    assert registry.active(rick.key_id, T0 + timedelta(days=1)).role == "risk_officer"
    with pytest.raises(AccessDenied, match="expired"):
        registry.active(rick.key_id, T0 + timedelta(days=31))
    registry.revoke(admin, rick.key_id, "left the bank", now=T0 + timedelta(days=2))
    with pytest.raises(AccessDenied, match="revoked"):
        registry.active(rick.key_id, T0 + timedelta(days=3))
    with pytest.raises(AccessDenied, match="not registered"):
        registry.active(KeySigner.generate().key_id, T0)


def test_a_second_registry_object_sees_a_revocation_at_once(setup) -> None:
    registry, admin = setup
    rick = KeySigner.generate()
    registry.add(admin, rick.public_key, "rick", "risk_officer", now=T0)
    other = PeopleRegistry(registry.path, may_manage)
    assert other.active(rick.key_id, T0).name == "rick"
    registry.revoke(admin, rick.key_id, "compromised", now=T0 + timedelta(minutes=1))
    with pytest.raises(AccessDenied, match="revoked"):
        other.active(rick.key_id, T0 + timedelta(minutes=2))


def test_only_managers_change_the_registry(setup) -> None:
    registry, admin = setup
    rick, eve = KeySigner.generate(), KeySigner.generate()
    registry.add(admin, rick.public_key, "rick", "risk_officer", now=T0)
    with pytest.raises(AccessDenied, match="may not manage people"):
        registry.add(rick, eve.public_key, "eve", "partner_admin", now=T0)
    with pytest.raises(AccessDenied, match="not registered"):
        registry.add(eve, eve.public_key, "eve", "partner_admin", now=T0)
    assert [k.name for k in registry.keys()] == ["alice", "rick"]


def test_one_active_key_per_person_and_lookalike_names_count_as_one(setup) -> None:
    registry, admin = setup
    registry.add(admin, KeySigner.generate().public_key, "rick", "risk_officer", now=T0)
    with pytest.raises(ConfigError, match="already has an active key"):
        registry.add(admin, KeySigner.generate().public_key, "RICK", "risk_officer", now=T0)
    with pytest.raises(ConfigError, match="already registered"):
        registry.add(admin, admin.public_key, "alice2", "risk_officer", now=T0)


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e.__setitem__("role", "partner_admin"),  # a role raised by hand
        lambda e: e.__setitem__("name", "mallory"),
        lambda e: e.__setitem__("expires_at", None),
    ],
)
def test_a_registry_edited_on_disk_refuses_to_open(setup, edit) -> None:
    registry, admin = setup
    registry.add(
        admin,
        KeySigner.generate().public_key,
        "rick",
        "risk_officer",
        expires_at=T0 + timedelta(days=1),
        now=T0,
    )
    lines = registry.path.read_text().splitlines()
    event = json.loads(lines[1])
    edit(event)
    lines[1] = json.dumps(event, sort_keys=True, separators=(",", ":"))
    registry.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="failed verification"):
        PeopleRegistry(registry.path, may_manage).keys()


def test_a_removed_revocation_breaks_the_chain(setup) -> None:
    registry, admin = setup
    rick = KeySigner.generate()
    registry.add(admin, rick.public_key, "rick", "risk_officer", now=T0)
    registry.revoke(admin, rick.key_id, "left", now=T0)
    registry.add(admin, KeySigner.generate().public_key, "rita", "risk_officer", now=T0)
    lines = registry.path.read_text().splitlines()
    del lines[2]  # the revocation
    registry.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IntegrityError, match="chain is broken"):
        PeopleRegistry(registry.path, may_manage).keys()


def test_a_forged_event_signed_by_an_outsider_is_refused(setup) -> None:
    registry, admin = setup
    mallory = KeySigner.generate()
    forged_registry = PeopleRegistry(registry.path.with_name("forged.jsonl"), may_manage)
    forged = PeopleRegistry.create(
        forged_registry.path, mallory, "mallory", "partner_admin", may_manage, now=T0
    )
    forged.add(mallory, KeySigner.generate().public_key, "x", "risk_officer", now=T0)
    stolen_event = forged.path.read_text().splitlines()[1]
    registry.path.write_text(registry.path.read_text() + stolen_event + "\n")
    with pytest.raises(IntegrityError, match="unregistered key|chain is broken"):
        PeopleRegistry(registry.path, may_manage).keys()


def test_a_missing_registry_is_an_integrity_error(setup) -> None:
    registry, _ = setup
    registry.path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.lookup("x")


def test_identity_files_are_private_encrypted_and_need_the_passphrase(tmp_path: Path) -> None:
    signer = KeySigner.generate()
    path = write_identity_file(tmp_path / "rick.key", signer, "a long passphrase here")
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_identity_file(path, "a long passphrase here").key_id == signer.key_id
    assert load_public_key_file(public_path(path)) == signer.public_key
    with pytest.raises(KeyMaterialError, match="wrong passphrase"):
        load_identity_file(path, "not the passphrase at all")
    with pytest.raises(KeyMaterialError, match="encrypted"):
        load_identity_file(path, None)
    with pytest.raises(ConfigError, match="shorter"):
        write_identity_file(tmp_path / "short.key", signer, "short")
    with pytest.raises(ConfigError, match="exists"):
        write_identity_file(path, signer, "a long passphrase here")
    path.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="readable by others"):
        load_identity_file(path, "a long passphrase here")


def test_a_public_key_or_another_file_given_as_identity_says_what_it_is(tmp_path: Path) -> None:
    """Not 'chmod 600 it' for a .pub file (mode 644 is right for it): the user gave the wrong file."""
    signer = KeySigner.generate()
    path = write_identity_file(tmp_path / "rick.key", signer, "a long passphrase here")
    with pytest.raises(KeyMaterialError, match="is a public key: --identity takes your private key"):
        load_identity_file(public_path(path), "a long passphrase here")
    other = tmp_path / "customers.csv"
    other.write_text("customer_id,income\nC1,10\n")
    with pytest.raises(KeyMaterialError, match="not a private key in PEM form"):
        load_identity_file(other, None)


def test_missing_or_unreadable_key_files_are_key_material_errors(tmp_path: Path) -> None:
    """One exit code (8) for every missing key file, as the documented table says."""
    with pytest.raises(KeyMaterialError, match="identity key file .*nope.key not found; make one with"):
        load_identity_file(tmp_path / "nope.key", "a long passphrase here")
    with pytest.raises(KeyMaterialError, match="public key file .*nope.key.pub not found"):
        load_public_key_file(tmp_path / "nope.key.pub")
    (tmp_path / "dir.pub").mkdir()
    with pytest.raises(KeyMaterialError, match="cannot read public key file"):
        load_public_key_file(tmp_path / "dir.pub")
