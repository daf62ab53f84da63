"""The one core-tier grant without approvals (PSI record linkage) is exactly as narrow as documented."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fedcustomer.privacy.access.policy import (
    FIELD_ROLES,
    PURPOSES,
    ROLES,
    TIERS,
    AccessPolicy,
    Actor,
    FieldRef,
)

T0 = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
RULE = "p, training_pipeline, record_linkage, core, id, clear"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "GOVERNANCE.md"


def _views(policy: AccessPolicy, role: str, purpose: str) -> dict[tuple[str, str], str]:
    actor = Actor(f"someone_{role}", role)
    return {
        (t, r): policy.decide(actor, purpose, FieldRef("f", t, r), now=T0).view
        for t in TIERS
        for r in FIELD_ROLES
    }


def test_record_linkage_gives_the_pipeline_the_id_field_only_and_nobody_else_anything():
    policy = AccessPolicy.default()
    pipeline = {k for k, v in _views(policy, "training_pipeline", "record_linkage").items() if v != "denied"}
    assert pipeline == {("core", "id")}
    assert (
        _views(policy, "training_pipeline", "record_linkage")[("core", "id")] == "clear"
    )  # no approval needed
    for role in ROLES:
        if role != "training_pipeline":
            assert set(_views(policy, role, "record_linkage").values()) == {"denied"}, role
    core_elsewhere = {
        p
        for p in PURPOSES
        if p != "record_linkage"
        for (t, _), v in _views(policy, "training_pipeline", p).items()
        if t == "core" and v != "denied"
    }
    assert core_elsewhere == set()


def test_the_grant_and_its_reason_are_documented():
    text = DOCS.read_text(encoding="utf-8")
    assert RULE in text
    section = text[text.index("### Why the training pipeline may read the raw id for `record_linkage`") :]
    assert "blinds them in memory" in section and "never an id" in section
