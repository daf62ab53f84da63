"""Audit log: chaining, every kind of tampering named, signed checkpoints, concurrency, queries."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sqlite3
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcustomer.errors import ConfigError, DataError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.audit.keys import key_id
from fedcustomer.privacy.audit.records import (
    ACTION_DECRYPT,
    ACTION_READ,
    CHECKPOINT_NAME,
    DECISION_ALLOWED,
    DECISION_DENIED,
    GENESIS_HASH,
    LOG_NAME,
    PUBLIC_KEY_NAME,
    SIGNING_KEY_NAME,
    Checkpoint,
    VerifyReport,
    canonical_json,
    entry_hash,
    merkle_root,
)
from fedcustomer.privacy.audit.writer import AuditLog


# --- helpers ------------------------------------------------------------------------------
def make_log(tmp: Path, n: int, *, every: int = 1000, close: bool = True) -> AuditLog:
    log = AuditLog.open(tmp / "audit", keys_dir=tmp / "keys", checkpoint_every=every)
    for i in range(1, n + 1):
        log.append(
            actor=f"analyst-{i % 3}",
            role="data_scientist" if i % 2 else "compliance",
            action=ACTION_READ if i % 4 else ACTION_DECRYPT,
            decision=DECISION_DENIED if i % 5 == 0 else DECISION_ALLOWED,
            dataset="loans",
            fields=("income", "age") if i % 2 else ("phone",),
            tier="sensitive",
            purpose="credit_risk",
            approvals=("officer-1",) if i % 3 == 0 else (),
            row_count=i,
            pseudonyms=(f"ps_{i:04x}",),
            details={"i": i},
        )
    if close:
        log.close()
    return log


def lines(log: AuditLog) -> list[bytes]:
    return log.log_path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, ls: list[bytes]) -> None:
    path.write_bytes(b"".join(ls))


def rehash(d: dict) -> dict:
    body = {k: v for k, v in d.items() if k not in ("hash", "prev_hash")}
    d = dict(d)
    d["hash"] = entry_hash(d["prev_hash"], body)
    return d


def as_line(d: dict) -> bytes:
    return canonical_json(d) + b"\n"


def verify(log_dir: Path, **kw) -> VerifyReport:
    return AuditLog(log_dir, **kw).verify()


# --- chaining ---------------------------------------------------------------------------------
def test_entries_are_numbered_and_chained_from_genesis(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    a = log.append(actor="alice", role="analyst", action="read", fields=["income"], pseudonyms=["p1"])
    b = log.append(actor="bob", role="officer", action="approve", approvals=["bob"])
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev_hash == GENESIS_HASH and b.prev_hash == a.hash
    stored = [json.loads(x) for x in lines(log)]
    assert stored == [a.to_dict(), b.to_dict()]


def test_hash_is_sha256_of_prev_hash_and_canonical_body(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    e = log.append(actor="alice", role="analyst", action="query", details={"b": 1, "a": "é"})
    body = {k: v for k, v in e.to_dict().items() if k not in ("hash", "prev_hash")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert e.hash == hashlib.sha256(GENESIS_HASH.encode() + canonical).hexdigest()
    assert (
        lines(log)[0]
        == json.dumps(e.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )


def test_time_is_iso_utc_with_microseconds(tmp_path: Path) -> None:
    e = AuditLog.open(tmp_path / "audit").append(actor="a", role="r", action="read")
    t = datetime.fromisoformat(e.time)
    assert t.utcoffset() == timedelta(0)
    assert len(e.time.split(".")[1]) == len("123456+00:00")


def test_intact_log_verifies_with_counts(tmp_path: Path) -> None:
    log = make_log(tmp_path, 25, every=10)
    report = log.verify()
    assert report.ok and report.problem is None and report.first_bad_seq is None
    assert (report.entries, report.checkpoints) == (25, 3)  # 1-10, 11-20, close: 21-25
    assert "intact" in report.message


def test_empty_log_verifies(tmp_path: Path) -> None:
    report = AuditLog.open(tmp_path / "audit").verify()
    assert report.ok and report.entries == 0 and report.checkpoints == 0


# --- every kind of tampering is named ---------------------------------------------------------
def test_modified_body_names_the_entry(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100)
    ls = lines(log)
    ls[6] = ls[6].replace(b'"purpose":"credit_risk"', b'"purpose":"marketing__"')
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.ok, r.problem, r.first_bad_seq, r.line) == (False, "modified", 7, 7)
    assert "entry 7" in r.message


def test_modified_and_rehashed_entry_is_named_through_its_successor(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[4])
    d["actor"] = "someone-else"
    ls[4] = as_line(rehash(d))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("modified", 5, 5)


def test_rechained_modification_is_caught_by_the_signed_checkpoint(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    ls = [json.loads(x) for x in lines(log)]
    ls[13]["purpose"] = "marketing"
    prev = ls[12]["hash"]
    for d in ls[13:]:
        d["prev_hash"] = prev
        d.update(rehash(d))
        prev = d["hash"]
    write_lines(log.log_path, [as_line(d) for d in ls])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 11)
    assert "checkpoint #2" in r.message and "entries 11-20" in r.message


def test_rechained_change_after_last_checkpoint_is_a_documented_blind_spot(tmp_path: Path) -> None:
    log = make_log(tmp_path, 15, every=10, close=False)  # 11-15 not yet checkpointed
    ls = [json.loads(x) for x in lines(log)]
    ls[13]["purpose"] = "marketing"
    ls[13] = rehash(ls[13])
    ls[14]["prev_hash"] = ls[13]["hash"]
    ls[14] = rehash(ls[14])
    write_lines(log.log_path, [as_line(d) for d in ls])
    assert log.verify().ok
    assert "hash chain only" in log.verify().message


def test_deleted_entry_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    del ls[5]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("deleted", 6, 6)
    assert "entry 6 was deleted" in r.message


def test_several_deleted_entries_are_named_as_a_range(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    del ls[3:6]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("deleted", 4)
    assert "entries 4-6 were deleted" in r.message


def test_inserted_forged_entry_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    prev = json.loads(ls[4])
    forged = dict(json.loads(ls[5]), actor="ghost", prev_hash=prev["hash"])  # looks like entry 6
    ls.insert(5, as_line(rehash(forged)))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 6, 6)


def test_inserted_replayed_copy_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    ls.insert(7, ls[2])  # a copy of entry 3 after entry 7
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 3, 8)


def test_inserted_entry_that_the_chain_skips_is_named_not_the_genuine_one(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    first = json.loads(ls[0])
    forged = rehash(dict(first, actor="ghost"))  # a second "entry 1" placed before the real one
    ls.insert(0, as_line(forged))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 1, 1)


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    ls[3], ls[4] = ls[4], ls[3]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("reordered", 4, 4)
    assert "line 4" in r.message and "entry 4 appears later, on line 5" in r.message


def test_truncation_past_a_checkpoint_is_detected(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    write_lines(log.log_path, lines(log)[:14])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("truncated", 15)
    assert "entries 15-20 were removed" in r.message


def test_truncation_to_empty_is_detected(tmp_path: Path) -> None:
    log = make_log(tmp_path, 5, every=10)
    log.log_path.write_bytes(b"")
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("truncated", 1)


def test_truncation_after_last_checkpoint_is_a_documented_blind_spot(tmp_path: Path) -> None:
    log = make_log(tmp_path, 15, every=10, close=False)
    write_lines(log.log_path, lines(log)[:12])
    assert log.verify().ok


def test_malformed_line_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 8, every=100, close=False)
    ls = lines(log)
    ls[2] = b"this is not json\n"
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("malformed", 3, 3)


def test_entry_with_a_missing_field_is_malformed(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[1])
    del d["purpose"]
    ls[1] = as_line(d)
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("malformed", 2)
    assert "purpose" in r.message


def test_missing_final_newline_is_malformed(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    log.log_path.write_bytes(log.log_path.read_bytes()[:-1])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("malformed", 4)


def test_value_preserving_byte_edit_is_still_reported(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    log.append(actor="a", role="r", action="fl_round", details={"delta": 1e-05})
    raw = log.log_path.read_bytes()
    assert b"1e-05" in raw
    log.log_path.write_bytes(raw.replace(b"1e-05", b"1E-05"))
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 1)


_TEMPLATE: dict[str, object] = {}


def _template() -> tuple[bytes, list[int]]:
    """A small log (built once) and the line number of every byte."""
    if not _TEMPLATE:
        with tempfile.TemporaryDirectory() as d:
            log = make_log(Path(d), 6, every=4)
            _TEMPLATE["raw"] = log.log_path.read_bytes()
            _TEMPLATE["cps"] = log.checkpoint_path.read_bytes()
            _TEMPLATE["pub"] = log.public_key_file.read_bytes()
    raw = _TEMPLATE["raw"]
    assert isinstance(raw, bytes)
    owners, line = [], 1
    for b in raw:
        owners.append(line)
        line += b == ord("\n")
    return raw, owners


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_edit_names_the_entry_holding_it(data: st.DataObject) -> None:
    raw, owners = _template()
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
    with tempfile.TemporaryDirectory() as d:
        audit = Path(d) / "audit"
        audit.mkdir()
        (audit / LOG_NAME).write_bytes(raw[:pos] + bytes([new]) + raw[pos + 1 :])
        (audit / CHECKPOINT_NAME).write_bytes(_TEMPLATE["cps"])  # type: ignore[arg-type]
        (audit / PUBLIC_KEY_NAME).write_bytes(_TEMPLATE["pub"])  # type: ignore[arg-type]
        r = AuditLog(audit).verify()
    assert not r.ok
    assert r.first_bad_seq == owners[pos], r.message
    assert r.problem in ("modified", "malformed")


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


# --- append validation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decision": "maybe"}, "decision"),
        ({"action": "Read Data"}, "lower-case"),
        ({"actor": ""}, "actor"),
        ({"fields": "income"}, "single string"),
        ({"row_count": -1}, "row_count"),
        ({"details": {"x": object()}}, "JSON-safe"),
        ({"details": {"x": float("nan")}}, "JSON-safe"),
        ({"details": {"blob": "x" * 10000}}, "under"),
    ],
)
def test_invalid_entry_is_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict, match: str) -> None:
    log = AuditLog.open(tmp_path / "audit")
    log.append(actor="a", role="r", action="read")
    before = log.log_path.read_bytes()
    with pytest.raises(DataError, match=match):
        log.append(**{"actor": "a", "role": "r", "action": "read", **kwargs})
    assert log.log_path.read_bytes() == before


def test_card_number_is_refused_without_being_echoed(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    card = "4111 1111 1111 1111"
    for kwargs in ({"pseudonyms": ["ps_1", card]}, {"reason": f"customer {card} complained"}):
        with pytest.raises(DataError) as info:
            log.append(actor="a", role="r", action="read", **kwargs)
        assert card not in str(info.value) and card.replace(" ", "") not in str(info.value)
    assert not log.log_path.exists() or log.log_path.read_bytes() == b""


def test_hex_pseudonyms_and_numeric_details_are_accepted(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    e = log.append(
        actor="a",
        role="r",
        action="fl_round",
        pseudonyms=["9f86d081884c7d65"],
        details={"run_id": "20250101123045123", "round": 3, "epsilon": 0.5},
    )
    assert e.details["run_id"] == "20250101123045123"


def test_details_are_copied_so_later_mutation_does_not_change_the_entry(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    details = {"rounds": [1, 2]}
    e = log.append(actor="a", role="r", action="fl_round", details=details)
    details["rounds"].append(3)
    assert e.details == {"rounds": [1, 2]} and log.verify().ok


def test_append_to_a_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AuditLog.open"):
        AuditLog(tmp_path / "nowhere").append(actor="a", role="r", action="read")


def test_bad_checkpoint_every_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every"):
        AuditLog(tmp_path, checkpoint_every=0)


def test_durable_appends_verify(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", durable=True)
    for _ in range(3):
        log.append(actor="a", role="r", action="erase", pseudonyms=["ps_9"])
    assert log.verify().ok and log.head()[0] == 3


# --- crash and outside changes --------------------------------------------------------------------
def test_torn_tail_stops_appends_and_checkpoints_until_repaired(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    with open(log.log_path, "ab") as f:
        f.write(b'{"action":"read","act')  # a writer crashed mid-line
    before = log.log_path.read_bytes()
    for attempt in (
        lambda: log.append(actor="a", role="r", action="read"),
        log.checkpoint,
        log.check_before_acting,
    ):
        with pytest.raises(IntegrityError, match="incomplete line.*audit repair"):
            attempt()
    log.close()  # never signs over the fragment
    assert log.log_path.read_bytes() == before and log.checkpoints() == []
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("malformed", 5, 5)


def test_append_refuses_to_extend_a_corrupt_last_entry(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3, every=100, close=False)
    ls = lines(log)
    ls[-1] = b"garbage\n"
    write_lines(log.log_path, ls)
    with pytest.raises(IntegrityError, match="refusing to append"):
        log.append(actor="a", role="r", action="read")


def test_head_follows_appends_from_other_handles(tmp_path: Path) -> None:
    one = AuditLog.open(tmp_path / "audit")
    two = AuditLog.open(tmp_path / "audit")
    one.append(actor="a", role="r", action="read")
    e = two.append(actor="b", role="r", action="read")
    assert e.seq == 2 and one.head() == (2, e.hash)
    assert one.append(actor="a", role="r", action="read").prev_hash == e.hash


def test_iterating_a_damaged_log_raises_integrity_error(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3, every=100, close=False)
    ls = lines(log)
    ls[1] = b"{}\n"
    write_lines(log.log_path, ls)
    with pytest.raises(IntegrityError, match="line 2"):
        list(log)


# --- concurrency ------------------------------------------------------------------------------
def _worker(directory: str, keys: str, worker: int, n: int) -> None:
    log = AuditLog.open(Path(directory), keys_dir=Path(keys), checkpoint_every=100)
    for i in range(n):
        log.append(actor=f"w{worker}", role="trainer", action="fl_round", details={"i": i})
    log.close()


def test_four_processes_appending_lose_and_interleave_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")  # create the key once
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path / "audit"), str(tmp_path / "keys"), w, 500))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # no wall-clock limit: load slows, it does not break (pytest-timeout catches a hang)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    log = AuditLog(tmp_path / "audit", signing_key_path=tmp_path / "keys" / SIGNING_KEY_NAME)
    report = log.verify()
    assert report.ok, report.message
    assert report.entries == 2000 and report.checkpoints >= 20
    entries = list(log)
    assert [e.seq for e in entries] == list(range(1, 2001))
    for w in range(4):
        assert [e.details["i"] for e in entries if e.actor == f"w{w}"] == list(range(500))


def test_forked_children_reopen_the_lock_instead_of_sharing_it(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=50)
    log.append(actor="parent", role="r", action="read")  # parent's descriptors exist before fork

    def child(w: int) -> None:
        for i in range(150):
            log.append(actor=f"c{w}", role="r", action="read", details={"i": i})

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=child, args=(w,)) for w in range(3)]
    for p in procs:
        p.start()
    for _ in range(150):
        log.append(actor="parent", role="r", action="read")
    for p in procs:
        p.join()  # no wall-clock limit: load slows, it does not break (pytest-timeout catches a hang)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    report = log.verify()
    assert report.ok, report.message
    assert report.entries == 601


def test_threads_sharing_one_log_lose_nothing(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=64)

    def run(w: int) -> None:
        for _ in range(100):
            log.append(actor=f"t{w}", role="r", action="query")

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok and report.entries == 400


# --- query --------------------------------------------------------------------------------------
def test_query_filters_combine(tmp_path: Path) -> None:
    log = make_log(tmp_path, 30, every=100)
    every = list(log)
    assert len(log.query()) == 30
    assert {e.actor for e in log.query(actor="analyst-1")} == {"analyst-1"}
    assert len(log.query(actor="analyst-1")) == sum(e.actor == "analyst-1" for e in every)
    assert [e.seq for e in log.query(field="phone")] == [e.seq for e in every if "phone" in e.fields]
    assert [e.seq for e in log.query(decision="denied")] == [5, 10, 15, 20, 25, 30]
    assert [e.seq for e in log.query(action="decrypt", role="compliance")] == [4, 8, 12, 16, 20, 24, 28]
    assert log.query(purpose="marketing") == []
    assert [e.seq for e in log.query(pseudonym="ps_000a")] == [10]
    assert log.query(dataset="loans", decision="denied", field="phone", actor="analyst-1") == [every[9]]


def test_a_customer_query_also_returns_entries_whose_customer_list_was_cut(tmp_path: Path) -> None:
    # A decrypt of 2,488 rows names only the first 1,000 customers; asking for the 1,500th found
    # nothing (found by a new-user trial). Such an entry may include the customer, so it is returned.
    log = make_log(tmp_path, 3, every=100, close=False)
    log.append(
        actor="rick",
        role="risk_officer",
        action=ACTION_DECRYPT,
        fields=("customer_id",),
        row_count=2488,
        pseudonyms=("ps_aaaa",),
        details={"pseudonyms_truncated": 2488},
    )
    log.close()
    assert [e.seq for e in log.query(pseudonym="ps_0002")] == [2, 4]
    assert [e.seq for e in log.query(pseudonym="ps_ffff")] == [4]
    assert [e.seq for e in log.query(pseudonym="ps_ffff", actor="analyst-1")] == []


def test_query_filters_ignore_case_and_width(tmp_path: Path) -> None:
    log = make_log(tmp_path, 30, every=100)
    for exact, typed in (
        ({"actor": "analyst-1"}, {"actor": "Analyst-1"}),
        ({"actor": "analyst-1"}, {"actor": "ＡＮＡＬＹＳＴ-1"}),  # fullwidth, as people's names are compared
        ({"decision": "denied"}, {"decision": "DENIED"}),
        ({"action": "decrypt", "role": "compliance"}, {"action": "Decrypt", "role": "COMPLIANCE"}),
        ({"field": "phone"}, {"field": "Phone"}),
        ({"pseudonym": "ps_000a"}, {"pseudonym": "PS_000A"}),
        ({"dataset": "loans"}, {"dataset": "Loans"}),
    ):
        want = [e.seq for e in log.query(**exact)]
        assert want and [e.seq for e in log.query(**typed)] == want, typed
    assert log.query(actor="analyst-") == []  # equality, not a prefix


def test_query_time_window_is_inclusive_and_naive_means_utc(tmp_path: Path) -> None:
    log = make_log(tmp_path, 5, every=100)
    es = list(log)
    t2, t4 = es[1].timestamp, es[3].timestamp
    assert [e.seq for e in log.query(since=t2, until=t4)] == [2, 3, 4]
    naive = t2.astimezone(UTC).replace(tzinfo=None)
    assert [e.seq for e in log.query(since=naive)] == [2, 3, 4, 5]
    assert log.query(since=t4 + timedelta(days=1)) == []
    with pytest.raises(ConfigError, match="after until"):
        log.query(since=t4, until=t2)


def test_entry_moved_far_later_is_named_as_reordered(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    moved = ls.pop(2)  # entry 3 ...
    ls.insert(7, moved)  # ... now after entry 8
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("reordered", 3, 3)


def test_inserted_entry_with_an_odd_seq_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    forged = rehash(dict(json.loads(ls[5]), seq=99, prev_hash=json.loads(ls[4])["hash"]))
    ls.insert(5, as_line(forged))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 99, 6)


def test_rewritten_line_with_keys_out_of_canonical_order_is_modified(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[1])
    ls[1] = json.dumps(dict(reversed(list(d.items()))), separators=(",", ":")).encode() + b"\n"
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 2) and "canonical" in r.message


def test_verify_during_concurrent_appends_sees_a_consistent_snapshot(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=25)
    stop = threading.Event()

    def writer() -> None:
        writer_log = AuditLog.open(tmp_path / "audit", checkpoint_every=25)
        while not stop.is_set():
            writer_log.append(actor="w", role="r", action="ingest", details={"pad": "x" * 200})

    t = threading.Thread(target=writer)
    t.start()
    try:
        while log.head()[0] < 50:
            stop.wait(0.001)
        reports = [log.verify() for _ in range(30)]
    finally:
        stop.set()
        t.join()
    assert all(r.ok for r in reports), [r.message for r in reports if not r.ok]
    assert reports[0].entries >= 50 and reports[-1].entries > reports[0].entries
