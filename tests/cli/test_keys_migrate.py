"""`fedcustomer keys migrate` on a home made with the key file: signed, audited, staged, verified."""

import json

from fedcustomer.errors import AccessDenied, ConfigError, KeyMaterialError
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV
from tests.cli.test_governance import ADMIN, bank_csv, home, people
from tests.privacy.crypto.softhsm import softhsm

from .cli_runner import run
from .identities import as_


def files(home) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in [home / "partner.toml", *sorted((home / "keys").iterdir())]}


def rows(home, capsys, who) -> str:
    code, out, err = run(
        ["read", "--home", str(home), *who, "--purpose", "analytics", "--limit", "100"], capsys
    )
    assert code == 0, err
    return out


def audit_actions(home, capsys, auditor) -> list[tuple[str, str, str]]:
    code, out, err = run(
        ["audit", "query", "--home", str(home), *auditor, "--action", "key_migrate", "--format", "json"],
        capsys,
    )
    assert code == 0, err
    return [(e["actor"], e["action"], e["decision"]) for e in json.loads(out)["entries"]]


def migrate(home, capsys, who, *options) -> tuple[int, str, str]:
    """Run `keys migrate`; the error text with the terminal's line breaks undone."""
    code, out, err = run(["keys", "migrate", "--home", str(home), *who, *options], capsys)
    return code, out, " ".join(err.split())


def test_migrate_to_a_token_then_read_every_row(home, capsys, softhsm, ADMIN, people, monkeypatch):
    monkeypatch.setenv("FEDCUSTOMER_PKCS11_MODULE", softhsm.module)
    dana = as_(people["dana"])
    before = rows(home, capsys, dana)
    code, out, err = run(
        ["keys", "migrate", "--home", str(home), *ADMIN, "--to", f"pkcs11:{softhsm.label}", "--json"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["rewrapped"] == 26 and result["rows_read"] == 20 and result["file_kek"] == "destroyed"
    assert not (home / "keys" / "keyring.json").exists()
    assert 'backend = "pkcs11"' in (home / "partner.toml").read_text()
    assert rows(home, capsys, dana) == before  # 0 lost
    code, out, _ = run(["keys", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert code == 0 and [(v["version"], v["status"], v["wrapped_keys"]) for v in json.loads(out)] == [
        (1, "active", 26)
    ]
    code, out, err = run(["audit", "verify", "--home", str(home), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True, err

    state = files(home)
    code, _, err = migrate(home, capsys, ADMIN, "--to", f"pkcs11:{softhsm.label}")
    assert code == ConfigError.exit_code and "already keeps its KEKs on a token" in err
    assert "Traceback" not in err and files(home) == state
    assert audit_actions(home, capsys, as_(people["carol"])) == [
        ("alice", "key_migrate", "allowed"),
        ("alice", "key_migrate", "denied"),
    ]


def test_wrong_pin_token_absent_or_unauthorised_leave_the_home_on_its_key_file(
    home, capsys, softhsm, ADMIN, people, monkeypatch
):
    dana = as_(people["dana"])
    before, state = rows(home, capsys, dana), files(home)
    to = ["--to", f"pkcs11:{softhsm.label}", "--module", softhsm.module]

    monkeypatch.setenv(DEFAULT_PIN_ENV, "0000")
    code, _, err = migrate(home, capsys, ADMIN, *to)
    assert code == KeyMaterialError.exit_code and "wrong PIN" in err and "0000" not in err
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)

    code, _, err = migrate(home, capsys, ADMIN, "--to", "pkcs11:absent", "--module", softhsm.module)
    assert code == KeyMaterialError.exit_code and "no token labelled 'absent'" in err

    code, _, err = migrate(home, capsys, as_(people["mia"]), *to)
    assert code == AccessDenied.exit_code and "Traceback" not in err

    code, _, err = migrate(home, capsys, ADMIN, "--to", "hsm:x")
    assert code == ConfigError.exit_code and "pkcs11:TOKEN_LABEL" in err

    assert files(home) == state and rows(home, capsys, dana) == before
    assert audit_actions(home, capsys, as_(people["carol"])) == [
        ("alice", "key_migrate", "denied"),
        ("alice", "key_migrate", "denied"),
        ("mia", "key_migrate", "denied"),
    ]
