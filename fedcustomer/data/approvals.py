"""Two-person approvals over an open store: request clear access to core fields, approve, list.

The rule itself (two distinct approvers, expiry, who may approve) lives in the access
policy's :class:`~fedcustomer.privacy.access.policy.ApprovalBook`; this service checks
the request against the store's schemas and audit-logs every step, allowed or denied.
Reads consult the same book when they decide on core fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.errors import FedCustomerError
from fedcustomer.privacy.access.policy import Approval


class StoreApprovals:
    """Approval requests and signatures for one open store."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store

    def request(
        self,
        actor: Credential,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        ttl: timedelta = timedelta(hours=8),
        *,
        now: datetime | None = None,
    ) -> str:
        """Ask for clear access to core fields; two distinct approvers must sign it."""
        store = self.store
        actor = store.principal(
            actor,
            action="approval_request",
            audit_action="approval_request",
            dataset=dataset,
            fields=list(fields),
            purpose=purpose,
            extra={"ttl_seconds": int(ttl.total_seconds())},
            now=now,
        )
        try:
            schema = store.schema(dataset)
            for name in fields:
                schema.field(name)
            request_id: str = store.approvals.request(actor, dataset, list(fields), purpose, ttl, now=now)
        except FedCustomerError as exc:
            store.log(
                actor,
                "approval_request",
                "denied",
                dataset=dataset,
                fields=list(fields),
                purpose=purpose,
                reason=str(exc),
            )
            raise
        store.log(
            actor,
            "approval_request",
            dataset=dataset,
            fields=list(fields),
            purpose=purpose,
            approvals=[request_id],
            details={"ttl_seconds": int(ttl.total_seconds())},
        )
        return request_id

    def approve(self, actor: Credential, request_id: str, *, now: datetime | None = None) -> Approval | None:
        """Sign a request; returns the Approval once the second distinct approver signed.

        The approver's signature covers the digest of the requester's signed request.
        """
        store = self.store
        digest = store.approvals.digest_of(request_id) if store.people is not None else None
        actor = store.principal(
            actor,
            action="approve",
            audit_action="approve",
            extra={"request_id": request_id, "request_digest": digest},
            now=now,
        )
        try:
            approval = store.approvals.approve(request_id, actor, now=now)
        except FedCustomerError as exc:
            store.log(actor, "approve", "denied", approvals=[request_id], reason=str(exc))
            raise
        details = {"complete": approval is not None}
        if approval is not None:
            store.log(
                actor,
                "approve",
                dataset=approval.dataset,
                fields=list(approval.fields),
                purpose=approval.purpose,
                approvals=[request_id],
                details={**details, "approvers": list(approval.approvers), "expires_at": approval.expires_at},
            )
        else:
            store.log(actor, "approve", approvals=[request_id], details=details)
        return approval

    def pending(self, actor: Credential | None = None) -> list[dict[str, Any]]:
        """Open requests still short of approvers (actor needs 'approve' if given)."""
        if actor is not None:
            actor = self.store.principal(actor, action="approval_list", audit_action="approval_list")
            self.store.require(actor, "approve", "approval_list")
        pending: list[dict[str, Any]] = self.store.approvals.pending()
        return pending
