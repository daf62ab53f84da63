"""A fresh SoftHSM2 token per test: its own token directory, configuration and PIN.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the PKCS#11 module is initialised, so the fixture
re-initialises the module (in this process) after pointing the variable at the test's
own configuration; processes started by the test inherit the variable. Tests are skipped
only where the SoftHSM2 library is not installed (``make setup`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV, KeyringConfig, forget_sessions

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "fedcustomer-test"
PIN = "4711-user"
SO_PIN = "0815-so"


def softhsm_module() -> str | None:
    """Path of the SoftHSM2 PKCS#11 library, if installed."""
    return next((p for p in MODULE_CANDIDATES if Path(p).is_file()), None)


@dataclass(frozen=True)
class SoftToken:
    module: str
    label: str
    pin: str
    conf: Path

    def config(self, **changes: str) -> KeyringConfig:
        base = KeyringConfig(backend="pkcs11", module=self.module, token_label=self.label)
        return replace(base, **changes)

    def toml(self, **extra: str) -> str:
        """A ``[keyring]`` section for partner.toml naming this token (no PIN: it is in the environment)."""
        lines = [
            "[keyring]",
            'backend = "pkcs11"',
            f'module = "{self.module}"',
            f'token_label = "{self.label}"',
        ]
        lines += [f'{k} = "{v}"' for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def session(self):
        """A separate logged-in session on the token, for checks behind the keyring's back."""
        import pkcs11
        from pkcs11.exceptions import UserAlreadyLoggedIn

        token = pkcs11.lib(self.module).get_token(token_label=self.label)
        try:
            return token.open(rw=True, user_pin=self.pin)
        except UserAlreadyLoggedIn:  # a keyring of this process is logged in: so is every session
            return token.open(rw=True)


@pytest.fixture()
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    module = softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (make setup installs Debian's softhsm2 package)")
    import pkcs11

    tokens = tmp_path / "softhsm-tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv(DEFAULT_PIN_ENV, PIN)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    restart_module(module)  # this test's token directory only, and no login left from an earlier test
    yield SoftToken(module, TOKEN_LABEL, PIN, conf)
    forget_sessions()
    pkcs11.lib(module).finalize()  # ends every session of the test; the next use initialises again


def restart_module(module: str) -> None:
    """Finalise and re-initialise the module: every session of this process ends, so the next open logs in."""
    import pkcs11

    forget_sessions()
    pkcs11.lib(module).reinitialize()
