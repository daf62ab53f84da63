"""PSI values signed end to end between the two parties, so the coordinator relaying them cannot
splice, alter or replay them.

Each party has a *link key* (Ed25519, ``keys/service_linkage.pem`` in its home, 0600, with
``.pub`` beside it) and pins its peer's public link key, exchanged out of band like the TLS
CA, in ``keys/peers/<peer>.pub``. A party that has pinned its peer's key refuses any value
of that peer that does not carry a valid signature by it over a statement naming:

* the protocol and message kind (``blinded``: the peer's own blinded set; ``doubly``: the
  peer's answer raising our set to its secret),
* the run id and the session id (a fresh session per run: values of another run or session
  do not verify), the step of the session (1 for blinded, 2 for doubly) and the mode
  (``ids`` or ``count``, so a count-only answer cannot be passed off as a plain one),
* sender and recipient names (a value meant for another party does not verify),
* SHA-256 of the values and, for ``doubly``, of the blinded set it answers (an answer to
  another set does not verify),
* for a set streamed in chunks, the chunk's index, the number of chunks and of values in the
  whole set (a dropped, reordered or spliced chunk does not verify or is missing at the end).

A party that has pinned nobody for a peer runs the session unauthenticated, as before (the
statement is still signed when it has a link key). Signatures use pyca/cryptography.

A signature travels as the 64-byte Ed25519 signature followed by the SHA-256 of the signer's raw
public link key (its fingerprint, public). Only the pinned key decides whether values count; the
fingerprint lets a refusal say *why*: when a peer has replaced its link key
(``fedcustomer node link-key --rotate``) and we have not re-pinned it yet, the refusal names both
fingerprints instead of suggesting the values were altered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import (
    KeySigner,
    load_identity_file,
    load_public_key_file,
    public_path,
    public_pem,
    raw_public,
    verify_signature,
    write_identity_file,
)

LINK_ROLE = "linkage"
DOMAIN = "fedcustomer-psi-v1"
STEP_OF = {"blinded": 1, "doubly": 2}
SIGNATURE_BYTES = 64  # Ed25519
KEY_HASH_BYTES = 32  # SHA-256 of the signer's raw public key, after the signature


def link_key_path(home: PartnerHome) -> Path:
    return home.service_key_path(LINK_ROLE)


def ensure_link_key(home: PartnerHome) -> Path:
    """This node's link key pair (created once); returns the public key file to hand the peer."""
    path = link_key_path(home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_identity_file(path, KeySigner.generate(), None)
    return public_path(path)


def link_signer(home: PartnerHome) -> KeySigner | None:
    path = link_key_path(home)
    return load_identity_file(path, None) if path.exists() else None


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 over the raw Ed25519 public key (what both parties compare out of band)."""
    return "SHA256:" + hashlib.sha256(raw_public(key)).hexdigest()


def replace_link_key(home: PartnerHome) -> Path:
    """Write a fresh link key pair over the node's existing one; returns the new public key file.

    The library step only: the command (``fedcustomer node link-key --rotate``) takes it as a
    signed, audited act through :mod:`fedcustomer.deploy.node_trust`, which puts the old files
    back if the act cannot be recorded. Peers that pinned the old key refuse our values until
    they pin the new one."""
    path = link_key_path(home)
    if not path.exists():
        raise ConfigError(
            f"{home.root} has no link key to replace; `fedcustomer node keys` makes the first one"
        )
    write_identity_file(path, KeySigner.generate(), None, replace=True)
    return public_path(path)


def peer_key_path(home: PartnerHome, peer: str) -> Path:
    """Where ``peer``'s pinned link key is kept (the name is checked: it becomes a file name)."""
    if not peer or not all(c.isalnum() or c in "-_." for c in peer):
        raise ConfigError(f"peer name {peer!r} must be letters, digits, '-', '_' or '.'")
    return home.keys_dir / "peers" / f"{peer}.pub"


def pin_peer(home: PartnerHome, peer: str, public_key_file: Path) -> Path:
    """Pin the peer's public link key (checked to be an Ed25519 key) for PSI sessions with it.

    The library step only: the command (``fedcustomer node pin-peer``) takes it as a signed,
    audited act through :mod:`fedcustomer.deploy.node_trust`."""
    key = load_public_key_file(public_key_file)
    if peer == home.config().name:
        raise ConfigError("a partner does not pin its own link key as a peer's")
    return atomic_write_bytes(peer_key_path(home, peer), public_pem(key))


def pinned_key(home: PartnerHome, peer: str) -> Ed25519PublicKey | None:
    path = peer_key_path(home, peer)
    return load_public_key_file(path) if path.exists() else None


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def statement(
    kind: str,
    *,
    run_id: str,
    session: str,
    mode: str,
    sender: str,
    recipient: str,
    values: bytes,
    answers: bytes | None = None,
    chunk: tuple[int, int, int] | None = None,
) -> bytes:
    """The exact bytes a party signs for one PSI value set (canonical JSON).

    ``chunk`` (index, chunk count, values in all chunks) binds one chunk of a streamed set to
    its place, so a relay cannot drop, reorder or splice chunks."""
    doc: dict[str, object] = {
        "domain": DOMAIN,
        "kind": kind,
        "step": STEP_OF[kind],
        "run": run_id,
        "session": session,
        "mode": mode,
        "from": sender,
        "to": recipient,
        "values": digest(values),
        "answers": digest(answers) if answers is not None else None,
    }
    if chunk is not None:
        doc["chunk"] = {"index": chunk[0], "of": chunk[1], "values": chunk[2]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def session_statement(
    kind: str,
    state: Mapping[str, Any],
    values: bytes,
    *,
    outgoing: bool,
    answers: bytes | None = None,
    chunk: tuple[int, int, int] | None = None,
    mode: str | None = None,
) -> bytes:
    """:func:`statement` for a session's saved state (run, session, mode, me, peer): what this
    party signs when ``outgoing``, or what it checks from its peer."""
    me, peer = str(state["me"]), str(state["peer"])
    return statement(
        kind,
        run_id=str(state["run_id"]),
        session=str(state["session"]),
        mode=mode if mode is not None else str(state["mode"]),
        sender=me if outgoing else peer,
        recipient=peer if outgoing else me,
        values=values,
        answers=answers,
        chunk=chunk,
    )


def sign(home: PartnerHome, message: bytes) -> bytes:
    """This node's signature and its key's hash, or empty bytes when it has no link key (an
    unauthenticated session)."""
    signer = link_signer(home)
    if signer is None:
        return b""
    return signer.sign(message) + hashlib.sha256(raw_public(signer.public_key)).digest()


def check(home: PartnerHome, peer: str, signature: object, message: bytes, what: str) -> None:
    """Refuse the peer's values unless signed by its pinned key (when one is pinned)."""
    key = pinned_key(home, peer)
    if key is None:
        return
    if not isinstance(signature, bytes) or not signature:
        raise AccessDenied(
            f"PSI {what} from {peer!r} carries no signature, but its link key is pinned; refused"
        )
    if len(signature) not in (SIGNATURE_BYTES, SIGNATURE_BYTES + KEY_HASH_BYTES):
        raise AccessDenied(
            f"PSI {what} from {peer!r} carries a malformed signature ({len(signature)} bytes); refused"
        )
    if verify_signature(key, signature[:SIGNATURE_BYTES], message):
        return
    claimed, pinned = signature[SIGNATURE_BYTES:], fingerprint(key)
    if claimed and "SHA256:" + claimed.hex() != pinned:
        me = home.config().name
        raise AccessDenied(
            f"PSI {what} from {peer!r} is signed with link key SHA256:{claimed.hex()}, but the link key "
            f"{me!r} pinned for {peer!r} is {pinned}: {peer!r} has replaced its link key, or the values are "
            f"not from it; compare the new fingerprint with {peer!r} out of band, then the admin of {me!r} "
            f"pins the new key with `fedcustomer node pin-peer --home HOME --peer {peer} service_linkage.pem.pub "
            "--identity FILE` (no node needs a restart), and the job is run again; refused"
        )
    raise AccessDenied(
        f"PSI {what} from {peer!r} does not verify against its pinned link key (altered, replayed from "
        "another run or session, or not from that peer); refused"
    )
