"""Everything the console changes, done through the partner's store as that person's signed request.

Each function opens the store for one action and closes it (which signs a checkpoint),
so the console holds no store open between requests and command-line tools keep working
beside it. Approvals, rejections, console enrolments and key sign-ins take the token a
person signed with ``fedcustomer console sign`` (see :mod:`.intents`): the store checks it
against the people registry and keeps it in the audit entry, so ``audit verify`` checks
the person's own signature again. A password + TOTP sign-in is recorded too, as an
unsigned ``console_login`` entry (no key signed it; the entry says which factors).
"""

from __future__ import annotations

from typing import Any

from fedcustomer.console.credentials import CredentialBook, Enrolment
from fedcustomer.console.intents import make_intent, read_signed
from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.people import PersonKey
from fedcustomer.privacy.access.policy import Actor

LOGIN = "console_login"
REJECT = "approval_reject"
ENROL = "console_enrol"
EXPORT = "console_audit_export"


# ---- intents the pages show --------------------------------------------------------------
def login_intent(partner: str, challenge: str) -> str:
    return make_intent(partner, LOGIN, extra={"challenge": challenge})


def approval_digest(home: PartnerHome, request_id: str) -> str:
    """The digest of the signed request an approval or rejection signs over."""
    with PartnerStore.open(home) as store:
        digest = store.approvals.digest_of(request_id)
    if digest is None:
        raise ConfigError("no signed approval request with that id")
    return digest


def decision_intent(partner: str, decision: str, request_id: str, digest: str, reason: str = "") -> str:
    if decision == "approve":
        return make_intent(partner, "approve", extra={"request_id": request_id, "request_digest": digest})
    extra = {"request_id": request_id, "request_digest": digest, "reason": reason}
    return make_intent(partner, REJECT, extra=extra)


def enrol_intent(partner: str, key_id: str) -> str:
    return make_intent(partner, "people", extra={"op": ENROL, "key_id": key_id})


# ---- sign-in records -----------------------------------------------------------------------
def key_login(home: PartnerHome, token: str, challenge: str) -> Actor:
    """A sign-in with a signed challenge: the store authenticates it and records it."""
    signed = read_signed(token)
    with PartnerStore.open(home) as store:
        actor = store.principal(signed, action=LOGIN, audit_action=LOGIN, extra={"challenge": challenge})
        store.log(actor, LOGIN, details={"method": "identity_key"})
    return actor


def record_login(
    home: PartnerHome, person: PersonKey | None, method: str, *, ok: bool, claimed: str = ""
) -> None:
    """An audit entry for a password/TOTP/OIDC sign-in or a refused attempt (never the secret)."""
    with PartnerStore.open(home) as store:
        store.audit.check_before_acting()
        details: dict[str, Any] = {"method": method}
        if person is None:
            actor = Actor("unauthenticated", "unauthenticated")
            details["claimed_name"] = claimed[:64]
        else:
            actor = Actor(person.name, person.role)
            details["key_id"] = person.key_id
        reason = None if ok else "sign-in refused"
        store.log(actor, LOGIN, "allowed" if ok else "denied", reason=reason, details=details)


def record_export(
    home: PartnerHome, person: PersonKey, filters: dict[str, str], count: int, fmt: str
) -> None:
    with PartnerStore.open(home) as store:
        store.audit.check_before_acting()
        details = {"filters": filters, "format": fmt, "key_id": person.key_id}
        store.log(Actor(person.name, person.role), EXPORT, row_count=count, details=details)


# ---- state changes --------------------------------------------------------------------------
def decide(
    home: PartnerHome, person: PersonKey, decision: str, request_id: str, token: str, reason: str = ""
) -> str:
    """Approve (a signed approval the approvals book counts) or reject (a signed, audited refusal)."""
    signed = read_signed(token, key_id=person.key_id)
    with PartnerStore.open(home) as store:
        if decision == "approve":
            approval = StoreApprovals(store).approve(signed, request_id)
            return "approved: the request is now granted" if approval is not None else "approval recorded"
        digest = store.approvals.digest_of(request_id)
        extra = {"request_id": request_id, "request_digest": digest, "reason": reason}
        actor = store.principal(signed, action=REJECT, audit_action=REJECT, extra=extra)
        store.require(actor, "approve", REJECT, approvals=[request_id], reason=reason or None)
        if digest is None:
            store.log(actor, REJECT, "denied", approvals=[request_id], reason="no such signed request")
            raise ConfigError("no signed approval request with that id")
        store.log(
            actor, REJECT, approvals=[request_id], reason=reason or None, details={"request_digest": digest}
        )
    return "rejection recorded"


def enrol(
    home: PartnerHome, credentials: CredentialBook, admin: PersonKey, target: PersonKey, token: str
) -> Enrolment:
    """Console credentials for ``target``, authorised by the admin's signed ``people`` request."""
    signed = read_signed(token, key_id=admin.key_id)
    if target.kind != "person" or target.revoked_at is not None:
        raise ConfigError("console credentials are only for active people")
    extra = {"op": ENROL, "key_id": target.key_id}
    with PartnerStore.open(home) as store:
        actor = store.principal(signed, action="people", audit_action=ENROL, extra=extra)
        store.require(actor, "people", ENROL, details=extra)
        if actor.name != admin.name:
            raise AccessDenied("the token was signed by another person than the one signed in")
        enrolment = credentials.enrol(target.key_id, actor.name)
        store.log(actor, ENROL, details={"key_id": target.key_id, "name": target.name})
    return enrolment
