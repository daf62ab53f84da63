"""The approval book: two distinct approvers, expiry, scope, persistence and malformed requests."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.policy import AccessPolicy, Actor, bundled_policy_text
from tests.privacy.access.policy_fixtures import (
    ADMIN,
    COMPLIANCE,
    NATIONAL_ID,
    PHONE,
    RISK,
    SCIENTIST,
    T0,
    _two_signed,
    book,
    policy,
)

__all__ = ["policy", "book"]  # fixtures


def test_second_distinct_approver_completes_the_approval(book: ApprovalBook, policy: AccessPolicy) -> None:
    rid = _two_signed(book)
    approval = book.approve(rid, COMPLIANCE, now=T0 + timedelta(minutes=2))
    assert approval is not None
    assert approval.approval_id == rid
    assert approval.approvers == ("adam", "carla")
    assert approval.fields == ("national_id",)
    assert approval.expires_at == (T0 + timedelta(hours=8)).isoformat()
    active = book.active_for(RISK, "customers", ["national_id"], "risk_review", now=T0 + timedelta(hours=1))
    assert active == approval
    assert (
        policy.decide(RISK, "risk_review", NATIONAL_ID, approval=active, now=T0 + timedelta(hours=1)).view
        == "clear"
    )


def test_one_approver_is_not_enough(book: ApprovalBook) -> None:
    _two_signed(book)
    assert (
        book.active_for(RISK, "customers", ["national_id"], "risk_review", now=T0 + timedelta(hours=1))
        is None
    )


def test_same_approver_twice_is_refused_and_leaves_one_signature(book: ApprovalBook) -> None:
    rid = _two_signed(book)
    with pytest.raises(AccessDenied, match="already approved"):
        book.approve(rid, Actor("ADAM", "partner_admin"), now=T0 + timedelta(minutes=3))
    (entry,) = book.pending(now=T0 + timedelta(minutes=4))
    assert entry["approvers"] == ["adam"] and entry["approvals_needed"] == 1


def test_self_approval_is_refused_even_for_an_approver_role(tmp_path: Path) -> None:
    text = bundled_policy_text() + "\np2, risk_officer, approve\n"
    book = ApprovalBook(tmp_path / "a.db", AccessPolicy.from_text(text))
    rid = book.request(RISK, "customers", ["national_id"], "risk_review", now=T0)
    with pytest.raises(AccessDenied, match="own request"):
        book.approve(rid, Actor("Rita", "risk_officer"), now=T0)
    assert book.pending(now=T0)[0]["approvers"] == []


@pytest.mark.parametrize(
    "approver", [SCIENTIST, Actor("mia", "marketing_analyst"), Actor("rob", "risk_officer")]
)
def test_approver_whose_role_may_not_approve_is_refused(book: ApprovalBook, approver: Actor) -> None:
    rid = book.request(RISK, "customers", ["national_id"], "risk_review", now=T0)
    with pytest.raises(AccessDenied, match="may not approve"):
        book.approve(rid, approver, now=T0)


def test_unknown_request_id_is_refused(book: ApprovalBook) -> None:
    with pytest.raises(AccessDenied, match="no approval request"):
        book.approve("deadbeef", ADMIN, now=T0)


def test_signing_an_expired_request_is_refused(book: ApprovalBook) -> None:
    rid = book.request(RISK, "customers", ["national_id"], "risk_review", ttl=timedelta(hours=1), now=T0)
    with pytest.raises(AccessDenied, match="expired"):
        book.approve(rid, ADMIN, now=T0 + timedelta(hours=1))


def test_approval_expires_after_its_ttl(book: ApprovalBook, policy: AccessPolicy) -> None:
    rid = _two_signed(book, ttl=timedelta(hours=2))
    approval = book.approve(rid, COMPLIANCE, now=T0 + timedelta(minutes=2))
    assert book.active_for(
        RISK, "customers", ["national_id"], "risk_review", now=T0 + timedelta(hours=1, minutes=59)
    )
    late = T0 + timedelta(hours=2)
    assert book.active_for(RISK, "customers", ["national_id"], "risk_review", now=late) is None
    decision = policy.decide(RISK, "risk_review", NATIONAL_ID, approval=approval, now=late)
    assert decision.view == "denied" and "expired" in decision.reason


def test_approval_covers_only_requested_fields_purpose_dataset_and_requester(
    book: ApprovalBook, policy: AccessPolicy
) -> None:
    rid = _two_signed(book)
    approval = book.approve(rid, COMPLIANCE, now=T0)
    at = T0 + timedelta(hours=1)
    assert book.active_for(RISK, "customers", ["national_id", "phone"], "risk_review", now=at) is None
    assert book.active_for(RISK, "customers", ["national_id"], "analytics", now=at) is None
    assert book.active_for(RISK, "other_dataset", ["national_id"], "risk_review", now=at) is None
    assert (
        book.active_for(Actor("rob", "risk_officer"), "customers", ["national_id"], "risk_review", now=at)
        is None
    )
    assert policy.decide(RISK, "risk_review", PHONE, approval=approval, now=at).view == "denied"
    assert policy.decide(
        Actor("rob", "risk_officer"), "risk_review", NATIONAL_ID, approval=approval, now=at
    ).view == ("denied")


def test_active_for_accepts_a_subset_of_the_approved_fields(book: ApprovalBook) -> None:
    rid = _two_signed(book, fields=("national_id", "phone"))
    book.approve(rid, COMPLIANCE, now=T0)
    approval = book.active_for(RISK, "customers", ["phone"], "risk_review", now=T0)
    assert approval is not None and set(approval.fields) == {"national_id", "phone"}


def test_pending_lists_only_open_unexpired_requests(book: ApprovalBook) -> None:
    done = _two_signed(book)
    book.approve(done, COMPLIANCE, now=T0)
    short = book.request(RISK, "customers", ["phone"], "risk_review", ttl=timedelta(minutes=30), now=T0)
    open_ = book.request(RISK, "customers", ["name"], "risk_review", now=T0)
    ids = [p["request_id"] for p in book.pending(now=T0 + timedelta(hours=1))]
    assert ids == [open_]
    assert short not in ids and done not in ids


def test_approvals_persist_across_book_instances(tmp_path: Path, policy: AccessPolicy) -> None:
    first = ApprovalBook(tmp_path / "approvals.db", policy)
    rid = _two_signed(first)
    second = ApprovalBook(tmp_path / "approvals.db", policy)
    assert second.approve(rid, COMPLIANCE, now=T0) is not None
    assert second.active_for(RISK, "customers", ["national_id"], "risk_review", now=T0) is not None


def test_signature_stops_counting_when_policy_withdraws_approver_role(
    tmp_path: Path, policy: AccessPolicy
) -> None:
    db = tmp_path / "approvals.db"
    book = ApprovalBook(db, policy)
    rid = _two_signed(book)
    book.approve(rid, COMPLIANCE, now=T0)
    stricter = AccessPolicy.from_text(bundled_policy_text().replace("p2, compliance_officer, approve", ""))
    assert (
        ApprovalBook(db, stricter).active_for(RISK, "customers", ["national_id"], "risk_review", now=T0)
        is None
    )


def test_request_ids_are_random_and_distinct(book: ApprovalBook) -> None:
    ids = {book.request(RISK, "customers", ["phone"], "risk_review", now=T0) for _ in range(5)}
    assert len(ids) == 5 and all(len(i) == 32 for i in ids)


def test_request_from_role_without_approval_gated_grant_is_refused(book: ApprovalBook) -> None:
    with pytest.raises(AccessDenied, match="no approval-gated grant"):
        book.request(SCIENTIST, "customers", ["national_id"], "training", now=T0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fields": []}, "at least one field"),
        ({"fields": "national_id"}, "not one string"),
        ({"dataset": " "}, "dataset"),
        ({"purpose": "whatever"}, "unknown purpose"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"ttl": timedelta(days=8)}, "ttl"),
    ],
)
def test_malformed_request_is_a_config_error(book: ApprovalBook, kwargs: dict, match: str) -> None:
    args = {"dataset": "customers", "fields": ["national_id"], "purpose": "risk_review"} | kwargs
    with pytest.raises(ConfigError, match=match):
        book.request(RISK, now=T0, **args)
    assert book.pending(now=T0) == []


def test_corrupt_approvals_file_is_an_integrity_error(tmp_path: Path, policy: AccessPolicy) -> None:
    db = tmp_path / "approvals.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IntegrityError):
        ApprovalBook(db, policy)


def test_approvals_file_in_missing_directory_is_a_config_error(tmp_path: Path, policy: AccessPolicy) -> None:
    with pytest.raises(ConfigError, match="cannot be used"):
        ApprovalBook(tmp_path / "no_such_home" / "approvals.db", policy)
