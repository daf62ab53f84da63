"""Changing whom a node trusts is a signed, audited governance act: ``node pin-peer``, ``node keys``
and ``node link-key --rotate``.

Pinning the peer's PSI link key decides whose signatures this node accepts; replacing the
node's key pair decides which key the coordinator must accept as this node; replacing the
node's own link key decides which key its peer must pin (until the peer re-pins, its PSI
refuses our values). In a home with a people registry each is taken only on a request signed
with a registered identity key whose role holds the grant (``policy_edit`` for a pin, like a
vertical declaration; ``keys`` for the node's own keys), and the audit log records who did it,
the key's fingerprint and the fingerprint it replaced (never key material). A refusal changes
nothing; if the allowed entry cannot be written, the key files are put back as they were.

The only unsigned act left is creating the first node keys of a home that has no people
registry yet (a fresh home: there is no one to authenticate against).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_core import Credential
from fedcustomer.deploy.pki import NodeKeys, make_node_keys
from fedcustomer.errors import ConfigError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import load_identity_file, load_public_key_file, public_path
from fedcustomer.psi import signing

PEER_PIN_ACTION = "peer_pin"
NODE_KEYS_ACTION = "node_keys"
LINK_KEY_ACTION = "link_key_replace"
PIN_GRANT = "policy_edit"  # what the node accepts as its peer's word: a governance decision
KEYS_GRANT = "keys"


def link_fingerprint(path: Path) -> str:
    """SHA-256 over the raw Ed25519 public key (what both parties compare out of band)."""
    return signing.fingerprint(load_public_key_file(path))


def home_has_people(home: PartnerHome) -> bool:
    """Whether the home authenticates its governance requests (a registry, or store.db saying it must)."""
    if home.people_path.exists():
        return True
    if not home.store_path.exists():
        return False
    with PartnerStore.open(home) as store:
        return store.people is not None


def _snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.exists() else None) for p in paths}


def _restore(saved: dict[Path, bytes | None]) -> None:
    from fedcustomer.common.files import atomic_write_bytes

    for path, data in saved.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            mode = 0o600 if not path.name.endswith(".pub") else 0o644
            atomic_write_bytes(path, data, mode=mode, exact=True)


def _refuse_unnamed_replacement(home: PartnerHome, what: str) -> NoReturn:
    raise ConfigError(
        f"{home.root} has no people registry, so no one could be named as replacing its {what}; "
        "create the registry (`fedcustomer people init`) and pass --identity, or move the old key pair "
        "away by hand"
    )


def _governed(
    home: PartnerHome,
    who: Credential,
    action: str,
    grant: str,
    details: dict[str, Any],
    touched: list[Path],
    change: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Authenticate ``who``, check the grant, make the change, audit it; a failed audit write undoes it.

    ``change`` returns what the allowed entry adds to ``details`` (e.g. the new key's fingerprint).
    """
    if not home.store_path.exists():
        raise ConfigError(
            f"{home.root} has no store and no people registry to say who acts; create it with "
            "`fedcustomer init` (or `fedcustomer node prepare`)"
        )
    with PartnerStore.open(home) as store:
        actor = store.principal(who, action=action, audit_action=action, extra=details)
        store.require(actor, grant, action, details=details)
        saved = _snapshot(touched)
        try:
            done = details | change()
            store.log(actor, action, details=done)
        except BaseException:
            _restore(saved)
            raise
        return done


def pin_peer(home: PartnerHome, who: Credential, peer: str, public_key_file: Path) -> dict[str, Any]:
    """Pin ``peer``'s link key as a signed, audited act; the audit details (peer, fingerprints)."""
    new = link_fingerprint(public_key_file)  # a clear error for a file that is no Ed25519 public key
    if peer == home.config().name:
        raise ConfigError("a partner does not pin its own link key as a peer's")
    path = signing.peer_key_path(home, peer)
    previous: str | None = None
    if path.exists():
        try:
            previous = link_fingerprint(path)
        except (ConfigError, KeyMaterialError):
            previous = "unreadable"
    details = {"peer": peer, "fingerprint": new, "previous": previous}

    def pin() -> dict[str, Any]:
        signing.pin_peer(home, peer, public_key_file)
        return {}

    return _governed(home, who, PEER_PIN_ACTION, PIN_GRANT, details, [path], pin)


def node_keys(home: PartnerHome, who: Credential | None, *, force: bool) -> tuple[NodeKeys, dict[str, Any]]:
    """Create (or with ``force`` replace) the node's key pair; governed whenever the home has people.

    A home without a people registry may get its first key pair unsigned; replacing one
    there is refused, since no one could be named as having replaced it.
    """
    keys = NodeKeys.in_dir(home.keys_dir)
    existed = keys.private_key.exists()
    if existed and not force:
        make_node_keys(home.keys_dir, overwrite=False)  # the clear "already exists; --force" error
    if not home_has_people(home):
        if existed:
            _refuse_unnamed_replacement(home, "node key")
        return make_node_keys(home.keys_dir, comment=home.root.resolve().name), {}
    if who is None:
        raise ConfigError(
            f"{home.root} has a people registry: its node keys are made or replaced only by a partner admin's "
            "signed request; pass --identity FILE"
        )
    previous = keys.fingerprint() if existed and keys.public_key.exists() else None
    details = {"replaced": existed, "previous": previous}

    def make() -> dict[str, Any]:
        made = make_node_keys(home.keys_dir, comment=home.root.resolve().name, overwrite=True)
        return {"fingerprint": made.fingerprint()}

    done = _governed(
        home, who, NODE_KEYS_ACTION, KEYS_GRANT, details, [keys.private_key, keys.public_key], make
    )
    return keys, done


def link_key_fingerprint(home: PartnerHome) -> str:
    """The fingerprint of the link key this node signs its PSI values with (read from the private key)."""
    path = signing.link_key_path(home)
    if not path.exists():
        raise ConfigError(f"{home.root} has no link key yet; `fedcustomer node keys` makes it")
    return signing.fingerprint(load_identity_file(path, None).public_key)


def rotate_link_key(home: PartnerHome, who: Credential | None) -> dict[str, Any]:
    """Replace the node's PSI link key as a signed, audited act; the audit details (fingerprints).

    Only a home with people may replace it (someone must be named as having done it). Every peer
    that pinned the old key refuses our PSI values until it pins the new one (``node pin-peer``).
    """
    path = signing.link_key_path(home)
    previous = link_key_fingerprint(home)  # a clear error when there is none to replace
    if not home_has_people(home):
        _refuse_unnamed_replacement(home, "link key")
    if who is None:
        raise ConfigError(
            f"{home.root} has a people registry: its link key is replaced only by a partner admin's "
            "signed request; pass --identity FILE"
        )

    def replace() -> dict[str, Any]:
        return {"fingerprint": link_fingerprint(signing.replace_link_key(home))}

    details: dict[str, Any] = {"previous": previous}
    return _governed(home, who, LINK_KEY_ACTION, KEYS_GRANT, details, [path, public_path(path)], replace)
