"""Audit entries in the shapes compliance systems ingest: JSON lines and RFC 5424 syslog.

JSON lines are the stored lines byte for byte, so whoever receives them can recompute
every entry's hash and the chain (see :mod:`.records`). Syslog lines follow RFC 5424:
``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ELEMENT] MSG``, with the facility
"log audit" (13), severity informational for allowed and notice for denied entries, the
partner's name as HOSTNAME, the action as MSGID, one structured-data element
``fedcustomer@32473`` (seq, actor, role, action, decision, dataset, purpose, fields,
row_count, hash, prev_hash) and the whole stored entry, UTF-8 with a BOM, as MSG.
32473 is the private enterprise number RFC 5612 reserves for documentation; a site with
its own number may rewrite the SD-ID. Entries hold pseudonyms, never customer values, and
nothing is added here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from fedcustomer.privacy.audit.records import DECISION_DENIED, AuditEntry, canonical_json

SD_ID = "fedcustomer@32473"
APP_NAME = "fedcustomer"
FACILITY_LOG_AUDIT = 13
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6
_BOM = "\ufeff"
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def jsonl_lines(entries: Iterable[AuditEntry]) -> Iterator[bytes]:
    """Each entry as its canonical stored line (hashes recomputable from the bytes)."""
    for e in entries:
        yield canonical_json(e.to_dict()) + b"\n"


def sd_escape(value: str) -> str:
    """An SD-PARAM value escaped as RFC 5424 section 6.3.3 requires: ``"``, ``\\`` and ``]``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: str | None, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters; ``-`` when empty."""
    cleaned = _NOT_PRINTUSASCII.sub("_", value or "")[:limit]
    return cleaned or "-"


def syslog_line(entry: AuditEntry, hostname: str) -> str:
    """One RFC 5424 message (without the trailing newline) for ``entry``."""
    severity = SEVERITY_NOTICE if entry.decision == DECISION_DENIED else SEVERITY_INFO
    pri = FACILITY_LOG_AUDIT * 8 + severity
    params: list[tuple[str, str]] = [
        ("seq", str(entry.seq)),
        ("actor", entry.actor),
        ("role", entry.role),
        ("action", entry.action),
        ("decision", entry.decision),
    ]
    if entry.dataset is not None:
        params.append(("dataset", entry.dataset))
    if entry.purpose is not None:
        params.append(("purpose", entry.purpose))
    if entry.fields:
        params.append(("fields", ",".join(entry.fields)))
    if entry.row_count is not None:
        params.append(("row_count", str(entry.row_count)))
    params += [("hash", entry.hash), ("prev_hash", entry.prev_hash)]
    sd = "[" + SD_ID + "".join(f' {k}="{sd_escape(v)}"' for k, v in params) + "]"
    header = " ".join(
        [
            f"<{pri}>1",
            entry.time,  # isoformat with microseconds and +00:00: an RFC 3339 timestamp as 5424 allows
            _header_field(hostname, 255),
            APP_NAME,
            "-",
            _header_field(entry.action, 32),
        ]
    )
    msg = canonical_json(entry.to_dict()).decode("utf-8")
    return f"{header} {sd} {_BOM}{msg}"


def syslog_lines(entries: Iterable[AuditEntry], hostname: str) -> Iterator[bytes]:
    for e in entries:
        yield (syslog_line(e, hostname) + "\n").encode("utf-8")
