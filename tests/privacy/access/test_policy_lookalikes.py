"""Look-alike names: a name mixing scripts, or resembling the requester or an approver, never counts as another person."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.policy import AccessPolicy, Actor, bundled_policy_text
from tests.privacy.access.policy_fixtures import NATIONAL_ID, RISK, T0, _approval, _two_signed, book, policy

__all__ = ["policy", "book"]  # fixtures


def _approving_risk_officers(tmp_path: Path) -> ApprovalBook:
    text = bundled_policy_text() + "\np2, risk_officer, approve\n"
    return ApprovalBook(tmp_path / "a.db", AccessPolicy.from_text(text))


def test_name_mixing_scripts_is_rejected() -> None:
    with pytest.raises(ConfigError, match="mixes scripts"):
        Actor("r\u0456ck", "risk_officer")  # Cyrillic і in a Latin name
    for ok in (
        "rick",
        "Rick",
        "\u0440\u0430\u0441\u043e",
        "\u5f20\u4f1f",
        "\u5c71\u7530\u3072\u308d\u3057",
        "o'brien-2",
    ):
        Actor(ok, "risk_officer")


@pytest.mark.parametrize(
    "lookalike",
    [
        "\uff52\uff49\uff43\uff4b",  # fullwidth rick
        "\uff32\uff29\uff23\uff2b",  # fullwidth RICK
        "RICK",
    ],
)
def test_look_alike_of_the_requester_cannot_approve_their_request(tmp_path: Path, lookalike: str) -> None:
    book = _approving_risk_officers(tmp_path)
    rid = book.request(Actor("rick", "risk_officer"), "customers", ["national_id"], "risk_review", now=T0)
    with pytest.raises(AccessDenied, match="own request"):
        book.approve(rid, Actor(lookalike, "risk_officer"), now=T0)
    assert book.pending(now=T0)[0]["approvers"] == []


def test_whole_script_look_alike_cannot_approve_the_requesters_request(tmp_path: Path) -> None:
    book = _approving_risk_officers(tmp_path)
    rid = book.request(Actor("paco", "risk_officer"), "customers", ["national_id"], "risk_review", now=T0)
    with pytest.raises(AccessDenied, match="own request"):
        book.approve(rid, Actor("\u0440\u0430\u0441\u043e", "risk_officer"), now=T0)  # Cyrillic р а с о


def test_look_alike_of_an_approver_does_not_count_as_a_second_approver(book: ApprovalBook) -> None:
    rid = _two_signed(book)  # signed by adam
    for twin in ("\uff41\uff44\uff41\uff4d", "ADAM"):  # fullwidth adam; case
        with pytest.raises(AccessDenied, match="already approved"):
            book.approve(rid, Actor(twin, "partner_admin"), now=T0 + timedelta(minutes=3))
    (entry,) = book.pending(now=T0 + timedelta(minutes=4))
    assert entry["approvers"] == ["adam"] and entry["approvals_needed"] == 1


@pytest.mark.parametrize(
    ("approvers", "why"),
    [
        (("adam", "\uff41\uff44\uff41\uff4d"), "1 distinct approver"),  # fullwidth twin
        (("adam", "\u0430dam"), "1 distinct approver"),  # Cyrillic а (as stored by an older version)
        (("adam", "r\u0456ta"), "own approval"),  # the requester rita with a Cyrillic і
    ],
)
def test_approval_with_look_alike_signers_keeps_core_field_denied(
    policy: AccessPolicy, approvers, why
) -> None:
    decision = policy.decide(
        RISK, "risk_review", NATIONAL_ID, approval=_approval(approvers=approvers), now=T0
    )
    assert decision.view == "denied" and why in decision.reason
