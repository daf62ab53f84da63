"""Governance commands: init, schema draft, ingest, read, approvals, keys, erase.

Thin shells over :class:`fedcustomer.data.store.PartnerStore` and its services
(approvals, key administration, erasure): every command names a partner home
(``--home``) and the acting person's identity key (``--identity FILE``, see
:mod:`fedcustomer.cli.identity`); the store checks the signed request against the
people registry (which gives the role), then the access policy, and writes the audit log. Errors are
``FedCustomerError`` subclasses, which ``fedcustomer.cli.main`` prints and maps to
the documented exit codes (docs/GOVERNANCE.md).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from fedcustomer.cli.identity import IdentityOpt, load_signer
from fedcustomer.cli.keys_migrate import keys_migrate_cmd
from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome

console = terminal()

HomeOpt = typer.Option(..., "--home", help="Partner home directory.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")

schema_app = typer.Typer(help="Dataset schemas (field tiers, validation, masking).", no_args_is_help=True)
approvals_app = typer.Typer(help="Two-person approvals for core-field reads.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Key-encryption keys: list, rotate, retire, migrate to a token.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Attach the governance commands to the root ``fedcustomer`` app."""
    app.command("init", help="Create a partner home: keys, audit log and an empty store.")(init_cmd)
    app.command("ingest", help="Validate and load a CSV/Parquet file into the governed store.")(ingest_cmd)
    app.command("read", help="Read customer data through the access policy (audit-logged).")(read_cmd)
    app.command("erase", help="Crypto-shred one customer in every dataset.")(erase_cmd)
    app.add_typer(schema_app, name="schema")
    app.add_typer(approvals_app, name="approvals")
    app.add_typer(keys_app, name="keys")
    keys_app.command(
        "migrate", help="Move the KEKs from the key file to a PKCS#11 token (staged, verified)."
    )(keys_migrate_cmd)


# --- helpers -------------------------------------------------------------------------


def _open(home: Path) -> Any:
    from fedcustomer.data.store import PartnerStore

    return PartnerStore.open(PartnerHome(home))


def _load_schema(spec: str) -> Any:
    """A schema file path, or the name of a bundled example ('bank', 'retailer')."""
    from fedcustomer.data.schema import Schema, load_bundled

    path = Path(spec)
    if path.exists() or spec.endswith((".yaml", ".yml")):
        return Schema.load(path)
    return load_bundled(spec)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError("--fields is empty; give comma-separated field names")
    return names


def _parse_where(items: list[str] | None) -> dict[str, Any]:
    where: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where {item!r} is not FIELD=VALUE")
        key = key.strip()
        if key in where:
            where[key] = [*where[key], value] if isinstance(where[key], list) else [where[key], value]
        else:
            where[key] = value
    return where


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# --- commands --------------------------------------------------------------------------


def init_cmd(
    home: Path = HomeOpt,
    name: str = typer.Option(..., "--name", help="Partner name, e.g. bank_north."),
    identity: Path = IdentityOpt,
    admin: str = typer.Option(..., "--admin", help="Your name: you become the home's first partner_admin."),
) -> None:
    from fedcustomer.data.store import PartnerStore

    signer = load_signer(identity)
    with PartnerStore.init(PartnerHome(home), name, admin=signer, admin_name=admin):
        console.print(
            f"initialised partner [bold]{escape(name)}[/] in {escape(str(home))}: keys, audit log, empty store, "
            f"people registry (first admin: {escape(admin)}, key {signer.key_id})"
        )


