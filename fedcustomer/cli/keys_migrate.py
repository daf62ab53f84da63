"""``fedcustomer keys migrate``: move an existing home's KEKs from the key file to a PKCS#11 token.

The token is named like a token identity: ``--to pkcs11:TOKEN_LABEL[/KEY_LABEL]``, the
library from ``--module`` or ``FEDCUSTOMER_PKCS11_MODULE``, the PIN from the environment
variable ``--pin-env`` names (never the command line). The migration itself, staged and
verified before it switches, is :mod:`fedcustomer.data.key_migration`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.identity import MODULE_ENV, IdentityOpt, load_signer
from fedcustomer.cli.terminal import terminal
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV

console = terminal()


def keys_migrate_cmd(
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    identity: Path = IdentityOpt,
    to: str = typer.Option(
        ...,
        "--to",
        help="The token: pkcs11:TOKEN_LABEL, or pkcs11:TOKEN_LABEL/KEY_LABEL for the KEK objects.",
    ),
    module: str | None = typer.Option(
        None, "--module", help=f"The PKCS#11 library's path (default: ${MODULE_ENV})."
    ),
    pin_env: str = typer.Option(
        DEFAULT_PIN_ENV, "--pin-env", help="Environment variable holding the token's user PIN."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    from fedcustomer.data.key_migration import KeyMigration, token_target
    from fedcustomer.data.store import PartnerStore

    target = token_target(to, module or os.environ.get(MODULE_ENV), pin_env)
    signer = load_signer(identity)
    with PartnerStore.open(PartnerHome(home)) as store:
        result = KeyMigration(store).to_token(signer, target)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(
        f"re-wrapped {result['rewrapped']} data key(s) under a new KEK on {escape(result['to'])}, read back "
        f"{result['rows_read']} row(s), 0 lost; partner.toml now names the token, keys/keyring.json was destroyed "
        f"(the audit signing key stays in its file)"
    )
