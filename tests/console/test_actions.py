"""State changes made in the console reach the store as the person's own signed requests.

An approval given through the console counts in the approvals book, its audit entry
names the approver and holds their signature, and the whole log still verifies, people's
signatures included. A token signed by someone else, replayed, or for another request is
refused.
"""

from __future__ import annotations

import re

import pytest

from fedcustomer.console.intents import read_intent, read_signed, sign_intent
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.audit.signatures import check_entry_signatures
from tests.console.conftest import World, csrf_of
from tests.console.helpers import sign_in

INTENT = re.compile(r'<span id="intent">([^<]+)</span>')


@pytest.fixture(scope="module")
def app(world: World):
    return world.app()


def _intent(html: str) -> str:
    found = INTENT.search(html)
    assert found, "the page shows no intent to sign"
    return found.group(1)


def _entries(world: World):
    with PartnerStore.open(world.home) as store:
        return (
            store.audit.query(),
            check_entry_signatures(iter(store.audit), store.people),
            store.audit.verify(),
        )


def test_two_approvals_given_in_the_console_grant_the_request_and_verify(world: World, app) -> None:
    rid = world.request_id
    for name, expected in (("alice", "approval recorded"), ("carol", "now granted")):
        client = sign_in(world, app, name)
        page = client.get(f"/approvals/{rid}/approve")
        assert page.status_code == 200
        token = sign_intent(world.people[name].signer, _intent(page.text))
        done = client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page.text), "token": token})
        assert done.status_code == 200 and expected in done.text
    entries, signatures, report = _entries(world)
    approvals = [e for e in entries if e.action == "approve" and e.decision == "allowed"]
    assert [e.actor for e in approvals[-2:]] == ["alice", "carol"]
    assert approvals[-1].details["auth"]["key_id"] == world.people["carol"].signer.key_id
    assert signatures.ok and signatures.checked > 0 and report.ok
    with PartnerStore.open(world.home) as store:
        assert rid not in [p["request_id"] for p in store.approvals.pending()]  # granted: out of the queue


def test_a_token_signed_by_another_person_or_replayed_is_refused(world: World, app) -> None:
    with PartnerStore.open(world.home) as store:
        from fedcustomer.data.approvals import StoreApprovals

        rid = StoreApprovals(store).request(world.people["rick"].signer, "bank", ["phone"], "risk_review")
    client = sign_in(world, app, "alice")
    page = client.get(f"/approvals/{rid}/approve")
    intent = _intent(page.text)
    by_carol = sign_intent(world.people["carol"].signer, intent)
    refused = client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page.text), "token": by_carol})
    assert refused.status_code == 403 and "another person" in refused.text
    token = sign_intent(world.people["alice"].signer, intent)
    assert (
        client.post(
            f"/approvals/{rid}/approve", data={"csrf": csrf_of(page.text), "token": token}
        ).status_code
        == 200
    )
    again = client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page.text), "token": token})
    assert again.status_code == 403 and "already" in again.text
    other = client.get(f"/approvals/{world.request_id}/approve")
    wrong_request = sign_intent(world.people["alice"].signer, intent)
    moved = client.post(
        f"/approvals/{world.request_id}/approve", data={"csrf": csrf_of(other.text), "token": wrong_request}
    )
    assert moved.status_code == 403 and "does not match" in moved.text


def test_a_rejection_is_a_signed_audited_entry_with_its_reason(world: World, app) -> None:
    with PartnerStore.open(world.home) as store:
        from fedcustomer.data.approvals import StoreApprovals

        rid = StoreApprovals(store).request(world.people["rick"].signer, "bank", ["full_name"], "risk_review")
    client = sign_in(world, app, "carol")
    ask = client.get(f"/approvals/{rid}/reject")
    assert 'name="reason"' in ask.text
    page = client.get(f"/approvals/{rid}/reject", params={"reason": "no case number <b>"})
    assert read_intent(_intent(page.text))["extra"]["reason"] == "no case number <b>"
    token = sign_intent(world.people["carol"].signer, _intent(page.text))
    form = {"csrf": csrf_of(page.text), "token": token, "reason": "no case number <b>"}
    done = client.post(f"/approvals/{rid}/reject", data=form)
    assert done.status_code == 200 and "rejected by carol" in done.text
    entries, signatures, report = _entries(world)
    entry = entries[-1]
    assert (entry.action, entry.actor, entry.reason, entry.approvals) == (
        "approval_reject",
        "carol",
        "no case number <b>",
        (rid,),
    )
    assert "auth" in entry.details and signatures.ok and report.ok


def test_enrolment_in_the_console_is_signed_by_the_admin_and_the_new_password_works(
    world: World, app
) -> None:
    from starlette.testclient import TestClient

    cole = world.people["cole"]
    client = sign_in(world, app, "alice")
    page = client.get(f"/people/{cole.signer.key_id}/enrol")
    token = sign_intent(world.people["alice"].signer, _intent(page.text))
    done = client.post(
        f"/people/{cole.signer.key_id}/enrol", data={"csrf": csrf_of(page.text), "token": token}
    )
    password = re.search(r'id="new-password">([^<]+)<', done.text).group(1)
    entries, signatures, _ = _entries(world)
    assert entries[-1].action == "console_enrol" and entries[-1].actor == "alice" and signatures.ok
    assert password not in str([e.to_dict() for e in entries])
    fresh = TestClient(app)
    login = fresh.get("/login")
    second = fresh.post("/login", data={"csrf": csrf_of(login.text), "name": "cole", "password": password})
    code = world.code(app.state.console, "cole")
    final = fresh.post(
        "/login/totp", data={"csrf": csrf_of(second.text), "code": code}, follow_redirects=False
    )
    assert final.status_code == 303
    assert "cole (compliance_officer)" in fresh.get("/audit").text


def test_sign_in_with_a_signed_challenge(world: World, app) -> None:
    from starlette.testclient import TestClient

    client = TestClient(app)
    page = client.get("/login/key")
    token = sign_intent(world.people["dana"].signer, _intent(page.text))
    done = client.post(
        "/login/key", data={"csrf": csrf_of(page.text), "token": token}, follow_redirects=False
    )
    assert done.status_code == 303
    assert "dana (data_scientist)" in client.get("/runs").text
    entries, signatures, _ = _entries(world)
    assert entries[-1].action == "console_login" and entries[-1].details["method"] == "identity_key"
    assert signatures.ok
    again = TestClient(app)
    page = again.get("/login/key")
    refused = again.post("/login/key", data={"csrf": csrf_of(page.text), "token": token})  # an old challenge
    assert refused.status_code == 401


def test_intents_and_tokens_reject_garbage() -> None:
    with pytest.raises(ConfigError):
        read_intent("not an intent")
    with pytest.raises(AccessDenied):
        read_signed("")
    with pytest.raises(AccessDenied):
        read_signed("eyJ4IjoxfQ")


def test_an_unsigned_rejection_or_enrolment_is_reported_by_verify(tmp_path) -> None:
    from fedcustomer.privacy.access.policy import Actor
    from tests.people import people_home

    store, _ = people_home(tmp_path, "bank_x", {"alice": "partner_admin"})
    with store:
        store.log(Actor("alice", "partner_admin"), "approval_reject", approvals=["r1"])
        store.log(Actor("alice", "partner_admin"), "console_enrol", details={"key_id": "k"})
        report = check_entry_signatures(iter(store.audit), store.people)
    assert [why for _, why in report.problems] == [
        "'approval_reject' was allowed without a signed request",
        "'console_enrol' was allowed without a signed request",
    ]