@schema_app.command("draft", help="Guess a schema from a CSV/Parquet file; review every tier before use.")
def schema_draft_cmd(
    input: Path = typer.Option(..., "--input", help="CSV or Parquet file with a header."),
    output: Path = typer.Option(..., "--output", help="Where to write the YAML schema."),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset name (default: from the file name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
    id_from_row: bool = typer.Option(
        False,
        "--id-from-row",
        help="The file has no customer id column: add a 'row_id' id field that "
        "`ingest --id-from-row` generates (each row is one customer).",
    ),
    id_column: str | None = typer.Option(
        None,
        "--id-column",
        help="The column that identifies customers, when the draft does not recognise its name "
        "(customer_id, customerID, client_id, id, ... are recognised).",
    ),
) -> None:
    from fedcustomer.data.ingest import read_sample
    from fedcustomer.data.schema import field_name_for
    from fedcustomer.data.schema_draft import draft_schema

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    notes: list[str] = []
    schema = draft_schema(input, dataset=dataset, id_from_row=id_from_row, id_column=id_column, notes=notes)
    schema.save(output)
    core = [f.name for f in schema.fields if f.is_core]
    console.print(
        f"wrote {output}: {len(schema.fields)} fields, core (encrypted): {', '.join(core) or 'none'}"
    )
    header = [str(c) for c in read_sample(input, 1).columns]
    renamed = [f"{c} -> {field_name_for(c)}" for c in header if field_name_for(c) != c]
    if renamed:
        console.print(
            f"columns stored under a valid field name (ingest maps them): {escape(', '.join(renamed))}"
        )
    if id_from_row:
        console.print("no id column: 'row_id' will be generated at ingest (pass --id-from-row to ingest too)")
    for note in notes:
        console.print(f"check: {escape(note)}", highlight=False)
    console.print("review every tier, type and rule before ingesting real data")


@schema_app.command(
    "confirm",
    help="Confirm category lists that `schema draft` observed in the data (after reviewing them), so "
    "`features draft` may use them.",
)
def schema_confirm_cmd(
    schema: Path = typer.Option(..., "--schema", help="The schema YAML file to update in place."),
    fields: list[str] = typer.Option(
        [], "--field", help="A field whose observed categories you reviewed and confirm (repeatable)."
    ),
) -> None:
    from fedcustomer.data.schema import Schema
    from fedcustomer.data.schema_draft import confirm_categories

    confirmed = confirm_categories(Schema.load(schema), fields)
    atomic_write_text(schema, confirmed.to_yaml())
    left = [f.name for f in confirmed.fields if f.validation.observed_categories]
    console.print(
        f"confirmed the categories of {', '.join(dict.fromkeys(fields))} in {escape(str(schema))}"
        + (f"; still observed, not confirmed: {', '.join(left)}" if left else "")
    )


def ingest_cmd(
    schema: str = typer.Option(..., "--schema", help="Schema YAML file (or 'bank' / 'retailer' examples)."),
    input: Path = typer.Option(..., "--input", help="CSV or Parquet file."),
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    quality: Path | None = typer.Option(
        None, "--quality", help="Where to write quality.json (default: <home>/state/quality.json)."
    ),
    chunk_rows: int = typer.Option(50_000, "--chunk-rows", min=1, help="Rows per chunk (memory bound)."),
    name: str | None = typer.Option(None, "--name", help="Partner name if the home is created now."),
    admin: str | None = typer.Option(
        None, "--admin", help="Your name, if the home is created now (you become its first partner_admin)."
    ),
    id_from_row: bool = typer.Option(
        False,
        "--id-from-row",
        help="Generate the id field from each row (a schema drafted with --id-from-row).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    from fedcustomer.data.ingest import NothingValid, print_report
    from fedcustomer.data.store import PartnerStore

    who = load_signer(identity)
    spec = _load_schema(schema)
    phome = PartnerHome(home)
    if not phome.store_path.exists():
        if admin is None:
            raise ConfigError(
                f"{home} is not initialised: run `fedcustomer init --home {home} --name NAME --identity FILE "
                f"--admin YOUR_NAME` first, or pass --admin YOUR_NAME to become its first admin now"
            )
        partner = name or (phome.config().name if phome.config_path.exists() else phome.root.resolve().name)
        store = PartnerStore.init(phome, partner, admin=who, admin_name=admin)
    else:
        store = PartnerStore.open(phome)
    from fedcustomer.cli.progress import Progress

    refused: NothingValid | None = None
    with (
        store,
        Progress().phase(f"ingesting {input.name} into the encrypted store ({chunk_rows:,} rows per chunk)"),
    ):
        try:
            report = store.ingest(who, spec, input, chunk_rows=chunk_rows, id_from_row=id_from_row)
        except NothingValid as exc:  # nothing stored; the report still says why, row by row
            refused, report = exc, exc.report
    target = quality or phome.state_dir / "quality.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(target)
    if as_json:
        _print_json(report.to_dict())
    else:
        print_report(report, console)
        console.print(f"quality report: {target}")
    if refused is not None:
        raise refused


def read_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    purpose: str = typer.Option(..., "--purpose", help="training, analytics, marketing, risk_review, ..."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Dataset (needed when the store has several)."
    ),
    fields: str | None = typer.Option(
        None, "--fields", help="Comma-separated fields (default: all you may see)."
    ),
    where: list[str] | None = typer.Option(
        None,
        "--where",
        help="FIELD=VALUE on a public field; repeatable (repeat a field to match any of its values). Text and "
        "category values match ignoring case (region=north finds North); numbers, booleans and dates match "
        "by value (5 finds 5.0).",
    ),
    approval: str | None = typer.Option(None, "--approval", help="Use this approval id for core fields."),
    output: Path | None = typer.Option(None, "--output", help="Write the rows to this CSV file."),
    limit: int = typer.Option(20, "--limit", help="Rows to print when no --output is given."),
) -> None:
    with _open(home) as store:
        frame = store.read(
            load_signer(identity),
            purpose,
            _split(fields),
            _parse_where(where),
            dataset=dataset,
            approval_id=approval,
        )
        entry = store.last_entry
    views = entry.details.get("views", {}) if entry is not None else {}
    masked = [c for c in frame.columns if views.get(c) == "masked"]
    if masked:  # a masked value reads like a real one (an age of 30 for 34): say which columns are masked
        console.print(
            f"masked for purpose {escape(purpose)} (each by its schema rule): {escape(', '.join(map(str, masked)))}",
            highlight=False,
        )
    if output is not None:
        from fedcustomer.data.export import write_private_csv

        # 0600 and formula-escaped: the rows may hold decrypted core values.
        rows = (
            [p, *values] for p, values in zip(frame.index.tolist(), frame.itertuples(index=False, name=None))
        )
        write_private_csv(output, [frame.index.name or "pseudonym", *frame.columns], rows)
        console.print(f"wrote {len(frame)} rows x {len(frame.columns)} fields to {output}")
        return
    table = Table(title=f"{len(frame)} rows (showing {min(limit, len(frame))})")
    table.add_column("pseudonym", overflow="fold")
    for col in frame.columns:
        table.add_column(str(col))
    for pseudonym, row in frame.head(limit).iterrows():
        table.add_row(
            str(pseudonym)[:16] + "...", *("" if v is None else escape(str(v)) for v in row.tolist())
        )
    console.print(table)


def erase_cmd(
    customer: str = typer.Option(..., "--customer", help="The customer's raw id (pseudonymised before use)."),
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    not_held: bool = typer.Option(
        False,
        "--not-held",
        help="Record the erasure even if the store holds no such customer yet, so later ingests skip them.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    if not yes:
        typer.confirm("Erase this customer from every dataset? This cannot be undone", abort=True)
    from fedcustomer.data.erasure import erase_customer

    with _open(home) as store:
        result = erase_customer(store, load_signer(identity), customer, held_only=not not_held)
    if as_json:
        _print_json(result)
    else:
        rows = sum(result["datasets"].values())
        state = (
            "erased" if result["found"] else "not held (erasure recorded; future ingests skip this customer)"
        )
        console.print(
            f"customer {result['pseudonym'][:16]}... {state}: {rows} row(s), {result['data_keys']} data key(s)"
        )
        if not result["wal_cleared"]:
            console.print(
                "store.db-wal still holds pages from before the erasure (another process is reading); "
                "the next open of the store cuts it: run any store command once that process ends"
            )


# --- approvals ---------------------------------------------------------------------------


@approvals_app.command("request", help="Ask for clear access to core fields (needs two approvers).")
def approvals_request_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    dataset: str = typer.Option(..., "--dataset"),
    fields: str = typer.Option(..., "--fields", help="Comma-separated core fields."),
    purpose: str = typer.Option(..., "--purpose"),
    ttl_hours: float = typer.Option(
        8.0,
        "--ttl-hours",
        help="How long the request, and the approval once granted, stay valid, counted from the request "
        "(approvers sign its end time with it).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    from fedcustomer.data.approvals import StoreApprovals

    with _open(home) as store:
        request_id = StoreApprovals(store).request(
            load_signer(identity), dataset, _split(fields) or [], purpose, timedelta(hours=ttl_hours)
        )
    if as_json:
        _print_json({"request_id": request_id})
    else:
        typer.echo(request_id)


@approvals_app.command("approve", help="Sign an approval request (two distinct approvers complete it).")
def approvals_approve_cmd(
    request_id: str = typer.Argument(..., help="Request id from `approvals request`."),
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    as_json: bool = JsonOpt,
) -> None:
    from fedcustomer.data.approvals import StoreApprovals

    with _open(home) as store:
        approval = StoreApprovals(store).approve(load_signer(identity), request_id)
    result = {"request_id": request_id, "complete": approval is not None}
    if approval is not None:
        result.update({"approvers": list(approval.approvers), "expires_at": approval.expires_at})
    if as_json:
        _print_json(result)
    elif approval is None:
        console.print(f"signed {request_id}; one more distinct approver needed")
    else:
        console.print(f"approval {request_id} complete, valid until {approval.expires_at}")


@approvals_app.command("list", help="Open requests still short of approvers.")
def approvals_list_cmd(
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
    as_json: bool = JsonOpt,
) -> None:
    from fedcustomer.data.approvals import StoreApprovals

    with _open(home) as store:
        pending = StoreApprovals(store).pending(load_signer(identity))
    if as_json:
        _print_json(pending)
        return
    table = Table(title="pending approval requests")
    # Short headers, and cells that fold instead of ending in "...": an approver copies the id
    # from here (`--json` has the same fields under their full names).
    for col in (
        "request id",
        "requester",
        "dataset",
        "fields",
        "purpose",
        "expires (UTC)",
        "approvals still needed",
    ):
        table.add_column(col, overflow="fold")
    for p in pending:
        table.add_row(
            p["request_id"],
            p["requester"],
            p["dataset"],
            ", ".join(p["fields"]),
            p["purpose"],
            str(p["expires_at"])[:16].replace("T", " "),
            str(p["approvals_needed"]),
        )
    console.print(table)


# --- keys ------------------------------------------------------------------------------------


@keys_app.command(
    "list",
    help="KEK versions, their status and how many customers' data keys (and quarantined rows' keys) each "
    "wraps; --json also counts the store's own key check (wrapped_keys: every key, as `keys retire` checks).",
    short_help="KEK versions, their status and how many customers' data keys each wraps.",
)
def keys_list_cmd(home: Path = HomeOpt, identity: Path = IdentityOpt, as_json: bool = JsonOpt) -> None:
    from fedcustomer.data.key_admin import KeyAdmin

    with _open(home) as store:
        versions = KeyAdmin(store).versions(load_signer(identity))
    if as_json:
        _print_json(versions)
        return
    table = Table(title="key-encryption keys")
    for col in ("version", "status", "created_at", "customer keys", "quarantined rows"):
        table.add_column(col, justify="right" if col.endswith(("keys", "rows")) else "left", overflow="fold")
    for v in versions:
        table.add_row(
            str(v["version"]),
            v["status"],
            v["created_at"],
            str(v["customer_keys"]),
            str(v["quarantined_rows"]),
        )
    console.print(table)
    console.print(
        "customer keys: one data key per customer held; the store's own key check is not counted "
        "(--json: key_check, and wrapped_keys for every key a version wraps)"
    )


@keys_app.command("rotate", help="New KEK version; re-wrap every data key under it.")
def keys_rotate_cmd(home: Path = HomeOpt, identity: Path = IdentityOpt, as_json: bool = JsonOpt) -> None:
    from fedcustomer.data.key_admin import KeyAdmin

    with _open(home) as store:
        result = KeyAdmin(store).rotate(load_signer(identity))
    if as_json:
        _print_json(result)
    else:
        counts = result["by_table"]
        console.print(
            f"active KEK version {result['active_version']}; re-wrapped {counts['data_keys']} customer key(s), "
            f"{counts['quarantine']} quarantined row key(s)"
            + (" and the store's own key check" if counts["keycheck"] else "")
        )


@keys_app.command("retire", help="Destroy an old KEK version (refused while data keys use it).")
def keys_retire_cmd(
    version: int = typer.Argument(..., help="KEK version to retire."),
    home: Path = HomeOpt,
    identity: Path = IdentityOpt,
) -> None:
    from fedcustomer.data.key_admin import KeyAdmin

    with _open(home) as store:
        KeyAdmin(store).retire(load_signer(identity), version)
    console.print(f"KEK version {version} retired")
