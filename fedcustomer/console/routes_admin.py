"""The partner admin's pages: approvals queue, people and keys (console enrolment), ingests.

Approving, rejecting and enrolling are signed by the person in the browser's session
with ``fedcustomer console sign`` (:mod:`.intents`, :mod:`.actions`); the pages show what
to sign and take the token back. Ingest pages show counts and the validators' reasons,
which name rules, never values (quarantined rows stay sealed in the store).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcustomer.common.sqlite_wal import connect_readonly
from fedcustomer.console import actions
from fedcustomer.console.pages import console, form_checked, guard, render
from fedcustomer.data.store_core import APPROVALS_DB
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.access.approvals import ApprovalBook

DECISIONS = ("approve", "reject")
INGESTS_SHOWN = 20


def _rejections(request: Request) -> dict[str, str]:
    """Request id -> who rejected it (signed, allowed ``approval_reject`` entries)."""
    index = console(request).index
    index.update()
    found = index.read(index.matching_seqs({"action": actions.REJECT, "decision": "allowed"}, limit=500))
    return {rid: e.actor for e in found for rid in e.approvals}


def _pending(request: Request) -> list[dict[str, Any]]:
    ctx = console(request)
    book = ApprovalBook(ctx.home.root / APPROVALS_DB, ctx.policy, ctx.registry)
    rejected = _rejections(request)
    return [{**p, "rejected_by": rejected.get(p["request_id"])} for p in book.pending()]


async def approvals_page(request: Request) -> Response:
    _, person = guard(request, "approvals")
    return render(request, "approvals.html", person=person, pending=_pending(request), message=None)


def _decision(request: Request) -> tuple[str, str]:
    rid, decision = request.path_params["rid"], request.path_params["decision"]
    if decision not in DECISIONS or not rid.isalnum() or len(rid) > 64:
        raise ConfigError("no such approval decision")
    return rid, decision


async def decision_page(request: Request) -> Response:
    _, person = guard(request, "approvals")
    rid, decision = _decision(request)
    ctx = console(request)
    reason = request.query_params.get("reason", "").strip()[:500]
    if decision == "reject" and not reason:
        return render(request, "reject_reason.html", person=person, rid=rid)
    digest = actions.approval_digest(ctx.home, rid)
    intent = actions.decision_intent(ctx.partner, decision, rid, digest, reason)
    return render(
        request,
        "sign.html",
        person=person,
        intent=intent,
        action=f"/approvals/{rid}/{decision}",
        what=f"{decision} approval request {rid}",
        hidden={"reason": reason},
    )


async def decide(request: Request) -> Response:
    session, person = guard(request, "approvals")
    rid, decision = _decision(request)
    form = await form_checked(request, session)
    message = actions.decide(
        console(request).home, person, decision, rid, form.get("token", ""), form.get("reason", "")
    )
    return render(request, "approvals.html", person=person, pending=_pending(request), message=message)


async def people_page(request: Request) -> Response:
    _, person = guard(request, "people")
    ctx = console(request)
    enrolled = ctx.credentials.enrolled_keys()
    keys = [{**k.to_dict(), "enrolled": k.key_id in enrolled} for k in ctx.registry.keys()]
    return render(request, "people.html", person=person, keys=keys)


def _target(request: Request) -> Any:
    target = console(request).registry.lookup(request.path_params["key_id"])
    if target is None or target.kind != "person" or target.revoked_at is not None:
        raise ConfigError("no active person with that key id")
    return target


async def enrol_page(request: Request) -> Response:
    _, person = guard(request, "people")
    target = _target(request)
    intent = actions.enrol_intent(console(request).partner, target.key_id)
    return render(
        request,
        "sign.html",
        person=person,
        intent=intent,
        action=f"/people/{target.key_id}/enrol",
        what=f"give {target.name} console credentials (a new password and TOTP secret)",
        hidden={},
    )


async def enrol(request: Request) -> Response:
    session, person = guard(request, "people")
    target = _target(request)
    form = await form_checked(request, session)
    ctx = console(request)
    enrolment = actions.enrol(ctx.home, ctx.credentials, person, target, form.get("token", ""))
    return render(
        request,
        "enrolled.html",
        person=person,
        target=target,
        enrolment=enrolment,
        uri=enrolment.provisioning_uri(target.name),
    )


def ingest_rows(store_path: Any) -> list[dict[str, Any]]:
    """The last ingests with their quarantine counts and reasons (rules, never values)."""
    with closing(connect_readonly(Path(store_path), timeout=30)) as con:  # store.db is in WAL mode
        con.row_factory = sqlite3.Row
        rows = [
            dict(r) for r in con.execute("SELECT * FROM ingests ORDER BY id DESC LIMIT ?", (INGESTS_SHOWN,))
        ]
        for row in rows:
            reasons: Counter[str] = Counter()
            count = 0
            for (text,) in con.execute("SELECT reasons FROM quarantine WHERE ingest_id = ?", (row["id"],)):
                count += 1
                try:
                    for field_name, reason in json.loads(text).items():
                        reasons[f"{field_name}: {reason}"] += 1
                except (ValueError, AttributeError):
                    reasons["unreadable reason"] += 1
            row["quarantined"] = count
            row["reasons"] = reasons.most_common(10)
    return rows


async def ingests_page(request: Request) -> Response:
    _, person = guard(request, "ingests")
    return render(
        request, "ingests.html", person=person, ingests=ingest_rows(console(request).home.store_path)
    )


ROUTES = [
    Route("/approvals", approvals_page),
    Route("/approvals/{rid}/{decision}", decision_page, methods=["GET"]),
    Route("/approvals/{rid}/{decision}", decide, methods=["POST"]),
    Route("/people", people_page),
    Route("/people/{key_id}/enrol", enrol_page, methods=["GET"]),
    Route("/people/{key_id}/enrol", enrol, methods=["POST"]),
    Route("/ingests", ingests_page),
]
