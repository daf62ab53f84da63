"""Audit log entries: numbered, chained from genesis, hashed over their canonical body."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path

from fedcustomer.privacy.audit.records import GENESIS_HASH
from fedcustomer.privacy.audit.writer import AuditLog
from tests.privacy.audit.audit_log_helpers import lines, make_log


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
