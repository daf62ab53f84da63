"""``fedcustomer audit export``: a verified range of the audit log for a compliance system.

Formats: ``jsonl`` (the stored lines byte for byte, so hashes can be recomputed), ``csv``
(as ``audit query --format csv``) and ``syslog`` (RFC 5424 with structured data, see
:mod:`fedcustomer.privacy.audit.export`). The range is ``--from``/``--to`` (entry
sequence numbers, inclusive) and/or ``--since``/``--until`` (ISO 8601 times, inclusive).

The export runs under the same rule as ``audit query`` (the exporter's ``--identity``,
whose registered role the home's policy must allow ``audit_read``; refusals and exports
are audit entries). The whole log is verified first, the people's signatures in it are
checked against the registry, and with ``--anchors FILE`` the log is checked against the
anchors the partner sent out: if any check fails, nothing is written (exit 7). Beside ``FILE``,
``FILE.verification.json`` states what was verified: the verification report, the anchor
report, the export's SHA-256 and range, the entries covered by signed checkpoints, and the
partner's current anchor (the signed checkpoint the export is consistent with).
Entries hold pseudonyms and never customer values; the export adds nothing to them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from fedcustomer.cli.audit import (
    _append_to_home,
    _parse_time,
    audit_app,
    authorise,
    check_anchors,
    check_signatures,
    entries_csv,
    open_for_reading,
    open_home_log,
)
from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import atomic_write_bytes, atomic_write_text
from fedcustomer.errors import ConfigError, FedCustomerError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import current_anchor
from fedcustomer.privacy.audit.export import jsonl_lines, syslog_lines
from fedcustomer.privacy.audit.query import select_entries
from fedcustomer.privacy.audit.records import ACTION_AUDIT_QUERY, PUBLIC_KEY_NAME, now_iso

EXPORT_FORMATS = ("jsonl", "csv", "syslog")
VERIFICATION_SUFFIX = ".verification.json"
VERIFICATION_FORMAT = "fedcustomer.audit.export/1"


def register(app: typer.Typer) -> None:
    """Nothing to attach: importing this module adds ``export`` to the ``audit`` group."""


def _checkpoint_now(home: Path) -> None:
    """Sign the entries written since the last checkpoint, so the exported range is signed (best effort)."""
    try:
        log = open_home_log(home)
        if log is None:
            return
        with log as audit:
            audit.check_before_acting()  # a damaged log is left for `audit verify` to report
    except (FedCustomerError, OSError):
        pass


@audit_app.command("export")
def export_cmd(
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    identity: Path = typer.Option(
        ...,
        "--identity",
        envvar="FEDCUSTOMER_IDENTITY",
        help="Your identity key file; your registered role must be allowed audit_read (compliance_officer).",
    ),
    fmt: str = typer.Option(..., "--format", help="jsonl, csv or syslog (RFC 5424)."),
    out: Path = typer.Option(
        ..., "--out", help="File to write; FILE.verification.json is written beside it."
    ),
    first: int | None = typer.Option(None, "--from", help="First entry (sequence number, inclusive)."),
    last: int | None = typer.Option(None, "--to", help="Last entry (sequence number, inclusive)."),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 date/time, inclusive (UTC if no zone)."),
    until: str | None = typer.Option(None, "--until", help="ISO 8601 date/time, inclusive (UTC if no zone)."),
    anchors: Path | None = typer.Option(
        None,
        "--anchors",
        help="Also check the log against these anchors; refuse if it no longer matches them.",
    ),
) -> None:
    """Export a verified range of the audit log, with its verification result and anchors beside it."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    for option, value in (("--from", first), ("--to", last)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} {value}: entry sequence numbers start at 1")
    if first is not None and last is not None and first > last:
        raise ConfigError(f"--from {first} is after --to {last}")
    lo, hi = _parse_time("--since", since), _parse_time("--until", until)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} not found")
    sidecar = out.with_name(out.name + VERIFICATION_SUFFIX)
    audit = open_for_reading(home, None)
    asked: dict[str, Any] = {
        k: v
        for k, v in dict(format=fmt, first=first, last=last, since=since, until=until).items()
        if v is not None
    }
    details: dict[str, Any] = {"export": asked, "verified": True}
    who = authorise(home, identity, "audit_read", ACTION_AUDIT_QUERY, details)
    _checkpoint_now(home)
    report = audit.verify()
    if not report.ok:
        raise IntegrityError(
            f"audit log {audit.directory} failed verification ({report.problem}, entry {report.first_bad_seq}): "
            f"{report.message}. Nothing exported"
        )
    signatures = check_signatures(home, audit)
    if signatures is not None and not signatures.ok:
        raise IntegrityError(f"audit log {audit.directory}: {signatures.message}. Nothing exported")
    anchored = check_anchors(audit, home, anchors, None) if anchors is not None else None
    if anchored is not None and not anchored.ok:
        raise IntegrityError(
            f"audit log {audit.directory} no longer holds what partner {anchored.partner!r} committed to "
            f"({anchored.problem}): {anchored.message}. Nothing exported"
        )
    entries = [
        e
        for e in select_entries(audit, since=lo, until=hi)
        if (first is None or e.seq >= first) and (last is None or e.seq <= last)
    ]
    if first is not None and first > report.entries:
        raise ConfigError(f"--from {first}: the log holds {report.entries} entries")
    name = PartnerHome(home).config().name
    if fmt == "jsonl":
        data = b"".join(jsonl_lines(entries))
    elif fmt == "syslog":
        data = b"".join(syslog_lines(entries, name))
    else:
        data = entries_csv(entries).encode("utf-8")
    checkpoints = audit.checkpoints()
    signed_through = checkpoints[-1].last_seq if checkpoints else 0
    anchor = current_anchor(audit.directory, name, PartnerHome(home).keys_dir / PUBLIC_KEY_NAME)
    sha = hashlib.sha256(data).hexdigest()
    doc = {
        "format": VERIFICATION_FORMAT,
        "partner": name,
        "exported_at": now_iso(),
        "exported_by": {"actor": who.name, "role": who.role, "key_id": who.key_id},
        "file": out.name,
        "export_format": fmt,
        "sha256": sha,
        "count": len(entries),
        "range": {
            "asked": asked,
            "first_seq": entries[0].seq if entries else None,
            "last_seq": entries[-1].seq if entries else None,
        },
        "verification": report.to_dict(),
        "signatures": None if signatures is None else signatures.to_dict(),
        "signed_through": signed_through,
        "unsigned_in_export": sum(e.seq > signed_through for e in entries),
        "anchor": anchor.to_dict() if anchor is not None else None,
        "anchors": None
        if anchored is None or anchors is None
        else {"file": anchors.name, "report": anchored.to_dict()},
    }
    atomic_write_bytes(out, data, mode=0o600)  # the log's entries name people and pseudonyms: owner only
    atomic_write_text(sidecar, json.dumps(doc, indent=2, ensure_ascii=False) + "\n", mode=0o600)
    _append_to_home(
        home,
        actor=who.name,
        role=who.role,
        action=ACTION_AUDIT_QUERY,
        row_count=len(entries),
        # What was asked stays as it was signed; what came of it is recorded beside it.
        details={**details, "exported": {"count": len(entries), "sha256": sha}, "auth": who.audit_details()},
    )
    terminal(stderr=True).print(
        f"exported {len(entries)} verified entries to {escape(str(out))} ({fmt}); verification in "
        f"{escape(sidecar.name)}"
    )
