"""Governance on a home with a people registry: every request signed, every refusal audited.

Each attack the identity issue lists is tried against a real store: a forged name, an
unregistered or revoked key, self-approval, two approvals by one key, a replayed or
stale request, an approval for another request, a registry edited on disk.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.schema import load_bundled
from fedcustomer.errors import AccessDenied, IntegrityError, KeyMaterialError
from fedcustomer.privacy.access.person_keys import KeySigner
from fedcustomer.privacy.access.policy import Actor, utc_now
from fedcustomer.privacy.access.requests import sign_request
from fedcustomer.privacy.audit.signatures import check_entry_signatures
from tests.data.test_ingest import bank_frame
from tests.people import people_home

CORE = ["national_id"]


@pytest.fixture()
def bank_store(tmp_path):
    store, people = people_home(tmp_path, "bank_a")
    frame = bank_frame(30)
    path = tmp_path / "bank.csv"
    frame.to_csv(path, index=False)
    store.ingest(people["alice"].signer, load_bundled("bank"), path)
    yield store, people, frame
    store.close()


def last(store, **query):
    return store.audit.query(**query)[-1]


def test_role_and_name_come_from_the_registry_and_the_entry_keeps_the_signed_request(bank_store) -> None:
    store, people, _ = bank_store
    frame = store.read(people["mia"].signer, "marketing", ["region"], dataset="bank")
    assert len(frame) == 30
    entry = last(store, action="read")
    assert (entry.actor, entry.role, entry.decision) == ("mia", "marketing_analyst", "allowed")
    auth = entry.details["auth"]
    assert auth["key_id"] == people["mia"].signer.key_id
    assert auth["request"]["action"] == "read" and auth["request"]["purpose"] == "marketing"
    assert check_entry_signatures(iter(store.audit), store.people).ok


def test_a_bare_name_is_refused_and_audited_as_unauthenticated(bank_store) -> None:
    store, _, _ = bank_store
    with pytest.raises(AccessDenied, match="not authenticated"):
        store.read(Actor("rick", "risk_officer"), "risk_review", ["region"], dataset="bank")
    entry = last(store, decision="denied")
    assert (entry.actor, entry.role) == ("unauthenticated", "unauthenticated")
    assert entry.details["claimed_name"] == "rick"


def test_an_unregistered_key_is_refused_and_audited(bank_store) -> None:
    store, _, _ = bank_store
    outsider = KeySigner.generate()
    with pytest.raises(AccessDenied, match="not registered"):
        store.read(outsider, "analytics", ["region"], dataset="bank")
    entry = last(store, decision="denied")
    assert entry.actor == "unauthenticated" and entry.details["key_id"] == outsider.key_id


def test_a_revoked_key_is_refused_at_once_and_audited_under_its_name(bank_store) -> None:
    store, people, _ = bank_store
    PeopleAdmin(store).revoke(people["alice"].signer, people["mia"].signer.key_id, "left the bank")
    with pytest.raises(AccessDenied, match="revoked"):
        store.read(people["mia"].signer, "marketing", ["region"], dataset="bank")
    entry = last(store, decision="denied")
    assert (entry.actor, entry.action) == ("mia", "read")
    revoke = last(store, action="people_revoke")
    assert revoke.actor == "alice" and revoke.details["key_id"] == people["mia"].signer.key_id


def test_a_replayed_request_is_refused(bank_store) -> None:
    store, people, _ = bank_store
    signed = sign_request(
        people["mia"].signer,
        partner="bank_a",
        action="read",
        dataset="bank",
        fields=["region"],
        purpose="marketing",
        extra={"where_sha256": _no_filter(), "approval_id": None},
    )
    assert len(store.read(signed, "marketing", ["region"], dataset="bank")) == 30
    with pytest.raises(AccessDenied, match="replayed"):
        store.read(signed, "marketing", ["region"], dataset="bank")
    assert last(store, decision="denied").actor == "mia"


def test_a_stale_request_and_one_for_something_else_are_refused(bank_store) -> None:
    store, people, _ = bank_store
    old = sign_request(
        people["mia"].signer,
        partner="bank_a",
        action="read",
        dataset="bank",
        fields=["region"],
        purpose="marketing",
        extra={"where_sha256": _no_filter(), "approval_id": None},
        now=utc_now() - timedelta(minutes=30),
    )
    with pytest.raises(AccessDenied, match="stale"):
        store.read(old, "marketing", ["region"], dataset="bank")
    fresh = sign_request(
        people["mia"].signer,
        partner="bank_a",
        action="read",
        dataset="bank",
        fields=["region"],
        purpose="marketing",
        extra={"where_sha256": _no_filter(), "approval_id": None},
    )
    with pytest.raises(AccessDenied, match="does not match"):
        store.read(fresh, "marketing", ["region", "income"], dataset="bank")  # more than was signed


def test_signed_two_person_approval_then_clear_core_read(bank_store) -> None:
    store, people, frame = bank_store
    approvals = StoreApprovals(store)
    rid = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    assert approvals.approve(people["carol"].signer, rid) is None
    approval = approvals.approve(people["alice"].signer, rid)
    assert approval is not None and set(approval.approvers) == {"carol", "alice"}
    got = store.read(people["rick"].signer, "risk_review", CORE, dataset="bank", approval_id=rid)
    assert sorted(got["national_id"]) == sorted(frame["national_id"].astype(str))
    approve = last(store, action="approve")
    signed = approve.details["auth"]["request"]
    assert signed["extra"]["request_id"] == rid and len(signed["extra"]["request_digest"]) == 64
    assert check_entry_signatures(iter(store.audit), store.people).ok


def test_self_approval_and_two_approvals_by_one_key_are_refused_and_audited(bank_store) -> None:
    store, people, _ = bank_store
    approvals = StoreApprovals(store)
    rid = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    with pytest.raises(AccessDenied):
        approvals.approve(people["rick"].signer, rid)  # a risk officer may not approve, least of all his own
    approvals.approve(people["carol"].signer, rid)
    with pytest.raises(AccessDenied, match="already approved"):
        approvals.approve(people["carol"].signer, rid)
    assert last(store, action="approve", decision="denied").actor == "carol"
    assert approvals.pending()[0]["approvals_needed"] == 1


def test_a_requester_whose_role_may_approve_still_cannot_approve_their_own_request(tmp_path) -> None:
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.access.policy import bundled_policy_text

    store, people = people_home(tmp_path, "bank_b")
    home = store.home
    path = tmp_path / "b.csv"
    bank_frame(5).to_csv(path, index=False)
    store.ingest(people["alice"].signer, load_bundled("bank"), path)
    store.close()
    (home.root / "policy.csv").write_text(bundled_policy_text() + "p2, risk_officer, approve\n")
    config = home.config()
    config.policy_file = "policy.csv"
    home.write_config(config)
    with PartnerStore.open(home) as store:
        rid = StoreApprovals(store).request(people["rick"].signer, "bank", CORE, "risk_review")
        with pytest.raises(AccessDenied, match="cannot approve"):
            StoreApprovals(store).approve(people["rick"].signer, rid)
        assert last(store, action="approve", decision="denied").actor == "rick"


def test_an_approval_signed_for_another_request_is_refused(bank_store) -> None:
    store, people, _ = bank_store
    approvals = StoreApprovals(store)
    first = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    second = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    signed_for_first = sign_request(
        people["carol"].signer,
        partner="bank_a",
        action="approve",
        extra={"request_id": first, "request_digest": store.approvals.digest_of(first)},
    )
    with pytest.raises(AccessDenied, match="does not match"):
        approvals.approve(signed_for_first, second)
    assert approvals.approve(signed_for_first, first) is None  # still good for the request it signs


def test_a_revoked_approver_no_longer_counts(bank_store) -> None:
    store, people, _ = bank_store
    approvals = StoreApprovals(store)
    rid = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    approvals.approve(people["carol"].signer, rid)
    approvals.approve(people["cole"].signer, rid)
    PeopleAdmin(store).revoke(people["alice"].signer, people["cole"].signer.key_id, "key lost")
    with pytest.raises(AccessDenied):
        store.read(people["rick"].signer, "risk_review", CORE, dataset="bank", approval_id=rid)


def test_a_signature_row_typed_into_the_approvals_database_counts_for_nothing(bank_store) -> None:
    import sqlite3

    store, people, _ = bank_store
    approvals = StoreApprovals(store)
    rid = approvals.request(people["rick"].signer, "bank", CORE, "risk_review")
    approvals.approve(people["carol"].signer, rid)
    con = sqlite3.connect(store.approvals.db_path)
    row = con.execute("SELECT signed FROM signatures WHERE request_id = ?", (rid,)).fetchone()
    forged = json.loads(row[0])
    forged["key_id"] = forged["request"]["key_id"] = people[
        "cole"
    ].signer.key_id  # carol's signature, cole's name
    con.execute(
        "INSERT INTO signatures (request_id, approver_key, approver, approver_role, signed_at, key_id, signed) "
        "VALUES (?, ?, 'cole', 'compliance_officer', '2026-01-01T00:00:00+00:00', ?, ?)",
        (rid, people["cole"].signer.key_id, people["cole"].signer.key_id, json.dumps(forged)),
    )
    con.commit()
    con.close()
    assert approvals.pending()[0]["approvals_needed"] == 1


def test_a_registry_edited_on_disk_stops_every_request_with_an_audit_entry(bank_store) -> None:
    store, people, _ = bank_store
    path = store.home.people_path
    lines = path.read_text().splitlines()
    raised = [json.loads(line) for line in lines]
    for event in raised:
        if event.get("name") == "mia":
            event["role"] = "risk_officer"
    path.write_text("\n".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in raised) + "\n")
    with pytest.raises(IntegrityError, match="people registry"):
        store.read(people["mia"].signer, "marketing", ["region"], dataset="bank")
    entry = last(store, decision="denied")
    assert entry.actor == "unauthenticated" and "people registry" in entry.reason
    path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        store.read(people["mia"].signer, "marketing", ["region"], dataset="bank")


def test_admin_actions_and_the_nodes_own_pipeline_sign_too(bank_store) -> None:
    store, people, _ = bank_store
    KeyAdmin(store).rotate(people["alice"].signer)
    with pytest.raises(AccessDenied):
        KeyAdmin(store).rotate(people["mia"].signer)
    erase_customer(store, people["alice"].signer, "C0001")
    spec = _spec()
    frame = PartnerDataAccess(store.home, "bank_a").training_frame("bank", spec, "train")
    assert len(frame) > 0
    entry = last(store, action="read", purpose="training")
    assert (entry.actor, entry.role) == ("node:bank_a", "training_pipeline")
    assert entry.details["auth"]["key_id"]
    report = check_entry_signatures(iter(store.audit), store.people)
    assert report.ok and report.checked >= 5, report.to_dict()


def test_audit_check_catches_an_entry_whose_name_was_changed(bank_store) -> None:
    store, people, _ = bank_store
    store.read(people["mia"].signer, "marketing", ["region"], dataset="bank")
    entries = list(store.audit)
    entries[-1] = dataclasses.replace(entries[-1], actor="carol", role="compliance_officer")
    report = check_entry_signatures(entries, store.people)
    assert not report.ok and "belongs to 'mia'" in report.problems[0][1]
    unsigned = dataclasses.replace(entries[-1], details={})
    report = check_entry_signatures([unsigned], store.people)
    assert not report.ok and "without a signed request" in report.problems[0][1]


def _no_filter() -> str:
    from fedcustomer.data.store_read import read_request_extra

    return str(read_request_extra(None, None)["where_sha256"])


def _spec():
    from fedcustomer.data.features import FeatureSpec, NumericFeature

    return FeatureSpec("repayment", "defaulted", None, [NumericFeature("income", 0, 500000)])


def test_a_missing_service_key_is_a_key_material_error(bank_store) -> None:
    """Like every missing key file (exit 8), not a configuration error."""
    store, _, _ = bank_store
    store.home.service_key_path("training_pipeline").unlink()
    with pytest.raises(KeyMaterialError, match="no service key for role 'training_pipeline'"):
        store.service_credential("node:bank_a", "training_pipeline")
