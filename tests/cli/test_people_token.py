"""A person whose identity key lives on a PKCS#11 token (SoftHSM2): keygen, init, sign, wrong PIN."""

from __future__ import annotations

import pytest

from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV
from tests.cli.cli_runner import run
from tests.privacy.crypto.softhsm import softhsm


def test_an_admin_with_a_key_on_a_token_initialises_and_lists_people(softhsm, tmp_path, monkeypatch, capsys):
    from pkcs11 import Attribute, ObjectClass

    monkeypatch.setenv("FEDCUSTOMER_PKCS11_MODULE", softhsm.module)
    spec = f"{softhsm.label}/alice-identity"
    pub = tmp_path / "alice.key.pub"
    code, out, err = run(["people", "keygen", "--out", str(tmp_path / "alice.key"), "--token", spec], capsys)
    assert code == 0, err
    assert pub.exists() and not (tmp_path / "alice.key").exists()
    home = tmp_path / "bank"
    identity = f"pkcs11:{spec}"
    code, out, err = run(
        ["init", "--home", str(home), "--name", "bank", "--identity", identity, "--admin", "alice"], capsys
    )
    assert code == 0, err + out
    code, out, err = run(["people", "list", "--home", str(home), "--identity", identity, "--json"], capsys)
    assert code == 0, err
    assert "alice" in out and "partner_admin" in out
    with softhsm.session() as session:
        (private,) = [
            k
            for k in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            if k[Attribute.LABEL] == "alice-identity"
        ]
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]


def test_a_wrong_pin_or_a_missing_module_is_a_clear_error(softhsm, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDCUSTOMER_PKCS11_MODULE", softhsm.module)
    spec = f"{softhsm.label}/alice-identity"
    assert run(["people", "keygen", "--out", str(tmp_path / "a.key"), "--token", spec], capsys)[0] == 0
    from tests.privacy.crypto.softhsm import restart_module

    restart_module(softhsm.module)
    monkeypatch.setenv(DEFAULT_PIN_ENV, "not-the-pin")
    code, out, err = run(
        [
            "init",
            "--home",
            str(tmp_path / "h"),
            "--name",
            "h",
            "--identity",
            f"pkcs11:{spec}",
            "--admin",
            "a",
        ],
        capsys,
    )
    assert code == 8 and "Traceback" not in err, err
    assert not (tmp_path / "h" / "store.db").exists()
    monkeypatch.delenv("FEDCUSTOMER_PKCS11_MODULE")
    code, _, err = run(
        ["people", "list", "--home", str(tmp_path / "h"), "--identity", f"pkcs11:{spec}"], capsys
    )
    assert code == 3 and "FEDCUSTOMER_PKCS11_MODULE" in err


@pytest.mark.parametrize("spec", ["pkcs11:", "pkcs11:only-a-token", "pkcs11:/key"])
def test_a_malformed_token_identity_is_a_config_error(spec, tmp_path, capsys):
    code, _, err = run(["people", "list", "--home", str(tmp_path), "--identity", spec], capsys)
    assert code == 3 and "TOKEN_LABEL/KEY_LABEL" in err
