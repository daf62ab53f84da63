"""``fedcustomer people``: identity keys of the people and services who act on a partner home.

``keygen`` makes a person's own key pair (the private key stays with them, encrypted
with their passphrase; they hand the ``.pub`` file to the partner admin). ``init``
starts the registry of a home made before registries existed (new homes get theirs at
``fedcustomer init``). ``add``, ``revoke`` and ``list`` are signed by the acting admin
and audit-logged.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli.identity import IdentityOpt, load_signer, passphrase
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome

console = terminal()
people_app = typer.Typer(help="People and services: identity keys, roles, revocation.", no_args_is_help=True)
HomeOpt = typer.Option(..., "--home", help="Partner home directory.")


def register(app: typer.Typer) -> None:
    app.add_typer(people_app, name="people")


def _open(home: Path) -> Any:
    from fedcustomer.data.store import PartnerStore

    return PartnerStore.open(PartnerHome(home))


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--expires {text!r} is not an ISO 8601 date or time (e.g. 2027-06-30)") from None


@people_app.command("keygen", help="Make your identity key pair: FILE (private, encrypted) and FILE.pub.")
def keygen_cmd(
    out: Path = typer.Option(
        ..., "--out", help="Where to write your private key (FILE.pub gets the public key)."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Generate the key on a PKCS#11 token instead: TOKEN_LABEL/KEY_LABEL (FILE.pub is still written; "
        "FILE is not).",
    ),
) -> None:
    from fedcustomer.common.files import atomic_write_bytes
    from fedcustomer.privacy.access.person_keys import KeySigner, public_path, public_pem, write_identity_file

    if token is not None:
        from fedcustomer.cli.identity import TOKEN_PREFIX, token_identity

        pub = public_path(out)
        if pub.exists():
            raise ConfigError(f"{pub} exists; refusing to overwrite a public key")
        identity = token_identity(TOKEN_PREFIX + token, create=True)
        atomic_write_bytes(pub, public_pem(identity.public_key))
        console.print(
            f"key pair on the token ({escape(token)}); public key in {escape(str(pub))}; key id {identity.key_id}; "
            f"sign with --identity {TOKEN_PREFIX}{escape(token)}"
        )
        return
    secret = passphrase("choose a passphrase (12+ characters): ", confirm=True)
    if secret is None:
        raise ConfigError(
            "no passphrase: set FEDCUSTOMER_PASSPHRASE or run from a terminal; a person's key is always encrypted"
        )
    signer = KeySigner.generate()
    write_identity_file(out, signer, secret)
    console.print(
        f"wrote {escape(str(out))} (keep it private) and {escape(str(out))}.pub; key id {signer.key_id}"
    )


@people_app.command("init", help="Start the people registry of a home made before registries existed.")
def init_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    admin: str = typer.Option(..., "--admin", help="Your name: you become the first partner_admin."),
) -> None:
    from fedcustomer.data.people_admin import PeopleAdmin

    signer = load_signer(identity)
    with _open(home) as store:
        person = PeopleAdmin(store).create(signer, admin)
    console.print(
        f"people registry started: {escape(person.name)} (partner_admin, key {person.key_id}) and the node's "
        f"service keys; from now on every governance command must be signed"
    )


@people_app.command("add", help="Register a person's public key in a role (you must be a partner admin).")
def add_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    name: str = typer.Option(..., "--name", help="The person's name, as it appears in the audit log."),
    role: str = typer.Option(..., "--role", help="risk_officer, compliance_officer, data_scientist, ..."),
    public_key: Path = typer.Option(..., "--public-key", help="Their FILE.pub from `people keygen`."),
    expires: str | None = typer.Option(
        None, "--expires", help="ISO date/time after which the key is refused."
    ),
    service: bool = typer.Option(False, "--service", help="A service (pipeline) key, not a person's."),
    as_json: bool = typer.Option(False, "--json", help="Print the registered key as JSON."),
) -> None:
    from fedcustomer.data.people_admin import PeopleAdmin
    from fedcustomer.privacy.access.person_keys import load_public_key_file

    key = load_public_key_file(public_key)
    signer = load_signer(identity)
    with _open(home) as store:
        person = PeopleAdmin(store).add(
            signer, key, name, role, kind="service" if service else "person", expires_at=_expiry(expires)
        )
    if as_json:
        typer.echo(json.dumps(person.to_dict(), indent=2))
    else:
        console.print(f"registered {escape(person.name)} as {person.role} (key {person.key_id})")


@people_app.command(
    "revoke", help="Revoke a key at once: its holder can no longer sign requests or approvals."
)
def revoke_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    name: str | None = typer.Option(None, "--name", help="Revoke this person's active key."),
    key_id: str | None = typer.Option(None, "--key-id", help="Revoke this key (instead of --name)."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the registry and the audit log)."),
) -> None:
    from fedcustomer.data.people_admin import PeopleAdmin

    if (name is None) == (key_id is None):
        raise ConfigError("give exactly one of --name or --key-id")
    signer = load_signer(identity)
    with _open(home) as store:
        admin = PeopleAdmin(store)
        target = key_id or admin.key_of(name or "")
        person = admin.revoke(signer, target, reason)
    console.print(f"revoked key {person.key_id} of {escape(person.name)} at {person.revoked_at}")


@people_app.command("list", help="Every registered key, active or revoked.")
def list_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON (every field in full)."),
    wide: bool = typer.Option(
        False, "--wide", help="Every column with full key ids and times, whatever the terminal's width."
    ),
) -> None:
    from fedcustomer.data.people_admin import PeopleAdmin

    signer = load_signer(identity)
    with _open(home) as store:
        people = PeopleAdmin(store).list(signer)
    if as_json:
        typer.echo(json.dumps(people, indent=2))
        return
    out = terminal()  # sized now (COLUMNS or the terminal), not when the command module was imported
    full = wide or out.width >= WIDE_COLUMNS
    if wide:  # whole rows, never folded: wider than the terminal, for a pager or a file
        out.width = max(out.width, FULL_COLUMNS)
    out.print(people_table(people, full))
    if not full:
        out.print(f"key ids shortened to {SHORT_KEY_ID} digits: --wide or --json shows them in full")


# At this width the full table fits; below it, key ids and times are shortened.
WIDE_COLUMNS = 120
FULL_COLUMNS = 160  # what --wide renders at, at least
SHORT_KEY_ID = 8


def people_table(people: list[dict[str, Any]], full: bool) -> Table:
    """The registry as a table. Names and roles stay whole (a compliance officer reads them as
    registered). Narrow: key ids shortened, dates without times, the expiry in the status column
    (which folds onto more lines when needed), no kind column, no side borders."""
    if full:
        table = Table(title="people and services")
        for col in ("name", "role"):
            table.add_column(col, no_wrap=True)
        for col in ("kind", "key id", "status", "added (UTC)", "expires (UTC)"):
            table.add_column(col, overflow="fold")
        for p in people:
            table.add_row(
                escape(p["name"]),
                p["role"],
                p["kind"],
                p["key_id"],
                p["status"],
                str(p["added_at"])[:16].replace("T", " "),
                str(p["expires_at"] or "")[:16].replace("T", " "),
            )
        return table
    table = Table(title="people and services", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("key id", no_wrap=True, min_width=SHORT_KEY_ID)
    table.add_column("status", overflow="fold", min_width=7)
    table.add_column("added", no_wrap=True, min_width=10)
    for p in people:
        status = p["status"]  # a service's name says so (node:<partner>); --wide shows the kind
        if p["expires_at"]:
            status += f", until {str(p['expires_at'])[:10]}"
        table.add_row(
            escape(p["name"]), p["role"], p["key_id"][:SHORT_KEY_ID], status, str(p["added_at"])[:10]
        )
    return table
