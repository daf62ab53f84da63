"""``fedcustomer audit``: verify a partner's audit log, export who-read-what reports, repair a torn tail.

Exit codes: 0 for an intact log; 7 (IntegrityError) when verification fails, naming the
first bad entry; 3 (ConfigError) for a missing directory or a bad option; 5
(AccessDenied) for a role the policy does not allow; 8 (KeyMaterialError) for an
unreadable public key.

``--home DIR`` takes a partner home (log in ``DIR/audit``, trusted public key in
``DIR/keys``, the log's recorded reach in ``DIR/store.db``, so a deleted or rolled-back
log is caught); ``--log DIR`` takes a bare audit directory and trusts the public key
beside it unless ``--public-key FILE`` names an off-node copy (no reach is known there).

``audit verify --anchors FILE`` also checks the log against the anchors the partner sent
out with its replies (a run's ``anchors.jsonl``, or the anchor file partner.toml's ``[audit]``
names): exit 7 naming the first anchor the log no longer matches. ``audit export`` (module
:mod:`fedcustomer.cli.audit_export`) writes a verified range for compliance systems.

``audit query --home`` needs the asker's ``--identity FILE`` (``--actor``/``--role``
filter entries): the signed request is checked against the home's people registry, whose
role must be allowed ``audit_read`` by the home's policy, and the query itself, allowed
or denied, is an ``audit_query`` entry. ``--log DIR`` reads a copy of a log the reader
already holds: nothing is checked or recorded there. ``audit repair`` cuts an incomplete
last line left by a crashed writer (signed by a person whose role is allowed ``keys``),
see :meth:`AuditLog.repair_torn_tail`.

JSON written by ``audit verify --json``: the fields of ``VerifyReport`` (ok, entries,
checkpoints, first_bad_seq, problem, message, line, file). JSON written by ``audit query
--format json``: ``{"count": int, "filters": {...}, "entries": [entry, ...]}`` with each
entry as stored in the log.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.export import csv_text
from fedcustomer.data.store_customers import DETAILS_KEY as CUSTOMERS_KEY
from fedcustomer.data.store_customers import CustomerSets
from fedcustomer.errors import ConfigError, FedCustomerError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchor_check import AnchorReport, verify_anchors
from fedcustomer.privacy.audit.anchors import read_anchor_file
from fedcustomer.privacy.audit.keys import load_public_key
from fedcustomer.privacy.audit.query import IN_READ_SET, MAY_INCLUDE, NAMED, customer_match, fold_key
from fedcustomer.privacy.audit.reach import HomeReach
from fedcustomer.privacy.audit.records import (
    ACTION_AUDIT_QUERY,
    DECISIONS,
    ENTRY_FIELDS,
    PUBLIC_KEY_NAME,
    SIGNING_KEY_NAME,
    AuditEntry,
)
from fedcustomer.privacy.audit.writer import AuditLog

audit_app = typer.Typer(
    help="Verify the tamper-evident audit log and report who read which field, why, approved by whom.",
    no_args_is_help=True,
)
FORMATS = ("table", "csv", "json")
CSV_COLUMNS = ENTRY_FIELDS

HomeOpt = typer.Option(None, "--home", help="Partner home directory (uses DIR/audit and DIR/keys).")
LogOpt = typer.Option(None, "--log", help="A bare audit log directory (instead of --home).")
KeyOpt = typer.Option(None, "--public-key", help="Trusted Ed25519 public key (PEM), e.g. an off-node copy.")


def register(app: typer.Typer) -> None:
    """Attach the ``audit`` command group to the root app."""
    app.add_typer(audit_app, name="audit")


def open_for_reading(home: Path | None, log: Path | None, public_key: Path | None = None) -> AuditLog:
    """The audit log named by ``--home`` or ``--log``, opened without creating anything."""
    if (home is None) == (log is None):
        raise ConfigError(
            "give exactly one of --home DIR (a partner home) or --log DIR (an audit log directory)"
        )
    if home is not None:
        partner = PartnerHome(home)
        if not partner.root.is_dir():
            raise ConfigError(f"--home {home}: directory not found")
        directory = partner.audit_dir
        if not directory.is_dir():
            raise ConfigError(
                f"no audit log at {directory}: is {home} a partner home (it should contain audit/)?"
            )
        trusted = partner.keys_dir / PUBLIC_KEY_NAME
        if public_key is None and trusted.exists():
            public_key = trusted
        audit = AuditLog(directory, public_key_path=public_key, reach=HomeReach.for_home(partner))
        sets = CustomerSets.for_store_file(partner.store_path)  # reads' customer sets, checked by digest
        audit.customer_sets = sets.reached if sets is not None else None
        return audit
    directory = Path(log)  # type: ignore[arg-type]
    if not directory.is_dir():
        raise ConfigError(f"--log {log}: audit log directory not found")
    return AuditLog(directory, public_key_path=public_key)


def _home_policy(home: Path | None) -> Any:
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.access.policy import AccessPolicy

    return PartnerStore._load_policy(PartnerHome(home)) if home is not None else AccessPolicy.default()


def open_home_log(home: Path) -> AuditLog | None:
    """The home's audit log opened for writing (its signing key in keys/ or on the token), or None.

    None for a copy without the node's signing key: a key is never made here.
    """
    partner = PartnerHome(home)
    if not (partner.keys_dir / SIGNING_KEY_NAME).exists() and not partner.keyring_config().audit_on_token:
        return None
    return partner.open_audit_log()


def _append_to_home(home: Path, **entry: Any) -> bool:
    """Append one entry to the home's log if it can take one; False if not.

    Not possible on a copy without the node's signing key, for a reader without write
    access, or on a damaged log (which verification reports).
    """
    try:
        log = open_home_log(home)
        if log is None:
            return False
        with log as audit:
            audit.check_before_acting()
            audit.append(**entry)
        return True
    except (FedCustomerError, OSError):
        return False


def authorise(
    home: Path,
    identity: Path | None,
    action: str,
    audit_action: str,
    details: dict,
    pseudonyms: list[str] | None = None,
) -> Any:
    """The authenticated actor if the policy lets their registered role do ``action``.

    The signed request and any refusal are audit-logged by the store.
    """
    from fedcustomer.cli.identity import load_signer
    from fedcustomer.data.store import PartnerStore

    if identity is None:
        raise ConfigError(
            "--home needs --identity FILE: who reads a partner's audit log is checked and recorded"
        )
    signer = load_signer(identity)
    partner = PartnerHome(home)
    if not (partner.keys_dir / SIGNING_KEY_NAME).exists():
        # An auditor's copy (log, public key, registry; no signing key): opening the store would
        # make a signing key, and nothing can be recorded here anyway. Check the person and the role.
        from fedcustomer.data.people_admin import authenticate_without_store

        who = authenticate_without_store(partner, signer, action=action, extra={"details": details})
        _home_policy(home).require(who, action)
        return who
    with PartnerStore.open(partner) as store:
        actor = store.principal(signer, action=action, audit_action=audit_action, extra={"details": details})
        store.require(actor, action, audit_action, details=details, pseudonyms=pseudonyms or [])
    return actor


@audit_app.command("verify")
def verify_cmd(
    home: Path | None = HomeOpt,
    log: Path | None = LogOpt,
    public_key: Path | None = KeyOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the verification report as JSON."),
    anchors: Path | None = typer.Option(
        None,
        "--anchors",
        help="Also check the log against the anchors in FILE (a run's anchors.jsonl or the partner's anchor file).",
    ),
    partner_name: str | None = typer.Option(
        None,
        "--partner",
        help="Whose anchors to check (default: the home's partner name; needed with --log).",
    ),
) -> None:
    """Check the hash chain, sequence numbers and signed checkpoints; exit 0 only if intact.

    With ``--anchors FILE`` the log must also still hold every checkpoint the partner sent
    out (see :mod:`fedcustomer.privacy.audit.anchor_check`).
    """
    audit = open_for_reading(home, log, public_key)
    report = audit.verify()
    signatures = check_signatures(home, audit) if report.ok else None
    anchored = check_anchors(audit, home, anchors, partner_name, public_key) if anchors is not None else None
    if as_json:
        doc = report.to_dict()
        if signatures is not None:
            doc["signatures"] = signatures.to_dict()
        if anchored is not None:
            doc["anchors"] = anchored.to_dict()
        typer.echo(json.dumps(doc, indent=2))
    else:
        console = terminal()
        if report.ok:
            console.print(f"[bold green]INTACT[/] {escape(str(audit.directory))}: {escape(report.message)}")
        else:
            console.print(f"[bold red]TAMPERED[/] {escape(str(audit.directory))}: {escape(report.message)}")
            console.print(f"problem: {escape(report.problem or '')}, first bad entry: {report.first_bad_seq}")
        if signatures is not None:
            colour = "green" if signatures.ok else "red"
            console.print(f"[bold {colour}]SIGNATURES[/] {escape(signatures.message)}")
        if anchored is not None:
            verdict = "[bold green]ANCHORED[/]" if anchored.ok else "[bold red]REWRITTEN[/]"
            console.print(f"{verdict} {escape(anchored.message)}")
    if not report.ok:
        raise IntegrityError(
            f"audit log {audit.directory} failed verification ({report.problem}, entry {report.first_bad_seq}): "
            f"{report.message}"
        )
    if signatures is not None and not signatures.ok:
        raise IntegrityError(f"audit log {audit.directory}: {signatures.message}")
    if anchored is not None and not anchored.ok:
        raise IntegrityError(
            f"audit log {audit.directory} no longer holds what partner {anchored.partner!r} committed to "
            f"({anchored.problem}): {anchored.message}"
        )


def check_signatures(home: Path | None, audit: AuditLog) -> Any:
    """With a home that has a people registry: every signed request in the log, checked again."""
    if home is None or not PartnerHome(home).people_path.exists():
        return None
    from fedcustomer.data.store_core import load_home_policy
    from fedcustomer.privacy.access.people import MANAGE_ACTION, PeopleRegistry
    from fedcustomer.privacy.access.policy import Actor
    from fedcustomer.privacy.audit.signatures import check_entry_signatures

    partner = PartnerHome(home)
    policy = load_home_policy(partner)
    registry = PeopleRegistry(
        partner.people_path, lambda role: policy.may(Actor("people-check", role), MANAGE_ACTION)
    )
    return check_entry_signatures(iter(audit), registry)


def check_anchors(
    audit: AuditLog, home: Path | None, anchors: Path, partner: str | None, public_key: Path | None = None
) -> AnchorReport:
    """The log checked against an anchors file, for the home's partner (or ``--partner``).

    The log's current key is ``--public-key``, else the home's ``keys/`` copy, else the one beside the log.
    """
    if partner is None:
        if home is None:
            raise ConfigError("--anchors with --log needs --partner NAME (whose anchors to check)")
        partner = PartnerHome(home).config().name
    candidates = [public_key] if public_key is not None else []
    if home is not None:
        candidates.append(PartnerHome(home).keys_dir / PUBLIC_KEY_NAME)
    candidates.append(audit.public_key_file)
    key_file = next((p for p in candidates if p.exists()), None)
    trusted = load_public_key(key_file) if key_file is not None else None
    return verify_anchors(audit.directory, read_anchor_file(anchors), partner, trusted)


def _parse_time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31 or 2025-01-31T12:00:00+00:00)"
        ) from None


def _cell(values: Any) -> str:
    return ";".join(values) if isinstance(values, (list, tuple)) else ("" if values is None else str(values))


def entries_csv(entries: list[AuditEntry]) -> str:
    """CSV with one row per entry; lists joined with ';', details as JSON."""
    rows = (
        [json.dumps(d[c], sort_keys=True) if c == "details" else _cell(d[c]) for c in CSV_COLUMNS]
        for d in (e.to_dict() for e in entries)
    )
    return csv_text(CSV_COLUMNS, rows)  # cells escaped against spreadsheet formula injection


def entries_json(
    entries: list[AuditEntry], filters: dict[str, Any], matches: dict[int, str] | None = None
) -> str:
    """The entries as JSON; with a ``--pseudonym`` filter each says how it reached the customer
    (``customer_match``: named, in_read_set or may_include)."""
    rows = [e.to_dict() | ({"customer_match": matches[e.seq]} if matches else {}) for e in entries]
    doc = {"count": len(entries), "filters": filters, "entries": rows}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


_MATCH_TEXT = {NAMED: "named", IN_READ_SET: "in read", MAY_INCLUDE: "may include"}


def _table(entries: list[AuditEntry], width: int, matches: dict[int, str] | None = None) -> Table:
    """A table sized to the terminal: all columns when wide, the essentials when narrow; with a
    ``--pseudonym`` filter, a column says how each entry reached the customer."""
    wide = width >= 140
    table = Table(title=f"{len(entries)} audit entries", show_lines=False)
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    cols = ["actor (role)" if wide else "actor", "action", "decision", "fields", "purpose"]
    if wide:
        cols[3:3] = ["dataset"]
        cols += ["job", "approval", "rows", "customers", "reason"]
    if matches:
        cols.append("customer")
    for col in cols:
        table.add_column(col, overflow="fold")
    for e in entries:
        row = [
            str(e.seq),
            e.time[:19].replace("T", " "),
            f"{e.actor} ({e.role})" if wide else e.actor,
            e.action,
            e.decision,
            ", ".join(e.fields),
            e.purpose or "",
        ]
        if wide:
            row[5:5] = [e.dataset or ""]
            row += [
                _job(e),
                ", ".join(e.approvals),
                "" if e.row_count is None else str(e.row_count),
                _customers(e),
                e.reason or "",
            ]
        if matches:
            row.append(_MATCH_TEXT.get(matches.get(e.seq, ""), ""))
        table.add_row(*(escape(c) for c in row), style="red" if e.decision == "denied" else None)
    return table


def _matches(audit: AuditLog, entries: list[AuditEntry], pseudonym: str | None) -> dict[int, str] | None:
    """How each entry reached the ``--pseudonym`` customer (None without that filter)."""
    if pseudonym is None:
        return None
    wanted = fold_key(pseudonym) or ""
    return {e.seq: customer_match(e, wanted, audit.customer_sets) or "" for e in entries}


def _job(e: AuditEntry) -> str:
    """The job an entry served: run id, round, and the read a round or evaluation cites."""
    run = e.details.get("run_id")
    if not isinstance(run, str):
        return ""
    parts = [run]
    if isinstance(e.details.get("round"), int):
        parts.append(f"round {e.details['round']}")
    cited = e.details.get("data_read")
    if isinstance(cited, dict) and isinstance(cited.get("audit_seq"), int):
        parts.append(f"read #{cited['audit_seq']}")
    return ", ".join(parts)


PSEUDONYM_HEX = re.compile(r"[0-9a-f]{64}")


def _customer_pseudonym(home: Path | None, pseudonym: str | None, customer: str | None) -> str | None:
    """The pseudonym a customer filter looks for: ``--pseudonym`` as given (refused unless it has a
    pseudonym's shape, so a raw id typed there never reaches the log), or ``--customer``'s raw id
    pseudonymised with the home's key. Neither message quotes what was typed."""
    if pseudonym is not None and customer is not None:
        raise ConfigError("give --pseudonym or --customer, not both")
    if pseudonym is not None:
        folded = pseudonym.strip().lower()
        if not PSEUDONYM_HEX.fullmatch(folded):
            raise ConfigError(
                "--pseudonym takes a customer's pseudonym (64 hex characters, as reads and audit entries "
                "show them), and what was given is not one; to find a customer by their id, give "
                "--customer ID with --home (the id is pseudonymised with the home's key and never logged)"
            )
        return folded
    if customer is None:
        return None
    if home is None:
        raise ConfigError(
            "--customer needs --home: the id is pseudonymised with that home's pseudonym key "
            "(a bare --log copy has no key; ask the partner for the pseudonym and give --pseudonym)"
        )
    from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

    keys_dir = PartnerHome(home).keys_dir
    try:
        pseudonymizer = Pseudonymizer.open(keys_dir)
    except FedCustomerError as exc:
        raise ConfigError(
            f"--customer: this home's pseudonym key cannot be read ({exc}); on an auditor's copy without "
            "keys, ask the partner for the customer's pseudonym and give --pseudonym"
        ) from None
    try:
        return pseudonymizer.pseudonym(customer)
    except FedCustomerError:
        raise ConfigError("--customer: the id is empty or not valid text") from None


def _customers(e: AuditEntry) -> str:
    """How many customers the entry names; "1000 of 2488" when its list was cut short; for a
    read that names none (a bulk read of public or sensitive fields), the size of the set it cites."""
    if not e.pseudonyms:
        cited = e.details.get(CUSTOMERS_KEY)
        count = cited.get("count") if isinstance(cited, dict) else None
        return str(count) if isinstance(count, int) and not isinstance(count, bool) else ""
    total = e.details.get("pseudonyms_truncated")
    return f"{len(e.pseudonyms)} of {total}" if isinstance(total, int) else str(len(e.pseudonyms))


def _write_atomic(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: directory {path.parent} not found")
    atomic_write_text(path, text, mode=0o600)  # audit entries name people and pseudonyms: owner only


@audit_app.command("query")
def query_cmd(
    home: Path | None = HomeOpt,
    log: Path | None = LogOpt,
    identity: Path | None = typer.Option(
        None,
        "--identity",
        envvar="FEDCUSTOMER_IDENTITY",
        help="Your identity key file (needed with --home; the --actor option filters entries).",
    ),
    actor: str | None = typer.Option(None, "--actor", help="Only entries by this actor."),
    role: str | None = typer.Option(None, "--role", help="Only entries by this role."),
    field: str | None = typer.Option(None, "--field", help="Only entries that touched this field."),
    purpose: str | None = typer.Option(None, "--purpose", help="Only entries with this declared purpose."),
    decision: str | None = typer.Option(None, "--decision", help="allowed or denied."),
    action: str | None = typer.Option(
        None, "--action", help="read, decrypt, approve, erase, fl_round, fl_evaluate, vertical_round, ..."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Only entries about this dataset."),
    pseudonym: str | None = typer.Option(
        None,
        "--pseudonym",
        help="Only entries that touched this customer, by pseudonym (64 hex characters, as reads show them).",
    ),
    customer: str | None = typer.Option(
        None,
        "--customer",
        help="Only entries that touched this customer, by their raw id (with --home: pseudonymised with the "
        "home's key first; the id itself is never logged).",
    ),
    run: str | None = typer.Option(
        None,
        "--run",
        help="Only entries that served this job (run id): its reads, rounds (fl_round) and evaluations (fl_evaluate).",
    ),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 date/time, inclusive (UTC if no zone)."),
    until: str | None = typer.Option(None, "--until", help="ISO 8601 date/time, inclusive (UTC if no zone)."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    output: Path | None = typer.Option(None, "--output", help="Write the result to FILE (csv or json)."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Skip verification (to investigate a log that failed `audit verify`)."
    ),
) -> None:
    """List the entries matching every filter, as a table or exported as CSV / JSON.

    Every filter except the times ignores case (and Unicode width): --actor Rick finds
    rick's entries. The log is verified first, and nothing is reported from a log that fails verification
    unless ``--no-verify`` is given.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if decision is not None and decision.casefold() not in DECISIONS:
        raise ConfigError(f"--decision {decision!r}: choose one of {', '.join(sorted(DECISIONS))}")
    if output is not None and fmt == "table":
        suffix = output.suffix.lower().lstrip(".")
        if suffix not in ("csv", "json"):
            raise ConfigError(f"--output {output}: give --format csv or json (or a .csv / .json file name)")
        fmt = suffix
    lo, hi = _parse_time("--since", since), _parse_time("--until", until)
    pseudonym = _customer_pseudonym(home, pseudonym, customer)
    audit = open_for_reading(home, log)
    filters = {
        k: v
        for k, v in dict(
            actor=actor,
            role=role,
            field=field,
            purpose=purpose,
            decision=decision,
            action=action,
            dataset=dataset,
            pseudonym=pseudonym,
            run=run,
            since=since,
            until=until,
        ).items()
        if v is not None
    }
    asked = {k: v for k, v in filters.items() if k != "pseudonym"} | {"format": fmt}
    asked_details = {"filters": asked, "verified": not no_verify}
    looked_up = [pseudonym] if pseudonym else []  # checked like any pseudonym (never a raw value) on append
    who = (
        authorise(home, identity, "audit_read", ACTION_AUDIT_QUERY, asked_details, looked_up)
        if home is not None
        else None
    )
    if not no_verify:
        report = audit.verify()
        if not report.ok:
            raise IntegrityError(
                f"audit log {audit.directory} failed verification ({report.problem}, entry {report.first_bad_seq}): "
                f"{report.message}. Nothing reported; pass --no-verify to query it anyway"
            )
    entries = audit.query(
        actor=actor,
        role=role,
        field=field,
        purpose=purpose,
        decision=decision,
        action=action,
        since=lo,
        until=hi,
        dataset=dataset,
        pseudonym=pseudonym,
        run=run,
    )
    matches = _matches(audit, entries, pseudonym)
    if customer is not None and home is not None and not entries:
        from fedcustomer.data.store_customers import customer_status

        # found nothing because there is nothing to find: say so, without quoting the id
        if customer_status(PartnerHome(home).store_path, pseudonym or "") == "unknown":
            terminal(stderr=True).print(
                "no customer with that id is held in this home, and none was erased: check the id "
                "(ids match ignoring case and surrounding spaces)"
            )
    if fmt == "table":
        console = terminal()
        console.print(_table(entries, console.width, matches))
        uncertain = sum(1 for m in (matches or {}).values() if m == MAY_INCLUDE)
        if uncertain:
            console.print(
                f"{uncertain} read(s) may include this customer: their customer sets cannot be checked "
                "here (a log without its store.db, a read logged before reads recorded their customers, "
                "or a list cut at 1,000)"
            )
    else:
        text = entries_csv(entries) if fmt == "csv" else entries_json(entries, filters, matches)
        if output is None:
            typer.echo(text, nl=False)
        else:
            _write_atomic(output, text)
            terminal(stderr=True).print(f"wrote {len(entries)} entries to {escape(str(output))}")
    if home is not None and who is not None:  # who read the log, recorded after the answer (not in it)
        _append_to_home(
            home,
            actor=who.name,
            role=who.role,
            action=ACTION_AUDIT_QUERY,
            row_count=len(entries),
            details={**asked_details, "auth": who.audit_details()},
            pseudonyms=looked_up,
        )


@audit_app.command("repair")
def repair_cmd(
    home: Path = typer.Option(..., "--home", help="Partner home directory."),
    identity: Path = typer.Option(
        ...,
        "--identity",
        envvar="FEDCUSTOMER_IDENTITY",
        help="Your identity key file; your registered role must be allowed 'keys' (partner_admin).",
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="Why (e.g. the incident number); kept in the entry."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the repair entry as JSON."),
) -> None:
    """Cut an incomplete last line left by a crashed writer, recording the cut bytes in an audit entry.

    Refused unless the rest of the log verifies and the incomplete line lies after the
    last signed checkpoint: nothing else can be removed this way.
    """
    from fedcustomer.cli.identity import load_signer
    from fedcustomer.data.people_admin import authenticate_without_store

    partner = PartnerHome(home)
    if not partner.audit_dir.is_dir():
        raise ConfigError(f"no audit log at {partner.audit_dir}: is {home} a partner home?")
    who = authenticate_without_store(
        partner, load_signer(identity), action="keys", extra={"op": "audit_repair"}
    )
    _home_policy(home).require(who, "keys")  # a torn log cannot take a denial entry
    log = open_home_log(home)
    if log is None:
        raise ConfigError(f"{home} holds no audit signing key (keys/ or token): repair it on the node itself")
    with log as audit:
        entry = audit.repair_torn_tail(actor=who.name, role=who.role, reason=reason)
    if as_json:
        typer.echo(json.dumps(entry.to_dict(), indent=2))
    else:
        d = entry.details
        terminal().print(
            f"repaired {escape(str(partner.audit_dir))}: cut {d['cut_bytes']} bytes at offset {d['cut_at_offset']} "
            f"(sha256 {d['cut_sha256'][:16]}...), recorded in entry {entry.seq}"
        )
