"""Who runs a governance command: the person's identity key, loaded once per command.

Every governance command takes ``--identity FILE`` (or ``FEDCUSTOMER_IDENTITY``): the
person's Ed25519 key file made by ``fedcustomer people keygen``. Its passphrase comes
from ``FEDCUSTOMER_PASSPHRASE`` when set (scripts, CI), else from a hidden prompt. The
command signs its request with the key; the store checks the signature against the
partner's people registry, which also says the person's role. Nothing typed on the
command line names who acts.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import typer

from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV, KeySigner, load_identity_file

IDENTITY_ENV = "FEDCUSTOMER_IDENTITY"

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


def load_signer(path: Path) -> KeySigner:
    """The acting person's key; a wrong passphrase or a missing file is a clear error (exit 8 / 3)."""
    return load_identity_file(Path(path), passphrase())
