"""Signed checkpoints over the audit log, and the signing keys they are checked with."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcustomer.errors import IntegrityError, KeyMaterialError
from fedcustomer.privacy.audit.keys import key_id
from fedcustomer.privacy.audit.records import (
    ACTION_READ,
    CHECKPOINT_NAME,
    LOG_NAME,
    PUBLIC_KEY_NAME,
    SIGNING_KEY_NAME,
    Checkpoint,
    merkle_root,
)
from fedcustomer.privacy.audit.writer import AuditLog
from tests.privacy.audit.audit_log_helpers import as_line, lines, make_log, verify, write_lines


# --- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_holds_range_root_and_head(tmp_path: Path) -> None:
    log = make_log(tmp_path, 7, every=100, close=False)
    cp = log.checkpoint()
    assert cp is not None
    hashes = [json.loads(x)["hash"] for x in lines(log)]
    assert (cp.number, cp.first_seq, cp.last_seq, cp.count) == (1, 1, 7, 7)
    assert cp.root == merkle_root(hashes) and cp.head_hash == hashes[-1]
    assert cp.offset == log.log_path.stat().st_size
    assert log.checkpoint() is None  # nothing new
    log.append(actor="a", role="r", action="read")
    cp2 = log.checkpoint()
    assert cp2 is not None and (cp2.first_seq, cp2.last_seq, cp2.prev_checkpoint) == (8, 8, cp.digest())


def test_merkle_root_depends_on_every_leaf_and_their_order() -> None:
    hs = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    assert merkle_root(hs[:1]) == hashlib.sha256(b"\x00" + bytes.fromhex(hs[0])).hexdigest()
    roots = {merkle_root(hs), merkle_root(hs[::-1]), merkle_root(hs[:4]), merkle_root(hs[:4] + hs[3:4])}
    assert len(roots) == 4


def test_close_checkpoints_only_when_something_is_new(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3, every=100)
    assert len(log.checkpoints()) == 1
    log.close()
    assert len(log.checkpoints()) == 1


class _RecordingReach:
    """A reach record that remembers each call (what the writer told it, in order)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def recorded(self) -> None:
        return None

    def record_entry(self, seq: int, entry_hash: str, end: int) -> None:
        self.calls.append(("entry", seq))

    def record_checkpoint(self, number: int, digest: str) -> None:
        self.calls.append(("checkpoint", number))

    def record_entry_and_checkpoint(
        self, seq: int, entry_hash: str, end: int, number: int, digest: str
    ) -> None:
        self.calls.append(("both", seq, number))


def test_append_with_sign_checkpoints_the_entry_at_once_and_records_both_in_one_update(
    tmp_path: Path,
) -> None:
    reach = _RecordingReach()
    log = AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys", reach=reach)
    log.append(actor="a", role="compliance", action=ACTION_READ)
    entry = log.append(actor="node:x", role="training_pipeline", action=ACTION_READ, sign=True)
    (cp,) = log.checkpoints()
    assert (cp.first_seq, cp.last_seq, cp.head_hash) == (1, 2, entry.hash)
    assert reach.calls == [("entry", 1), ("both", 2, 1)]
    log.close()  # nothing new to sign
    assert len(log.checkpoints()) == 1 and reach.calls[-1] == ("both", 2, 1)
    assert log.verify().ok


def test_sign_on_append_keeps_a_partner_homes_reach_record_in_step(tmp_path: Path) -> None:
    from fedcustomer.privacy.audit.reach import REACH_TABLE_DDL, HomeReach

    store = tmp_path / "store.db"
    con = sqlite3.connect(store)
    con.execute(REACH_TABLE_DDL)
    con.execute("INSERT INTO audit_reach VALUES (1, 0, '', 0, 0, '')")
    con.commit()
    con.close()
    reach = HomeReach(store, tmp_path / "keys" / PUBLIC_KEY_NAME)
    with AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys", reach=reach) as log:
        entry = log.append(actor="node:x", role="training_pipeline", action=ACTION_READ, sign=True)
    recorded = reach.recorded()
    (cp,) = log.checkpoints()
    assert recorded is not None
    assert (recorded.seq, recorded.hash, recorded.checkpoints) == (1, entry.hash, 1)
    assert recorded.checkpoint_digest == cp.digest()
    assert recorded.end == (tmp_path / "audit" / LOG_NAME).stat().st_size


def test_altered_checkpoint_is_a_bad_signature(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    cps = log.checkpoint_path.read_bytes().splitlines(keepends=True)
    d = json.loads(cps[1])
    d["root"] = ("1" if d["root"][0] != "1" else "2") + d["root"][1:]
    cps[1] = as_line(d)
    log.checkpoint_path.write_bytes(b"".join(cps))
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line, r.file) == ("bad-signature", 11, 2, CHECKPOINT_NAME)
    assert "checkpoint #2" in r.message


