"""`fedcustomer node keys`, `node link-key` and `node pin-peer`: changes of whom a node trusts, as
signed, audited acts.

Thin shells over :mod:`fedcustomer.deploy.node_trust`: the acting person signs with their
identity key (``--identity``); the audit log records who, which key (by fingerprint) and
what it replaced. Kept apart from :mod:`fedcustomer.cli.deploy`; it adds three commands to
the same ``node`` group.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from fedcustomer.cli.identity import IDENTITY_ENV, IdentityOpt, load_signer
from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome

console = terminal()

OptionalIdentityOpt = typer.Option(
    None,
    "--identity",
    envvar=IDENTITY_ENV,
    help="Your identity key file (a partner admin's); needed whenever the home has a people registry. "
    "Only the first keys of a home without people are made unsigned.",
)


def register(node_app: typer.Typer) -> None:
    node_app.command(
        "keys",
        help="Create (or with --force replace) this node's authentication key pair in HOME/keys, and its "
        "PSI link key if it has none. Signed with your identity key and audit-logged when the home has "
        "people (role allowed keys: partner_admin). --force never replaces the link key: that is "
        "`node link-key --rotate`, after which the peer must pin the new one.",
    )(node_keys)
    node_app.command(
        "link-key",
        help="Show this node's PSI link key and its fingerprint, or with --rotate replace it (signed with "
        "your identity key and audit-logged; role allowed keys: partner_admin). After a rotation the "
        "peer refuses this node's PSI values until it pins the new key with `node pin-peer`.",
    )(node_link_key)
    node_app.command(
        "pin-peer",
        help="Pin the link key of the partner this node runs PSI with. Signed with your identity key and "
        "audit-logged; needs a role allowed policy_edit (partner_admin).",
    )(node_pin_peer)


def _home(home: Path) -> PartnerHome:
    the_home = PartnerHome(home)
    if not the_home.config_path.is_file():
        raise ConfigError(
            f"{home} is not a partner home (no partner.toml); create it with `fedcustomer init` "
            "(or `fedcustomer node prepare` for the demo)"
        )
    return the_home


def node_keys(
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing node key pair (a signed, audited act); the PSI link key is kept "
        "(replace it with `node link-key --rotate`).",
    ),
    identity: Path | None = OptionalIdentityOpt,
) -> None:
    """Make the node's keys; replacing them, or making them in a home with people, is governed."""
    from fedcustomer.deploy import node_trust
    from fedcustomer.psi.signing import ensure_link_key

    the_home = _home(home)
    who = load_signer(identity) if identity is not None else None
    keys, done = node_trust.node_keys(the_home, who, force=force)
    console.print(f"private key {keys.private_key} (stays here, 0600)")
    console.print(f"public key  {keys.public_key}  fingerprint {keys.fingerprint()}")
    if done.get("previous"):
        console.print(f"replaced the key with fingerprint {done['previous']} (audit-logged)")
    console.print("send the public key to the coordinator: fedcustomer coordinator register PUBKEY")
    link = ensure_link_key(the_home)
    console.print(
        f"link key    {link}  fingerprint {node_trust.link_key_fingerprint(the_home)}  (PSI signatures: "
        "give it to the partner you link records with; `--force` keeps it, `node link-key --rotate` replaces it)"
    )


def node_link_key(
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    rotate: bool = typer.Option(
        False, "--rotate", help="Replace the link key (a signed, audited act; the peer must re-pin it)."
    ),
    identity: Path | None = OptionalIdentityOpt,
) -> None:
    """Show the node's PSI link key, or replace it as a signed, audited act."""
    from fedcustomer.deploy import node_trust
    from fedcustomer.privacy.access.person_keys import public_path
    from fedcustomer.psi.signing import link_key_path

    the_home = _home(home)
    public = public_path(link_key_path(the_home))
    if not rotate:
        console.print(f"link key    {public}  fingerprint {node_trust.link_key_fingerprint(the_home)}")
        return
    who = load_signer(identity) if identity is not None else None
    done = node_trust.rotate_link_key(the_home, who)
    console.print(f"link key    {public}  fingerprint {done['fingerprint']}")
    console.print(f"replaced the link key {done['previous']} with {done['fingerprint']} (audit-logged)")
    console.print(
        "the peer must now pin the new key: send it the .pub above, compare the fingerprint out of band, "
        f"and its admin runs `fedcustomer node pin-peer --home PEER_HOME --peer {the_home.config().name} "
        "service_linkage.pem.pub --identity FILE` (no node needs a restart); until then its PSI refuses "
        "this node's values"
    )


def node_pin_peer(
    public_key: Path = typer.Argument(..., help="The peer's service_linkage.pem.pub (from `node keys`)."),
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    peer: str = typer.Option(..., "--peer", help="The peer's partner name, e.g. retailer."),
    identity: Path = IdentityOpt,
) -> None:
    """Pin the peer's link key as a signed, audited act (it decides whose PSI signatures count)."""
    from fedcustomer.deploy import node_trust

    the_home = _home(home)
    done = node_trust.pin_peer(the_home, load_signer(identity), peer, public_key)
    was = f"; it replaced {done['previous']}" if done["previous"] else ""
    console.print(
        f"pinned {escape(peer)}'s link key (fingerprint {done['fingerprint']}{was}): its PSI values must now "
        "carry its signature"
    )
