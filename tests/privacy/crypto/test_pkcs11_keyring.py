"""The PKCS#11 keyring and audit signer against a real SoftHSM2 token (one fresh token per test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from fedcustomer.errors import ConfigError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.keyring import PKCS11_BLOB_PREFIX, FileKeyRing, KeyRing, data_key_context
from fedcustomer.privacy.crypto.keyring_factory import create_keyring, open_audit_signer, open_keyring
from fedcustomer.privacy.crypto.material import new_data_key
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV, KeyringConfig
from tests.privacy.crypto.softhsm import softhsm

CTX = data_key_context("bank", "a" * 64)
OTHER_CTX = data_key_context("bank", "b" * 64)


def _keyring(softhsm, keys_dir: Path, **changes: str) -> Pkcs11KeyRing:
    keys_dir.mkdir(exist_ok=True)
    ring = create_keyring(softhsm.config(**changes), keys_dir, "bank_a")
    assert isinstance(ring, Pkcs11KeyRing)
    return ring


def _token_labels(softhsm) -> list[str]:
    from pkcs11 import Attribute, ObjectClass

    with softhsm.session() as session:
        return sorted(o.label for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))


def test_wrap_unwrap_round_trip_inside_the_token(softhsm, tmp_path):
    ring = _keyring(softhsm, tmp_path / "keys")
    assert isinstance(ring, KeyRing) and ring.active_version() == 1
    key = new_data_key()
    wrapped = ring.wrap(key, CTX)
    assert wrapped.kek_version == 1 and wrapped.blob.startswith(PKCS11_BLOB_PREFIX)
    assert key not in wrapped.blob
    assert ring.unwrap(wrapped, CTX) == key
    assert ring.wrap(key, CTX).blob != wrapped.blob  # a fresh nonce per wrap
    with pytest.raises(KeyMaterialError, match="altered"):
        ring.unwrap(wrapped, OTHER_CTX)  # bound to its customer
    reopened = open_keyring(softhsm.config(), tmp_path / "keys", "bank_a")
    assert reopened.unwrap(wrapped, CTX) == key
    assert _token_labels(softhsm) == ["fedcustomer-kek-bank_a-v1"]
    assert list((tmp_path / "keys").iterdir()) == []  # nothing about the KEK is written to the home


def test_the_two_backends_never_confuse_each_others_wrapped_keys(softhsm, tmp_path):
    ring = _keyring(softhsm, tmp_path / "keys")
    file_ring = FileKeyRing.create(tmp_path / "file-keys")
    key = new_data_key()
    with pytest.raises(KeyMaterialError, match="PKCS#11 token"):
        file_ring.unwrap(ring.wrap(key, CTX), CTX)
    with pytest.raises(KeyMaterialError, match="wrapped by the keyring file"):
        ring.unwrap(file_ring.wrap(key, CTX), CTX)


def test_kek_is_sensitive_and_its_value_cannot_be_read(softhsm, tmp_path):
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeSensitive

    _keyring(softhsm, tmp_path / "keys")
    with softhsm.session() as session:
        (kek,) = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
        assert kek[Attribute.SENSITIVE] and kek[Attribute.ALWAYS_SENSITIVE]
        assert not kek[Attribute.EXTRACTABLE] and kek[Attribute.NEVER_EXTRACTABLE]
        assert kek[Attribute.TOKEN] and kek[Attribute.PRIVATE]
        with pytest.raises(AttributeSensitive):
            kek[Attribute.VALUE]


def test_rotate_and_retire_like_the_file_keyring(softhsm, tmp_path):
    ring = _keyring(softhsm, tmp_path / "keys")
    key = new_data_key()
    old = ring.wrap(key, CTX)
    assert ring.rotate() == 2 and ring.active_version() == 2
    assert [(k.version, k.status) for k in ring.versions()] == [(1, "available"), (2, "active")]
    assert ring.unwrap(old, CTX) == key  # the previous version still unwraps
    assert ring.wrap(key, CTX).kek_version == 2
    with pytest.raises(KeyMaterialError, match="active version"):
        ring.retire(2)
    with pytest.raises(KeyMaterialError, match="no KEK version 7"):
        ring.retire(7)
    ring.retire(1)
    ring.retire(1)  # already retired: nothing to do
    assert [(k.version, k.status) for k in ring.versions()] == [(1, "retired"), (2, "active")]
    assert _token_labels(softhsm) == ["fedcustomer-kek-bank_a-v2"]  # the object is destroyed
    with pytest.raises(KeyMaterialError, match="no longer on"):
        ring.unwrap(old, CTX)


def test_another_handle_sees_a_rotation_after_refresh(softhsm, tmp_path):
    ring = _keyring(softhsm, tmp_path / "keys")
    other = open_keyring(softhsm.config(), tmp_path / "keys", "bank_a")
    ring.rotate()
    assert other.active_version() == 1
    other.refresh()
    assert other.active_version() == 2
    newer = ring.wrap(new_data_key(), CTX)
    stale = open_keyring(softhsm.config(), tmp_path / "keys", "bank_a")
    ring.rotate()
    assert stale.unwrap(ring.wrap(b"k" * 32, CTX), CTX) == b"k" * 32  # unknown version: re-read, then unwrap
    assert stale.unwrap(newer, CTX)


def test_create_refuses_a_token_that_already_holds_this_label(softhsm, tmp_path):
    _keyring(softhsm, tmp_path / "keys")
    with pytest.raises(KeyMaterialError, match="already holds KEK objects"):
        _keyring(softhsm, tmp_path / "keys")
    other = _keyring(
        softhsm, tmp_path / "keys", key_label="fedcustomer-kek-other"
    )  # another store: its own label
    assert other.active_version() == 1
    assert len(_token_labels(softhsm)) == 2


def test_wrong_pin_is_a_key_error_and_creates_nothing(softhsm, tmp_path, monkeypatch):
    monkeypatch.setenv(DEFAULT_PIN_ENV, "not-the-pin")
    with pytest.raises(KeyMaterialError, match="wrong PIN") as err:
        _keyring(softhsm, tmp_path / "keys")
    assert "not-the-pin" not in str(err.value)
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)
    assert _token_labels(softhsm) == []


def test_pin_missing_from_the_environment(softhsm, tmp_path, monkeypatch):
    monkeypatch.delenv(DEFAULT_PIN_ENV)
    with pytest.raises(KeyMaterialError, match=DEFAULT_PIN_ENV):
        _keyring(softhsm, tmp_path / "keys")
    monkeypatch.setenv("OTHER_PIN_VAR", softhsm.pin)
    assert _keyring(softhsm, tmp_path / "keys", pin_env="OTHER_PIN_VAR").active_version() == 1


def test_token_absent_or_module_missing_is_a_key_error(softhsm, tmp_path):
    with pytest.raises(KeyMaterialError, match="no token labelled 'no-such-token'"):
        _keyring(softhsm, tmp_path / "keys", token_label="no-such-token")
    with pytest.raises(KeyMaterialError, match="module .* not found"):
        _keyring(softhsm, tmp_path / "keys", module=str(tmp_path / "libmissing.so"))
    not_a_module = tmp_path / "not-a-module.so"
    not_a_module.write_bytes(b"\x7fELF nonsense")
    with pytest.raises(KeyMaterialError, match="could not be loaded"):
        _keyring(softhsm, tmp_path / "keys", module=str(not_a_module))


def test_kek_objects_missing_is_a_key_error(softhsm, tmp_path):
    with pytest.raises(KeyMaterialError, match="holds no KEK objects"):
        open_keyring(softhsm.config(), tmp_path, "bank_a")


def test_an_extractable_key_under_the_label_is_refused(softhsm, tmp_path):
    from pkcs11 import Attribute, KeyType

    with softhsm.session() as session:
        session.generate_key(
            KeyType.AES,
            256,
            label="fedcustomer-kek-bank_a-v1",
            store=True,
            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(KeyMaterialError, match="non-extractable"):
        open_keyring(softhsm.config(), tmp_path, "bank_a")


def test_audit_signer_on_the_token(softhsm):
    from pkcs11 import Attribute, ObjectClass

    signer = open_audit_signer(softhsm.config(), "bank_a")
    assert signer is not None
    sig = signer.sign(b"checkpoint")
    signer.public_key().verify(sig, b"checkpoint")
    with pytest.raises(InvalidSignature):
        signer.public_key().verify(sig, b"another checkpoint")
    again = open_audit_signer(softhsm.config(), "bank_a")  # found by label, not generated twice
    assert again is not None and again.public_key() == signer.public_key()
    with softhsm.session() as session:
        (private,) = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
    assert open_audit_signer(softhsm.config(audit_key="file"), "bank_a") is None
    assert open_audit_signer(KeyringConfig(), "bank_a") is None


def test_keyring_section_of_partner_toml(tmp_path):
    home = PartnerHome.create(tmp_path / "home", "bank_a")
    assert home.config().keyring == KeyringConfig()
    text = home.config_path.read_text()
    home.config_path.write_text(
        text
        + '\n[keyring]\nbackend = "pkcs11"\nmodule = "/lib/x.so"\ntoken_label = "hsm1"\npin_env = "BANK_PIN"\n'
    )
    config = home.config()
    assert config.keyring.on_token and config.keyring.pin_env == "BANK_PIN"
    home.write_config(config)  # e.g. a budget change keeps the section
    assert home.config().keyring == config.keyring
    assert not [line for line in home.config_path.read_text().splitlines() if line.startswith("pin ")]
    for bad, match in (
        ('backend = "pkcs11"\nmodule = "/x.so"\ntoken_label = "t"\npin = "1234"\n', "must not hold a PIN"),
        ('backend = "pkcs11"\n', "needs module"),
        ('backend = "vault"\n', "backend must be one of"),
        ("colour = 3\n", "unknown field"),
    ):
        home.config_path.write_text(text + "\n[keyring]\n" + bad)
        with pytest.raises(ConfigError, match=match):
            home.config()


def test_a_different_pin_is_refused_while_the_process_is_logged_in(softhsm, tmp_path, monkeypatch):
    ring = _keyring(softhsm, tmp_path / "keys")
    monkeypatch.setenv(DEFAULT_PIN_ENV, "not-the-pin")
    with pytest.raises(KeyMaterialError, match="wrong PIN"):
        open_keyring(softhsm.config(), tmp_path / "keys", "bank_a")
    ring.close()
    ring.close()  # idempotent: the shared session is released once
    with pytest.raises(KeyMaterialError, match="wrong PIN"):  # logged out: the token itself checks it
        open_keyring(softhsm.config(), tmp_path / "keys", "bank_a")
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)
    assert open_keyring(softhsm.config(), tmp_path / "keys", "bank_a").active_version() == 1


def test_a_rotation_by_another_process_is_seen_after_refresh(softhsm, tmp_path):
    import subprocess
    import sys

    ring = _keyring(softhsm, tmp_path / "keys")
    script = (
        "from pathlib import Path; from fedcustomer.privacy.crypto.keyring_factory import open_keyring; "
        "from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig; "
        f"ring = open_keyring(KeyringConfig(backend='pkcs11', module={softhsm.module!r}, "
        f"token_label={softhsm.label!r}), Path({str(tmp_path / 'keys')!r}), 'bank_a'); "
        "print(ring.rotate()); ring.retire(1)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
    assert ring.active_version() == 1
    ring.refresh()
    assert [(k.version, k.status) for k in ring.versions()] == [(1, "retired"), (2, "active")]
    assert ring.wrap(new_data_key(), CTX).kek_version == 2