def test_checkpoint_signed_by_another_key_is_a_bad_signature(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=5)
    cps = [Checkpoint.from_dict(json.loads(x)) for x in log.checkpoint_path.read_bytes().splitlines()]
    attacker = Ed25519PrivateKey.generate()
    forged = Checkpoint(**{**cps[0].to_dict(), "key_id": key_id(attacker.public_key()), "signature": ""})
    import base64

    sig = base64.b64encode(attacker.sign(forged.signed_bytes())).decode()
    forged = Checkpoint(**{**forged.to_dict(), "signature": sig})
    log.checkpoint_path.write_bytes(as_line(forged.to_dict()) + as_line(cps[1].to_dict()))
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("bad-signature", 1)


def test_replaced_public_key_beside_the_log_is_reported(tmp_path: Path) -> None:
    make_log(tmp_path, 5, every=5)
    attacker = Ed25519PrivateKey.generate().public_key()
    pem = attacker.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "audit" / PUBLIC_KEY_NAME).write_bytes(pem)
    r = verify(tmp_path / "audit", public_key_path=tmp_path / "keys" / PUBLIC_KEY_NAME)
    assert r.problem == "bad-signature" and "replaced" in r.message


def test_checkpoints_without_any_public_key_cannot_pass(tmp_path: Path) -> None:
    make_log(tmp_path, 5, every=5)
    (tmp_path / "audit" / PUBLIC_KEY_NAME).unlink()
    r = verify(tmp_path / "audit")
    assert r.problem == "bad-signature" and "no public key" in r.message


def test_removed_middle_checkpoint_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 30, every=10)
    cps = log.checkpoint_path.read_bytes().splitlines(keepends=True)
    log.checkpoint_path.write_bytes(cps[0] + cps[2])
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("deleted", 11, 2)


def test_replayed_checkpoint_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    cps = log.checkpoint_path.read_bytes().splitlines(keepends=True)
    log.checkpoint_path.write_bytes(cps[0] + cps[1] + cps[0])
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 21, 3)


def test_malformed_checkpoint_line_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    cps = log.checkpoint_path.read_bytes().splitlines(keepends=True)
    log.checkpoint_path.write_bytes(cps[0] + b"{}\n")
    r = log.verify()
    assert (r.problem, r.line, r.file) == ("malformed", 2, CHECKPOINT_NAME)


def test_checkpoint_refuses_to_sign_tampered_entries_and_writes_nothing(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=5, close=False)
    for _ in range(3):
        log.append(actor="a", role="r", action="read")
    ls = lines(log)
    ls[11] = ls[11].replace(b'"actor":"a"', b'"actor":"b"')
    write_lines(log.log_path, ls)
    before = log.checkpoint_path.read_bytes()
    with pytest.raises(IntegrityError, match="refusing to sign"):
        log.checkpoint()
    assert log.checkpoint_path.read_bytes() == before


def test_checkpoint_refuses_a_log_cut_below_the_last_checkpoint(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=5, close=False)
    write_lines(log.log_path, lines(log)[:7])
    with pytest.raises(IntegrityError, match="truncated"):
        log.checkpoint()


def test_checkpoint_without_signing_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    log = AuditLog(tmp_path / "audit")
    log.append(actor="a", role="r", action="read")
    with pytest.raises(KeyMaterialError, match="without a signing key"):
        log.checkpoint()
    assert log.verify().ok  # the chain alone still verifies


# --- keys -----------------------------------------------------------------------------------------
def test_open_creates_private_signing_key_and_public_keys(tmp_path: Path) -> None:
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    key = tmp_path / "keys" / SIGNING_KEY_NAME
    assert key.stat().st_mode & 0o777 == 0o600
    pub_beside = (tmp_path / "audit" / PUBLIC_KEY_NAME).read_bytes()
    assert pub_beside == (tmp_path / "keys" / PUBLIC_KEY_NAME).read_bytes()
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")  # reopen keeps the key
    assert (tmp_path / "audit" / PUBLIC_KEY_NAME).read_bytes() == pub_beside


def test_keys_dir_defaults_to_the_partner_home_keys(tmp_path: Path) -> None:
    AuditLog.open(tmp_path / "home" / "audit")
    assert (tmp_path / "home" / "keys" / SIGNING_KEY_NAME).exists()


def test_signing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    os.chmod(tmp_path / "keys" / SIGNING_KEY_NAME, 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")


def test_open_with_a_different_key_than_the_log_is_refused(tmp_path: Path) -> None:
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")
    with pytest.raises(KeyMaterialError, match="different public key"):
        AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "other-keys")
