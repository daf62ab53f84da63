"""``fedcustomer console``: sign, sign-challenge, enrol, and the server's option checks."""

from __future__ import annotations

import re

import pytest

from fedcustomer.cli import console as console_cli
from fedcustomer.console.actions import enrol_intent, login_intent
from fedcustomer.console.context import ConsoleContext, ConsoleSettings
from fedcustomer.console.intents import make_intent, read_signed
from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV
from tests.cli.cli_runner import only_group, run
from tests.people import PASSPHRASE, people_home


@pytest.fixture()
def home(tmp_path, monkeypatch):
    store, people = people_home(tmp_path, "bank_a", {"alice": "partner_admin", "carol": "compliance_officer"})
    store.close()
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    only_group(monkeypatch, console_cli.register)
    return tmp_path / "bank_a", people


def test_sign_and_sign_challenge_print_a_token_signed_with_the_identity(home, capsys) -> None:
    path, people = home
    intent = make_intent("bank_a", "approve", extra={"request_id": "r1", "request_digest": "d"})
    code, out, err = run(["console", "sign", "--identity", str(people["carol"].key_file), intent], capsys)
    assert code == 0 and "approve" in err
    signed = read_signed(out.strip(), key_id=people["carol"].signer.key_id)
    assert signed.request.extra == {"request_id": "r1", "request_digest": "d"}
    challenge = login_intent("bank_a", "c" * 32)
    code, out, _ = run(
        ["console", "sign-challenge", "--identity", str(people["carol"].key_file), challenge], capsys
    )
    assert code == 0 and read_signed(out.strip()).request.action == "console_login"
    code, _, err = run(
        ["console", "sign-challenge", "--identity", str(people["carol"].key_file), intent], capsys
    )
    assert code == 3 and "not a sign-in challenge" in err
    code, _, err = run(["console", "sign", "--identity", str(people["carol"].key_file), "garbage"], capsys)
    assert code == 3 and "not a console intent" in err
    assert enrol_intent("bank_a", "k") != intent


def test_enrol_from_the_command_line(home, capsys) -> None:
    path, people = home
    code, out, _ = run(
        [
            "console",
            "enrol",
            "--home",
            str(path),
            "--person",
            "carol",
            "--identity",
            str(people["alice"].key_file),
        ],
        capsys,
    )
    assert code == 0
    password = re.search(r"password:\s+(\S+)", out).group(1)
    ctx = ConsoleContext(ConsoleSettings(home=path))
    assert ctx.credentials.check_password(people["carol"].signer.key_id, password)
    assert (ctx.credentials.path.stat().st_mode & 0o777) == 0o600
    code, _, err = run(
        [
            "console",
            "enrol",
            "--home",
            str(path),
            "--person",
            "carol",
            "--identity",
            str(people["carol"].key_file),
        ],
        capsys,
    )
    assert code == 5 and "may not" in err  # a compliance officer may not manage people
    code, _, err = run(
        [
            "console",
            "enrol",
            "--home",
            str(path),
            "--person",
            "nobody",
            "--identity",
            str(people["alice"].key_file),
        ],
        capsys,
    )
    assert code == 3 and "no active person" in err


def test_serve_checks_its_options_before_starting(home, tmp_path, capsys) -> None:
    path, _ = home
    code, _, err = run(["console"], capsys)
    assert code == 3 and "--home" in err
    code, _, err = run(["console", "--home", str(path), "--runs", str(tmp_path / "none")], capsys)
    assert code == 3 and "not found" in err
    code, _, err = run(["console", "--home", str(path), "--cert", str(tmp_path / "c.pem")], capsys)
    assert code == 3 and "both --cert and --key" in err
    tls = ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key")]
    code, _, err = run(["console", "--home", str(path), *tls], capsys)
    assert code == 8 and "TLS certificate or key file not found" in err  # key files: one code everywhere
    code, _, err = run(["console", "--home", str(tmp_path / "nohome")], capsys)
    assert code == 3 and "not an initialised partner home" in err
