"""`fedcustomer init / keys / audit verify` on a partner home whose keys are on a PKCS#11 token."""

import json

from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV
from tests.cli.test_governance import ADMIN, bank_csv, people
from tests.privacy.crypto.softhsm import restart_module, softhsm

from .cli_runner import run


def test_keys_list_rotate_retire_on_a_token_home(
    tmp_path, capsys, softhsm, bank_csv, people, ADMIN, monkeypatch
):
    home = tmp_path / "home"
    home.mkdir()
    (home / "partner.toml").write_text('name = "bank_a"\n\n' + softhsm.toml())
    code, _, err = run(["init", "--home", str(home), "--name", "bank_a", *ADMIN, "--admin", "alice"], capsys)
    assert code == 0, err
    code, _, err = run(
        ["ingest", "--schema", "bank", "--input", str(bank_csv[0]), "--home", str(home), *ADMIN], capsys
    )
    assert code == 0, err
    assert not (home / "keys" / "keyring.json").exists()

    code, out, _ = run(["keys", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert code == 0 and [(v["version"], v["status"]) for v in json.loads(out)] == [(1, "active")]
    code, out, _ = run(["keys", "rotate", "--home", str(home), *ADMIN, "--json"], capsys)
    assert code == 0 and json.loads(out)["active_version"] == 2
    assert run(["keys", "retire", "1", "--home", str(home), *ADMIN], capsys)[0] == 0
    code, out, _ = run(["keys", "list", "--home", str(home), *ADMIN, "--json"], capsys)
    assert {v["version"]: (v["status"], v["wrapped_keys"]) for v in json.loads(out)} == {
        1: ("retired", 0),
        2: ("active", 26),  # 20 customers, 5 quarantined rows, the key check
    }
    code, out, err = run(
        ["audit", "verify", "--home", str(home), "--json"], capsys
    )  # unchanged: the PEM beside the log
    assert code == 0, err
    assert json.loads(out)["ok"] is True

    restart_module(softhsm.module)  # PKCS#11 logs in per process; a CLI process starts logged out
    monkeypatch.setenv(DEFAULT_PIN_ENV, "wrong")
    code, _, err = run(["keys", "list", "--home", str(home), *ADMIN], capsys)
    assert code == KeyMaterialError.exit_code
    assert "wrong PIN" in err and "Traceback" not in err and "wrong" not in err.replace("wrong PIN", "")
