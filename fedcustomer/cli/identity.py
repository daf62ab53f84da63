"""Who runs a governance command: the person's identity key, loaded once per command.

Every governance command takes ``--identity FILE`` (or ``FEDCUSTOMER_IDENTITY``): the
person's Ed25519 key file made by ``fedcustomer people keygen``. Its passphrase comes
from ``FEDCUSTOMER_PASSPHRASE`` when set (scripts, CI), else from a hidden prompt. The
command signs its request with the key; the store checks the signature against the
partner's people registry, which also says the person's role. Nothing typed on the
command line names who acts.

A key on a PKCS#11 token (a smart card, an HSM) is named
``--identity pkcs11:TOKEN_LABEL/KEY_LABEL``: the library comes from
``FEDCUSTOMER_PKCS11_MODULE`` and the PIN from ``FEDCUSTOMER_PKCS11_PIN``; the private
key never leaves the token.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.access.person_keys import (
    PASSPHRASE_ENV,
    Signer,
    key_id_of,
    load_identity_file,
)

if TYPE_CHECKING:
    from fedcustomer.partner.home import PartnerHome

IDENTITY_ENV = "FEDCUSTOMER_IDENTITY"
TOKEN_PREFIX = "pkcs11:"
MODULE_ENV = "FEDCUSTOMER_PKCS11_MODULE"

IdentityOpt = typer.Option(
    ...,
    "--identity",
    envvar=IDENTITY_ENV,
    help="Your identity key file (from `fedcustomer people keygen`); passphrase from "
    f"{PASSPHRASE_ENV} or a prompt.",
)


def passphrase(prompt: str = "passphrase for your identity key: ", *, confirm: bool = False) -> str | None:
    """The passphrase from the environment, else asked on the terminal; None if neither."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise typer.BadParameter("the two passphrases differ")
    return first


def load_signer(path: Path | str) -> Signer:
    """The acting person's key; a wrong passphrase or a missing file is a clear error (exit 8)."""
    if str(path).startswith(TOKEN_PREFIX):
        return token_identity(str(path), create=False)
    return load_identity_file(Path(path), passphrase())


class TokenIdentity:
    """A person's Ed25519 key held on a PKCS#11 token, as a request signer."""

    def __init__(self, token_signer: object) -> None:
        self._signer = token_signer

    @property
    def public_key(self) -> Ed25519PublicKey:
        key: Ed25519PublicKey = self._signer.public_key()  # type: ignore[attr-defined]
        return key

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        signature: bytes = self._signer.sign(message)  # type: ignore[attr-defined]
        return signature

    def __repr__(self) -> str:
        return f"TokenIdentity(key_id={self.key_id})"


def token_identity(spec: str, *, create: bool) -> TokenIdentity:
    """``pkcs11:TOKEN_LABEL/KEY_LABEL``: the key pair on the token (generated there if ``create``)."""
    import os

    from fedcustomer.privacy.crypto.pkcs11_signer import TokenSigner
    from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig, TokenSession

    token_label, sep, key_label = spec[len(TOKEN_PREFIX) :].partition("/")
    if not sep or not token_label or not key_label:
        raise ConfigError(f"--identity {spec!r}: write pkcs11:TOKEN_LABEL/KEY_LABEL")
    module = os.environ.get(MODULE_ENV)
    if not module:
        raise ConfigError(
            f"--identity {spec!r} names a token: set {MODULE_ENV} to the PKCS#11 library's path"
        )
    config = KeyringConfig(backend="pkcs11", module=module, token_label=token_label)
    session = TokenSession.open(config)
    return TokenIdentity(TokenSigner.open(session, key_label, create=create))


def governed_home(home: Path) -> PartnerHome:
    """The partner home a governance command acts on; one never made with ``fedcustomer init`` is refused."""
    from fedcustomer.partner.home import PartnerHome

    phome = PartnerHome(home)
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{home} is a file; --home names a partner home's directory")
    if not phome.store_path.exists():
        raise ConfigError(
            f"{home} is not an initialised partner home (no store, audit log or people registry): run "
            f"`fedcustomer init --home {home} --name NAME --identity FILE --admin YOUR_NAME` first"
        )
    return phome
