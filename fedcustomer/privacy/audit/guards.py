"""Checks a writer makes under the lock before it acts: does the log still extend what was signed and recorded?

``AuditLog.check_before_acting`` and the checkpoint writer use these so that damage is found
before an audited action, not after it. Cost: the entries since the last checkpoint and one
line at the recorded reach.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.files import last_line
from fedcustomer.privacy.audit.reach import Reach
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    LOG_NAME,
    Checkpoint,
    parse_entry_line,
    parse_json_line,
)


def unsigned_hashes(
    fd: int, log_path: Path, last: Checkpoint | None, head_seq: int, head_hash: str, size: int, refusing: str
) -> list[str] | None:
    """Hashes of the entries after the last checkpoint, checked to extend the signed chain
    (read through ``fd`` under the writers' lock); None if there are none. IntegrityError
    names what is wrong."""
    first = last.last_seq + 1 if last else 1
    offset = last.offset if last else 0
    prev_hash = last.head_hash if last else GENESIS_HASH
    if head_seq < first:
        if head_seq == first - 1 and (last is None or head_hash == last.head_hash):
            return None
        raise IntegrityError(
            f"{log_path} ends at entry {head_seq} but checkpoint #{last.number if last else 0} covers up to "
            f"entry {first - 1}: the log was truncated or altered; {refusing}. Run `fedcustomer audit verify`"
        )
    data = os.pread(fd, size - offset, offset)
    hashes: list[str] = []
    expected = first
    for lineno_rel, raw in enumerate(data.split(b"\n")[:-1]):
        parsed = parse_entry_line(raw)
        e = parsed.entry
        if (
            e is None
            or not parsed.self_ok
            or not parsed.canonical
            or e["seq"] != expected
            or e["prev_hash"] != prev_hash
        ):
            raise IntegrityError(
                f"entry {expected} in {log_path} (after byte {offset}, line {lineno_rel + 1} of the unsigned "
                f"range) does not extend the signed chain; {refusing}. Run `fedcustomer audit verify`"
            )
        hashes.append(e["hash"])
        prev_hash = e["hash"]
        expected += 1
    if expected - 1 != head_seq:
        raise IntegrityError(f"{log_path}: the unsigned range does not end at the head; {refusing}")
    return hashes


def reach_problem(
    fd: int, directory: Path, reach: Reach, head_seq: int, size: int, last: Checkpoint | None
) -> str | None:
    """Why the log (read through ``fd`` under the writers' lock) does not reach ``reach``, or None."""
    log_path, checkpoint_path = directory / LOG_NAME, directory / CHECKPOINT_NAME
    if head_seq < reach.seq:
        return (
            f"{log_path} ends at entry {head_seq} but {reach.source} recorded that it reached entry "
            f"{reach.seq}: the log was deleted or rolled back"
        )
    if reach.seq > 0 and reach.hash is not None and reach.end is not None:
        line = last_line(fd, reach.end)[0] if 0 < reach.end <= size else None
        d: Any
        try:
            d = parse_json_line(line) if line is not None else None
        except (UnicodeDecodeError, ValueError):
            d = None
        if not isinstance(d, dict) or d.get("seq") != reach.seq or d.get("hash") != reach.hash:
            return (
                f"entry {reach.seq} of {log_path} is not the entry {reach.source} recorded (hash "
                f"{reach.hash[:16]}...): the log was replaced or rewritten"
            )
    have = last.number if last else 0
    if have < reach.checkpoints:
        return (
            f"{checkpoint_path} ends at checkpoint #{have} but {reach.source} recorded #{reach.checkpoints}: "
            "signed checkpoints were removed"
        )
    if (
        last is not None
        and have == reach.checkpoints
        and reach.checkpoint_digest not in (None, last.digest())
    ):
        return f"checkpoint #{have} in {checkpoint_path} is not the one {reach.source} recorded"
    return None
