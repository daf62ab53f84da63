"""What a partner administrator holding the node's keys can do to its audit log, for the anchor tests.

:func:`rewrite_and_resign` rebuilds ``audit.jsonl`` and ``checkpoints.jsonl`` with changed
entries, a valid hash chain and checkpoints re-signed with the signing key in ``keys/``,
and moves the store's reach record along, so plain ``audit verify`` passes. Only anchors
kept off the partner show the change.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.keys import key_id, load_signing_key
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    LOG_NAME,
    SIGNING_KEY_NAME,
    Checkpoint,
    canonical_json,
    entry_hash,
    merkle_root,
)


def _entries(home: PartnerHome) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (home.audit_dir / LOG_NAME).read_bytes().splitlines()]


def _checkpoints(home: PartnerHome) -> list[Checkpoint]:
    path = home.audit_dir / CHECKPOINT_NAME
    return [Checkpoint.from_dict(json.loads(line)) for line in path.read_bytes().splitlines()]


def write_log(
    home: PartnerHome,
    entries: list[dict[str, Any]],
    ranges: list[tuple[int, int, str]],
    key: Ed25519PrivateKey,
) -> None:
    """Write ``entries`` (bodies; chained here) and one checkpoint per (first, last, time), signed with ``key``."""
    lines, ends, hashes, prev = [], {}, {}, GENESIS_HASH
    offset = 0
    for seq, e in enumerate(entries, start=1):
        body = {k: v for k, v in e.items() if k not in ("hash", "prev_hash")} | {"seq": seq}
        h = entry_hash(prev, body)
        line = canonical_json(body | {"prev_hash": prev, "hash": h}) + b"\n"
        lines.append(line)
        offset += len(line)
        ends[seq], hashes[seq], prev = offset, h, h
    cps, prev_digest = [], GENESIS_HASH
    public = key.public_key()
    for number, (first, last, time) in enumerate(ranges, start=1):
        unsigned = Checkpoint(
            number=number,
            first_seq=first,
            last_seq=last,
            count=last - first + 1,
            root=merkle_root([hashes[s] for s in range(first, last + 1)]),
            head_hash=hashes[last],
            offset=ends[last],
            time=time,
            prev_checkpoint=prev_digest,
            key_id=key_id(public),
            signature="",
        )
        sig = base64.b64encode(key.sign(unsigned.signed_bytes())).decode("ascii")
        cp = Checkpoint(**{**unsigned.to_dict(), "signature": sig})
        cps.append(cp)
        prev_digest = cp.digest()
    (home.audit_dir / LOG_NAME).write_bytes(b"".join(lines))
    (home.audit_dir / CHECKPOINT_NAME).write_bytes(b"".join(canonical_json(c.to_dict()) + b"\n" for c in cps))
    _move_reach(home, len(entries), prev, offset, cps)


def _move_reach(home: PartnerHome, seq: int, head: str, end: int, cps: list[Checkpoint]) -> None:
    """Set store.db's reach record to the rewritten log (the admin can write store.db too)."""
    if not home.store_path.exists():
        return
    con = sqlite3.connect(home.store_path)
    try:
        with con:
            con.execute(
                "UPDATE audit_reach SET seq = ?, hash = ?, end_offset = ?, checkpoints = ?, checkpoint_digest = ?",
                (seq, head, end, len(cps), cps[-1].digest() if cps else ""),
            )
    finally:
        con.close()


def rewrite_and_resign(home: PartnerHome, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """Apply ``change`` to the entries (in place), re-chain, re-sign every checkpoint with the node's key."""
    entries = _entries(home)
    change(entries)
    ranges = [(c.first_seq, c.last_seq, c.time) for c in _checkpoints(home)]
    write_log(home, entries, ranges, load_signing_key(home.keys_dir / SIGNING_KEY_NAME))


def cut_back(home: PartnerHome, checkpoints: int) -> None:
    """Keep only the first ``checkpoints`` checkpoints and the entries they cover; move the reach back."""
    kept = _checkpoints(home)[:checkpoints]
    entries = _entries(home)[: kept[-1].last_seq]
    ranges = [(c.first_seq, c.last_seq, c.time) for c in kept]
    write_log(home, entries, ranges, load_signing_key(home.keys_dir / SIGNING_KEY_NAME))


def replace_key(home: PartnerHome) -> Ed25519PrivateKey:
    """A new signing key, the whole log re-signed with it, and both public key files replaced."""
    from cryptography.hazmat.primitives import serialization

    from fedcustomer.privacy.audit.records import PUBLIC_KEY_NAME

    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for path in (home.keys_dir / PUBLIC_KEY_NAME, home.audit_dir / PUBLIC_KEY_NAME):
        Path(path).write_bytes(pem)
    (home.keys_dir / SIGNING_KEY_NAME).write_bytes(priv)
    ranges = [(c.first_seq, c.last_seq, c.time) for c in _checkpoints(home)]
    write_log(home, _entries(home), ranges, key)
    return key
