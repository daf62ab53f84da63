"""Role-based field access: the default policy's views and actions, and what an approval opens."""

from __future__ import annotations

import pytest

from fedcustomer.errors import AccessDenied, ConfigError, SchemaError
from fedcustomer.privacy.access.policy import (
    ACTIONS,
    FIELD_ROLES,
    PURPOSES,
    ROLES,
    TIERS,
    AccessPolicy,
    Actor,
    FieldRef,
)
from tests.privacy.access.policy_fixtures import (
    ADMIN,
    BALANCE,
    COMPLIANCE,
    NATIONAL_ID,
    REGION,
    RISK,
    SCIENTIST,
    T0,
    _approval,
    policy,
)

__all__ = ["policy"]  # fixtures


def _expected_view(role: str, purpose: str, tier: str, field_role: str) -> str:
    """The default business rules, written independently of the bundled CSV."""
    table = {
        ("data_scientist", "training"): {"public": "clear", "sensitive": "clear"},
        ("data_scientist", "analytics"): {"public": "clear", "sensitive": "clear"},
        ("marketing_analyst", "marketing"): {"public": "clear", "sensitive": "masked"},
        ("marketing_analyst", "analytics"): {"public": "clear", "sensitive": "masked"},
        ("risk_officer", "risk_review"): {"public": "clear", "sensitive": "clear"},
        ("partner_admin", "administration"): {"public": "clear", "sensitive": "masked"},
    }
    if role == "training_pipeline":
        ok = purpose in ("training", "evaluation") and tier != "core" and field_role in ("feature", "label")
        linkage = purpose == "record_linkage" and tier == "core" and field_role == "id"
        return "clear" if ok or linkage else "denied"
    return table.get((role, purpose), {}).get(tier, "denied")


@pytest.mark.parametrize("role", ROLES)
def test_default_policy_gives_each_role_exactly_the_documented_views(policy: AccessPolicy, role: str) -> None:
    actor = Actor(f"someone_{role}", role)
    got, want = {}, {}
    for purpose in PURPOSES:
        for tier in TIERS:
            for frole in FIELD_ROLES:
                key = (purpose, tier, frole)
                got[key] = policy.decide(actor, purpose, FieldRef("f", tier, frole), now=T0).view
                want[key] = _expected_view(role, purpose, tier, frole)
    assert got == want


def test_risk_officer_core_field_without_approval_is_denied_with_named_rule(policy: AccessPolicy) -> None:
    decision = policy.decide(RISK, "risk_review", NATIONAL_ID, now=T0)
    assert decision.view == "denied"
    assert decision.reason == "core field needs two approvals"


def test_compliance_officer_sees_no_customer_field_for_any_purpose(policy: AccessPolicy) -> None:
    views = {
        policy.decide(COMPLIANCE, purpose, FieldRef("f", tier, "feature")).view
        for purpose in PURPOSES
        for tier in TIERS
    }
    assert views == {"denied"}


def test_purpose_not_granted_to_role_is_denied_and_named(policy: AccessPolicy) -> None:
    decision = policy.decide(SCIENTIST, "marketing", REGION)
    assert decision.view == "denied"
    assert "marketing" in decision.reason and "data_scientist" in decision.reason


def test_unknown_purpose_is_denied_not_raised(policy: AccessPolicy) -> None:
    decision = policy.decide(SCIENTIST, "curiosity", REGION)
    assert (decision.view, decision.field) == ("denied", "region")
    assert "unknown purpose" in decision.reason


def test_clear_decision_names_the_granting_rule(policy: AccessPolicy) -> None:
    decision = policy.decide(SCIENTIST, "training", BALANCE)
    assert decision.view == "clear"
    assert decision.reason == "rule 'p, data_scientist, training, sensitive, *, clear'"


def test_decide_many_returns_one_decision_per_field_in_order(policy: AccessPolicy) -> None:
    fields = [REGION, NATIONAL_ID, BALANCE]
    decisions = policy.decide_many(Actor("mia", "marketing_analyst"), "marketing", fields)
    assert [(d.field, d.view) for d in decisions] == [
        ("region", "clear"),
        ("national_id", "denied"),
        ("balance", "masked"),
    ]


