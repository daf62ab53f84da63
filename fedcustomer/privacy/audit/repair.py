"""Repairing a torn tail: what a crashed writer left, and the messages that send users to repair.

Repair. ``AuditLog.repair_torn_tail`` (``fedcustomer audit repair``) cuts only an
unterminated last line, only after the last signed checkpoint, and only when everything
before it verifies (reach included); the cut bytes go, in full, into the repair's own
``audit_repair`` entry, so it cannot hide an entry. It saves the cut to
``repair.pending`` first; an interrupted repair blocks writers until it is run again.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.files import last_line
from fedcustomer.privacy.audit.records import (
    ACTION_AUDIT_REPAIR,
    REPAIR_PENDING_NAME,
    AuditEntry,
    canonical_json,
    is_int,
    parse_entry_line,
    parse_json_line,
)


def torn_message(path: Path) -> str:
    """Why nothing was done on a log ending in an incomplete line, and what to run."""
    return (
        f"{path} ends in an incomplete line (a writer stopped mid-append); nothing was done. Run "
        "`fedcustomer audit verify` and then `fedcustomer audit repair` to cut the incomplete line (it is kept, "
        "in full, in the repair's own audit entry)"
    )


def pending_message(path: Path) -> str:
    """Why nothing was done while a repair is unfinished, and what to run."""
    return (
        f"a repair of {path} was interrupted ({REPAIR_PENDING_NAME} is present); nothing was done. Run "
        "`fedcustomer audit repair` again to finish it"
    )


def pending_bytes(cut_at: int, cut_base64: str) -> bytes:
    """The content of ``repair.pending``: where the cut starts and the cut bytes (base64), in full."""
    return canonical_json({"cut_at_offset": cut_at, "cut_base64": cut_base64})


def read_pending(path: Path) -> tuple[int, str] | None:
    """(cut offset, cut bytes in base64) saved by an interrupted repair at ``path``, or None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        d = parse_json_line(data)
        cut_base64 = d["cut_base64"]
        base64.b64decode(cut_base64, validate=True)
        cut_at = d["cut_at_offset"]
        if not is_int(cut_at) or cut_at < 0:
            raise ValueError
        return int(cut_at), str(cut_base64)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(
            f"{path} is not a saved repair; remove it only after checking the log by hand"
        ) from None


def cut_details(cut_at: int, cut_base64: str) -> dict[str, Any]:
    """The repair entry's details: the cut's offset, length, SHA-256 and bytes (base64)."""
    fragment = base64.b64decode(cut_base64)
    return {
        "cut_at_offset": cut_at,
        "cut_bytes": len(fragment),
        "cut_sha256": hashlib.sha256(fragment).hexdigest(),
        "cut_base64": cut_base64,
    }


def repair_entry_at_end(fd: int, size: int, cut_at: int, fragment: bytes) -> AuditEntry | None:
    """The repair entry for this cut if it is already the log's last line."""
    line, torn, end = last_line(fd, size)
    if line is None or torn or end != size:
        return None
    parsed = parse_entry_line(line)
    e = parsed.entry
    if e is None or not parsed.self_ok or e["action"] != ACTION_AUDIT_REPAIR:
        return None
    d = e["details"]
    if d.get("cut_at_offset") != cut_at or d.get("cut_sha256") != hashlib.sha256(fragment).hexdigest():
        return None
    return AuditEntry.from_valid_dict(e)
