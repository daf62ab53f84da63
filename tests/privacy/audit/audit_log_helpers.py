"""Shared helpers for the audit log tests: a filled log, and raw line edits for tampering."""

from __future__ import annotations

from pathlib import Path

from fedcustomer.privacy.audit.records import (
    ACTION_DECRYPT,
    ACTION_READ,
    DECISION_ALLOWED,
    DECISION_DENIED,
    VerifyReport,
    canonical_json,
    entry_hash,
)
from fedcustomer.privacy.audit.writer import AuditLog


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
