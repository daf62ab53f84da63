"""Tests for role-based field access, approvals and the editable casbin policy."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, SchemaError
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.policy import (
    ACTIONS,
    FIELD_ROLES,
    PURPOSES,
    ROLES,
    TIERS,
    AccessPolicy,
    Actor,
    Approval,
    FieldRef,
    bundled_policy_text,
    parse_policy_text,
    write_default_policy,
)

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


# --------------------------------------------------------------------------- default matrix


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


# --------------------------------------------------------------------------- actions

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


# --------------------------------------------------------------------------- approvals (values)


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


# --------------------------------------------------------------------------- approval book


def _two_signed(book: ApprovalBook, fields=("national_id",), **kw) -> str:
    rid = book.request(RISK, "customers", list(fields), "risk_review", now=T0, **kw)
    assert book.approve(rid, ADMIN, now=T0 + timedelta(minutes=1)) is None
    return rid


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


# --------------------------------------------------------------------------- editable policy file


def test_editing_policy_csv_changes_decisions(tmp_path: Path) -> None:
    path = write_default_policy(tmp_path / "policy.csv")
    analyst = Actor("mia", "marketing_analyst")
    assert AccessPolicy.load(path).decide(analyst, "marketing", BALANCE).view == "masked"
    text = path.read_text().replace(
        "p, marketing_analyst, marketing, sensitive, *, masked",
        "p, marketing_analyst, marketing, sensitive, *, clear",
    )
    text = text.replace("p, data_scientist, training, sensitive, *, clear", "")
    path.write_text(text)
    edited = AccessPolicy.load(path)
    assert edited.decide(analyst, "marketing", BALANCE).view == "clear"
    assert edited.decide(SCIENTIST, "training", BALANCE).view == "denied"
    assert edited.decide(SCIENTIST, "training", REGION).view == "clear"


def test_policy_can_add_a_role_that_inherits_another(tmp_path: Path) -> None:
    extra = "g, senior_analyst, marketing_analyst\np, senior_analyst, marketing, core, *, masked\n"
    text = bundled_policy_text() + "\n" + extra
    edited = AccessPolicy.from_text(text)
    senior = Actor("sara", "senior_analyst")
    assert edited.decide(senior, "marketing", BALANCE).view == "masked"
    assert edited.decide(senior, "marketing", PHONE).view == "masked"
    assert edited.decide(Actor("mia", "marketing_analyst"), "marketing", PHONE).view == "denied"


def test_policy_can_make_a_role_an_approver(tmp_path: Path) -> None:
    edited = AccessPolicy.from_text(bundled_policy_text().replace("p2, compliance_officer, approve", ""))
    assert not edited.may(COMPLIANCE, "approve")
    assert edited.approver_roles() == frozenset({"partner_admin"})


def test_write_default_policy_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("p2, partner_admin, ingest\n")
    with pytest.raises(ConfigError, match="already exists"):
        write_default_policy(path)
    assert path.read_text() == "p2, partner_admin, ingest\n"


@pytest.mark.parametrize(
    "line, match",
    [
        ("q, data_scientist, read", "expected 'p'"),
        ("p, data_scientist, training, public, clear", r"4 value\(s\); expected 5"),
        ("p, data_scientist, training, secret, *, clear", "tier 'secret'"),
        ("p, data_scientist, fun, public, *, clear", "purpose 'fun'"),
        ("p, data_scientist, training, public, key, clear", "field_role 'key'"),
        ("p, data_scientist, training, public, *, visible", "view 'visible'"),
        ("p, Data Scientist, training, public, *, clear", "not a role name"),
        ("p, *, training, public, *, clear", "not a role name"),
        ("p2, partner_admin, delete", "action 'delete'"),
        ("p2, partner_admin", "1 value"),
        ("p, data_scientist, training, , *, clear", "tier is empty"),
        ("g, admin, admin", "inherit from itself"),
    ],
)
def test_malformed_policy_line_is_a_config_error_naming_the_line(
    tmp_path: Path, line: str, match: str
) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("# header\np2, partner_admin, ingest\n" + line + "\n")
    with pytest.raises(ConfigError, match=match) as info:
        AccessPolicy.load(path)
    assert f"{path}:3" in str(info.value)


def test_policy_without_rules_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("# only comments\n\n")
    with pytest.raises(ConfigError, match="no 'p' or 'p2' rules"):
        AccessPolicy.load(path)


def test_missing_or_binary_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        AccessPolicy.load(tmp_path / "nope.csv")
    binary = tmp_path / "policy.csv"
    binary.write_bytes(b"\xff\xfe\x00p")
    with pytest.raises(ConfigError, match="UTF-8"):
        AccessPolicy.load(binary)


@pytest.mark.parametrize(
    "model_text, match",
    [
        ("[request_definition]\nr = sub, act\n", "section 'r'"),
        ("this is not a model", "casbin model|section"),
    ],
)
def test_malformed_model_file_is_a_config_error(tmp_path: Path, model_text: str, match: str) -> None:
    policy_csv = write_default_policy(tmp_path / "policy.csv")
    model = tmp_path / "model.conf"
    model.write_text(model_text)
    with pytest.raises(ConfigError, match=match):
        AccessPolicy.load(policy_csv, model)


def test_model_with_unevaluable_matcher_fails_at_load(tmp_path: Path) -> None:
    from fedcustomer.privacy.access.policy import bundled_model_text

    broken = bundled_model_text().replace("r.view == p.view", "r.colour == p.view")
    model = tmp_path / "model.conf"
    model.write_text(broken)
    with pytest.raises(ConfigError, match="matchers"):
        AccessPolicy.load(write_default_policy(tmp_path / "policy.csv"), model)


def test_custom_model_file_is_used(tmp_path: Path) -> None:
    from fedcustomer.privacy.access.policy import bundled_model_text

    # A stricter model that ignores the tier wildcard: '*' no longer matches any tier.
    model = tmp_path / "model.conf"
    model.write_text(bundled_model_text().replace('(p.tier == "*" || r.tier == p.tier)', "r.tier == p.tier"))
    path = tmp_path / "policy.csv"
    path.write_text("p, data_scientist, training, *, *, clear\n")
    assert AccessPolicy.load(path).decide(SCIENTIST, "training", REGION).view == "clear"
    assert AccessPolicy.load(path, model).decide(SCIENTIST, "training", REGION).view == "denied"


_token = st.sampled_from(
    [
        "p",
        "p2",
        "g",
        "data_scientist",
        "training",
        "core",
        "*",
        "clear",
        "masked",
        "read",
        "",
        " ",
        "x",
        "Bad Role",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_token, min_size=1, max_size=7).map(", ".join), min_size=1, max_size=6))
def test_policy_parser_accepts_or_raises_config_error_only(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        parsed = parse_policy_text(text, "fuzz.csv")
    except ConfigError as exc:
        assert "fuzz.csv" in str(exc)
        return
    assert all(ln.ptype in ("p", "p2", "g") for ln in parsed)
    AccessPolicy.from_text(text)  # anything the parser accepts, casbin loads


def test_most_open_granted_view_wins_and_gated_clear_falls_back_to_masked() -> None:
    extra = (
        "p, risk_officer, risk_review, core, feature, masked\n"
        "p, data_scientist, training, sensitive, *, masked\n"
    )
    edited = AccessPolicy.from_text(bundled_policy_text() + "\n" + extra)
    assert edited.decide(SCIENTIST, "training", BALANCE).view == "clear"
    masked = edited.decide(RISK, "risk_review", PHONE, now=T0)
    assert masked.view == "masked" and "clear needs two approvals" in masked.reason
    approval = _approval(fields=("phone",))
    assert edited.decide(RISK, "risk_review", PHONE, approval=approval, now=T0).view == "clear"
    assert edited.decide(RISK, "risk_review", NATIONAL_ID, now=T0).view == "denied"


# --------------------------------------------------------------------------- look-alike names


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
