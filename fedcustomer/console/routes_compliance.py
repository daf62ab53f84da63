"""The compliance officer's pages: audit search and export, verification and anchors, budgets.

All need the policy's ``audit_read``. Search pages come from the audit index
(:mod:`.audit_index`), newest first, 50 a page, paged by sequence number so a page deep
in a million entries costs what the first one does. Exports hold the same columns as
``fedcustomer audit query --format csv/json`` (cells escaped against formula injection)
and are themselves audit entries. Audit entries carry pseudonyms and field names, never
customer values.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcustomer.console import actions, budgets
from fedcustomer.console.audit_index import FILTERS
from fedcustomer.console.charts import line_chart
from fedcustomer.console.pages import console, guard, render
from fedcustomer.data.export import csv_text
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.audit.anchors import current_anchor
from fedcustomer.privacy.audit.query import read_checkpoints
from fedcustomer.privacy.audit.reach import HomeReach
from fedcustomer.privacy.audit.records import ENTRY_FIELDS, PUBLIC_KEY_NAME, AuditEntry
from fedcustomer.privacy.audit.signatures import check_entry_signatures
from fedcustomer.privacy.audit.writer import AuditLog

EXPORT_LIMIT = 100_000
_verify_cache: dict[str, Any] = {}
_verify_lock = threading.Lock()


def _time(value: str | None, name: str) -> str | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an ISO 8601 date or time (e.g. 2026-01-31)") from None
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.isoformat(timespec="microseconds")


def _query(request: Request) -> tuple[dict[str, str], str | None, str | None]:
    q = request.query_params
    filters = {k: q[k].strip() for k in FILTERS if q.get(k, "").strip()}
    if filters.get("decision") not in (None, "allowed", "denied"):
        raise ConfigError("decision is 'allowed' or 'denied'")
    return filters, _time(q.get("since"), "since"), _time(q.get("until"), "until")


async def audit_search(request: Request) -> Response:
    session, person = guard(request, "audit")
    filters, since, until = _query(request)
    before_text = request.query_params.get("before", "")
    before = int(before_text) if before_text.isdigit() else None
    page = console(request).index.page(filters, since=since, until=until, before=before)
    query = {
        **filters,
        **{k: request.query_params[k] for k in ("since", "until") if request.query_params.get(k)},
    }
    return render(
        request,
        "audit.html",
        person=person,
        page=page,
        filters=filters,
        query=query,
        fields=FILTERS,
        since=request.query_params.get("since", ""),
        until=request.query_params.get("until", ""),
    )


def _entries_csv(entries: list[AuditEntry]) -> str:
    def cell(value: Any, column: str) -> str:
        if column == "details":
            return json.dumps(value, sort_keys=True)
        if isinstance(value, (list, tuple)):
            return ";".join(str(v) for v in value)
        return "" if value is None else str(value)

    rows = ([cell(d[c], c) for c in ENTRY_FIELDS] for d in (e.to_dict() for e in entries))
    return csv_text(ENTRY_FIELDS, rows)


async def audit_export(request: Request) -> Response:
    _, person = guard(request, "audit")
    fmt = request.path_params["fmt"]
    if fmt not in ("csv", "json"):
        raise ConfigError("no such export format (csv or json)")
    filters, since, until = _query(request)
    index = console(request).index
    index.update()
    entries = index.read(index.matching_seqs(filters, since=since, until=until, limit=EXPORT_LIMIT))
    entries.reverse()  # oldest first, as the log and the CLI list them
    actions.record_export(console(request).home, person, filters, len(entries), fmt)
    if fmt == "csv":
        body, media = _entries_csv(entries), "text/csv; charset=utf-8"
    else:
        doc = {"count": len(entries), "filters": filters, "entries": [e.to_dict() for e in entries]}
        body, media = json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "application/json"
    headers = {"Content-Disposition": f'attachment; filename="audit-{console(request).partner}.{fmt}"'}
    return Response(body, media_type=media, headers=headers)


def verification(request: Request) -> dict[str, Any]:
    """The log verified (hash chain, checkpoints, reach) and people's signatures checked; cached by size."""
    ctx = console(request)
    home = ctx.home
    log_file = home.audit_dir / "audit.jsonl"
    stamp = f"{home.audit_dir}:{log_file.stat().st_size if log_file.exists() else 0}"
    with _verify_lock:
        if _verify_cache.get("stamp") == stamp:
            return dict(_verify_cache["result"])
        trusted = home.keys_dir / PUBLIC_KEY_NAME
        audit = AuditLog(
            home.audit_dir,
            public_key_path=trusted if trusted.exists() else None,
            reach=HomeReach.for_home(home),
        )
        report = audit.verify()
        signatures = check_entry_signatures(iter(audit), ctx.registry) if report.ok else None
        result = {
            "report": report.to_dict(),
            "signatures": None if signatures is None else signatures.to_dict(),
            "signatures_message": None if signatures is None else signatures.message,
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _verify_cache.update(stamp=stamp, result=result)
        return dict(result)


async def audit_status(request: Request) -> Response:
    _, person = guard(request, "verify")
    ctx = console(request)
    result = verification(request)
    checkpoints = read_checkpoints(ctx.home.audit_dir)[-10:]
    trusted = ctx.home.keys_dir / PUBLIC_KEY_NAME
    anchor = current_anchor(ctx.home.audit_dir, ctx.partner, trusted if trusted.exists() else None)
    return render(
        request,
        "audit_status.html",
        person=person,
        result=result,
        checkpoints=list(reversed(checkpoints)),
        anchor=anchor,
    )


async def budget_page(request: Request) -> Response:
    _, person = guard(request, "budgets")
    ctx = console(request)
    recompute = request.query_params.get("recompute") == "1"
    rows = budgets.charges(ctx.home.ledger_path, recompute=recompute)
    config = ctx.home.config()
    target = config.budget.epsilon if config.budget is not None else None
    per_dataset = budgets.by_dataset(rows)
    total_series = [("partner total", budgets.over_time(rows))]
    if target is not None and rows:
        first, last = total_series[0][1][0][0], total_series[0][1][-1][0]
        total_series.append(("target", [(first, target), (last, target)]))
    chart = line_chart(
        "epsilon spent over time (every release, all datasets)",
        total_series,
        x_label="time (UTC)",
        y_label="epsilon",
        x_format=budgets.time_label,
    )
    dataset_charts = {
        ds: line_chart(
            f"partner total after each release about {ds}",
            [(ds, budgets.over_time(charges))],
            x_label="time (UTC)",
            y_label="epsilon",
            x_format=budgets.time_label,
        )
        for ds, charges in per_dataset.items()
    }
    mismatches = sum(1 for r in rows if r.matches is False)
    against_log = budgets.against_audit(ctx.home.ledger_path, ctx.home.audit_dir) if recompute else None
    return render(
        request,
        "budgets.html",
        person=person,
        rows=rows,
        per_dataset=per_dataset,
        chart=chart,
        target=target,
        dataset_charts=dataset_charts,
        recompute=recompute,
        mismatches=mismatches,
        against_log=against_log,
        refusals=budgets.refusals(ctx.home.ledger_path),
    )


ROUTES = [
    Route("/audit", audit_search),
    Route("/audit/export.{fmt:str}", audit_export),
    Route("/audit/status", audit_status),
    Route("/budgets", budget_page),
]
