"""The editable casbin policy: the CSV and model files a partner may change, and the errors a bad one gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.access.policy import (
    AccessPolicy,
    Actor,
    bundled_policy_text,
    parse_policy_text,
    write_default_policy,
)
from tests.privacy.access.policy_fixtures import (
    BALANCE,
    COMPLIANCE,
    NATIONAL_ID,
    PHONE,
    REGION,
    RISK,
    SCIENTIST,
    T0,
    _approval,
)


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


def test_the_same_policy_texts_give_one_built_policy_and_an_edit_a_new_one(tmp_path) -> None:
    from fedcustomer.privacy.access.policy import Actor, FieldRef, write_default_policy

    path = write_default_policy(tmp_path / "policy.csv")
    pipeline, field = Actor("node:a", "training_pipeline"), FieldRef("f", "sensitive", "feature")
    first = AccessPolicy.load(path)
    assert AccessPolicy.load(path) is first  # built once: the enforcer and its answers are kept
    assert AccessPolicy.default() is AccessPolicy.default()
    assert first.decide(pipeline, "training", field).view == "clear"
    kept = [ln for ln in path.read_text().splitlines() if "training_pipeline, training, sensitive" not in ln]
    path.write_text("\n".join(kept) + "\n")
    second = AccessPolicy.load(path)
    assert second is not first
    assert second.decide(pipeline, "training", field).view == "denied"
    assert first.decide(pipeline, "training", field).view == "clear"  # a built policy never changes
    assert AccessPolicy.from_text(path.read_text(), source="elsewhere") is not second  # its name differs
