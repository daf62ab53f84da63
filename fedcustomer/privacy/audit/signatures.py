"""Check the people's signatures kept in audit entries against the partner's people registry.

The hash chain and the node's signed checkpoints prove the log was not changed after it
was written; they cannot prove that whoever wrote an entry named the right person. In a
home with a people registry every governance entry carries the signed request that
caused it (``details.auth``): the person's key id, the request and its Ed25519
signature. Checking them again here means an entry naming ``rick`` was caused by a
request signed with the key the registry gives ``rick``, in the role it gives him, at
a time his key could act; an approval entry is a signature over the request digest it
approves. An allowed governance entry written after the registry began without any
signed request is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.access.people import PeopleRegistry
from fedcustomer.privacy.access.person_keys import verify_signature
from fedcustomer.privacy.access.policy import parse_utc
from fedcustomer.privacy.access.requests import DEFAULT_MAX_SKEW, SignedRequest
from fedcustomer.privacy.audit.records import AuditEntry

SIGNED_ACTIONS = frozenset(
    {
        "read",
        "ingest",
        "approval_request",
        "approve",
        "key_rotate",
        "key_retire",
        "erase",
        "budget_set",
        "secagg_trust_set",  # budget secagg-trust: which guarantee distributed-DP rounds are charged
        "vertical_declare",  # node setup --mode vertical: what a party trains vertical jobs on
        "vertical_remove",
        "peer_pin",  # node pin-peer: whose PSI signatures the node accepts
        "node_keys",  # node keys made or replaced in a home with people
        "link_key_replace",  # node link-key --rotate: the key the peer pins for our PSI values
        "people_revoke",
        "audit_query",
        "approval_reject",  # a rejection given in the web console
        "console_enrol",  # console credentials given to a person
    }
)
"""Governance actions that, once a home has a registry, are only ever taken on a signed request."""


@dataclass
class SignatureReport:
    """How many signed entries were checked, and every problem found (seq, why)."""

    checked: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "signed_entries": self.checked,
            "problems": [{"seq": s, "problem": p} for s, p in self.problems],
        }

    @property
    def message(self) -> str:
        if self.ok:
            return f"{self.checked} signed request(s) verify against the people registry"
        seq, why = self.problems[0]
        return f"{len(self.problems)} problem(s) with people's signatures; first at entry {seq}: {why}"


def _check_one(entry: AuditEntry, auth: Any, registry: PeopleRegistry) -> str | None:
    try:
        signed = SignedRequest.from_dict(auth)
    except AccessDenied:
        return "its signed request is malformed"
    request = signed.request
    if auth.get("key_id") != request.key_id:
        return "the recorded key id differs from the signed request's"
    person = registry.lookup(request.key_id)
    if person is None:
        return f"signed by key {request.key_id}, which is not in the people registry"
    if not verify_signature(person.public_key, signed.signature, request.canonical()):
        return f"the signature by key {request.key_id} does not verify"
    if (entry.actor, entry.role) != (person.name, person.role):
        return f"the entry names '{entry.actor}' ({entry.role}) but the key belongs to '{person.name}' ({person.role})"
    try:
        signed_at, written_at = parse_utc(request.time), parse_utc(entry.time)
    except (TypeError, ValueError):
        return "the request or entry time is not an ISO 8601 time"
    if written_at < signed_at - DEFAULT_MAX_SKEW:
        return f"the entry was written at {entry.time}, before the request it records ({request.time})"
    if entry.decision == "allowed":
        problem = person.problem_at(signed_at)
        if problem:
            return f"allowed although {problem}"
    return None


def check_entry_signatures(entries: Iterable[AuditEntry], registry: PeopleRegistry) -> SignatureReport:
    """Check every entry's signed request (see the module docstring); the registry must verify."""
    keys = registry.keys()
    began: datetime | None = min((parse_utc(k.added_at) for k in keys), default=None)
    report = SignatureReport()
    for entry in entries:
        auth = entry.details.get("auth") if isinstance(entry.details, dict) else None
        if auth is None:
            if (
                began is not None
                and entry.decision == "allowed"
                and entry.action in SIGNED_ACTIONS
                and parse_utc(entry.time) >= began
            ):
                report.problems.append((entry.seq, f"'{entry.action}' was allowed without a signed request"))
            continue
        report.checked += 1
        problem = _check_one(entry, auth, registry)
        if problem:
            report.problems.append((entry.seq, problem))
    return report