def test_unknown_role_is_refused_with_access_denied(policy: AccessPolicy) -> None:
    with pytest.raises(AccessDenied, match="intern"):
        policy.decide(Actor("ivy", "intern"), "training", REGION)
    with pytest.raises(AccessDenied):
        policy.may(Actor("ivy", "intern"), "read")


@pytest.mark.parametrize("name", ["", " padded", "line\nbreak", "x" * 201])
def test_actor_with_malformed_name_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError):
        Actor(name, "data_scientist")


@pytest.mark.parametrize("role", ["", "Risk Officer", "risk-officer", "1admin"])
def test_actor_with_malformed_role_is_rejected(role: str) -> None:
    with pytest.raises(ConfigError):
        Actor("x", role)


@pytest.mark.parametrize("tier, role", [("secret", "feature"), ("core", "key"), ("", "id")])
def test_field_ref_with_unknown_tier_or_role_is_a_schema_error(tier: str, role: str) -> None:
    with pytest.raises(SchemaError):
        FieldRef("f", tier, role)


EXPECTED_ACTIONS = {
    "data_scientist": {"read"},
    "marketing_analyst": {"read"},
    "risk_officer": {"read"},
    "compliance_officer": {"audit_read", "approve"},
    "partner_admin": {"ingest", "keys", "erase", "policy_edit", "people", "approve", "read"},
    "training_pipeline": {"read"},
}


@pytest.mark.parametrize("role", ROLES)
def test_default_policy_grants_each_role_exactly_its_actions(policy: AccessPolicy, role: str) -> None:
    actor = Actor("a", role)
    assert {a for a in ACTIONS if policy.may(actor, a)} == EXPECTED_ACTIONS[role]


def test_require_raises_access_denied_naming_role_and_action(policy: AccessPolicy) -> None:
    with pytest.raises(AccessDenied, match=r"data_scientist.*erase"):
        policy.require(SCIENTIST, "erase")
    policy.require(ADMIN, "erase")  # allowed: no exception


def test_unknown_action_is_a_config_error(policy: AccessPolicy) -> None:
    with pytest.raises(ConfigError, match="unknown action"):
        policy.may(ADMIN, "delete_everything")


def test_valid_approval_opens_core_field_in_clear(policy: AccessPolicy) -> None:
    decision = policy.decide(RISK, "risk_review", NATIONAL_ID, approval=_approval(), now=T0)
    assert decision.view == "clear"
    assert "a1" in decision.reason


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"approvers": ("adam",)}, "1 distinct approver"),
        ({"approvers": ("adam", "ADAM")}, "1 distinct approver"),
        ({"approvers": ("adam", "rita")}, "own approval"),
        ({"requester": "someone_else"}, "another requester"),
        ({"purpose": "training"}, "purpose"),
        ({"fields": ("phone",)}, "not covered"),
        ({"expires_at": T0.isoformat()}, "expired"),
        ({"expires_at": "tomorrow"}, "ISO 8601"),
    ],
)
def test_defective_approval_keeps_core_field_denied(policy: AccessPolicy, changes: dict, why: str) -> None:
    decision = policy.decide(RISK, "risk_review", NATIONAL_ID, approval=_approval(**changes), now=T0)
    assert decision.view == "denied"
    assert decision.reason.startswith("core field needs two approvals")
    assert why in decision.reason


def test_approval_does_not_widen_a_role_without_an_approval_gated_rule(policy: AccessPolicy) -> None:
    approval = _approval(requester="sam", purpose="training")
    assert policy.decide(SCIENTIST, "training", NATIONAL_ID, approval=approval, now=T0).view == "denied"


def test_approval_does_not_open_core_fields_for_another_purpose(policy: AccessPolicy) -> None:
    decision = policy.decide(RISK, "analytics", NATIONAL_ID, approval=_approval(), now=T0)
    assert decision.view == "denied"
