"""Actors, fields, a fixed time and the policy and approval-book fixtures shared by the access policy's test modules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.policy import AccessPolicy, Actor, Approval, FieldRef

T0 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)


RISK = Actor("rita", "risk_officer")


ADMIN = Actor("adam", "partner_admin")


COMPLIANCE = Actor("carla", "compliance_officer")


COMPLIANCE_2 = Actor("cole", "compliance_officer")


SCIENTIST = Actor("sam", "data_scientist")


NATIONAL_ID = FieldRef("national_id", "core", "id")


PHONE = FieldRef("phone", "core", "feature")


BALANCE = FieldRef("balance", "sensitive", "feature")


REGION = FieldRef("region", "public", "feature")


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return AccessPolicy.default()


@pytest.fixture
def book(tmp_path: Path, policy: AccessPolicy) -> ApprovalBook:
    return ApprovalBook(tmp_path / "approvals.db", policy)


def _approval(**changes) -> Approval:
    base = Approval(
        approval_id="a1",
        requester="rita",
        dataset="customers",
        fields=("national_id",),
        purpose="risk_review",
        approvers=("adam", "carla"),
        expires_at=(T0 + timedelta(hours=8)).isoformat(),
    )
    return replace(base, **changes)


def _two_signed(book: ApprovalBook, fields=("national_id",), **kw) -> str:
    rid = book.request(RISK, "customers", list(fields), "risk_review", now=T0, **kw)
    assert book.approve(rid, ADMIN, now=T0 + timedelta(minutes=1)) is None
    return rid
