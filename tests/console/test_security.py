"""Security of the console over HTTP: role refusals on every endpoint, CSRF, XSS, fixation, lock-out."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from fedcustomer.console.context import ConsoleSettings
from fedcustomer.console.credentials import LOCK_SECONDS, MAX_FAILURES
from fedcustomer.console.sessions import SECURE_COOKIE, SessionBook
from fedcustomer.data.store import PartnerStore
from fedcustomer.privacy.access.policy import Actor
from tests.console.conftest import PASSWORDS, XSS, XSS_FILE, World, csrf_of
from tests.console.helpers import csrf, sign_in

# (method, path, policy action the view needs)
ENDPOINTS = [
    ("GET", "/audit", "audit_read"),
    ("GET", "/audit?actor=alice", "audit_read"),
    ("GET", "/audit/export.csv", "audit_read"),
    ("GET", "/audit/export.json", "audit_read"),
    ("GET", "/audit/export.xml", "audit_read"),
    ("GET", "/audit/status", "audit_read"),
    ("GET", "/budgets", "audit_read"),
    ("GET", "/budgets?recompute=1", "audit_read"),
    ("GET", "/approvals", "approve"),
    ("GET", "/approvals/{rid}/approve", "approve"),
    ("GET", "/approvals/{rid}/reject", "approve"),
    ("POST", "/approvals/{rid}/approve", "approve"),
    ("POST", "/approvals/{rid}/reject", "approve"),
    ("GET", "/people", "people"),
    ("GET", "/people/{alice}/enrol", "people"),
    ("POST", "/people/{alice}/enrol", "people"),
    ("GET", "/ingests", "ingest"),
    ("GET", "/runs", "read"),
    ("GET", "/runs/run-a", "read"),
    ("GET", "/runs/run-a/progress", "read"),
    ("GET", "/runs/run-a/files/summary.json", "read"),
    ("GET", "/runs/compare?run=run-a&run=run-b", "read"),
]
ROLES = ["alice", "carol", "dana", "mia", "rick"]


@pytest.fixture(scope="module")
def app(world: World):
    return world.app()


@pytest.fixture(scope="module")
def clients(world: World, app) -> dict[str, TestClient]:
    return {name: sign_in(world, app, name) for name in ROLES}


def _path(world: World, path: str) -> str:
    return path.replace("{rid}", world.request_id).replace("{alice}", world.people["alice"].signer.key_id)


@pytest.mark.parametrize("name", ROLES)
def test_every_endpoint_refuses_each_role_the_policy_refuses(world: World, app, clients, name: str) -> None:
    client = clients[name]
    policy = app.state.console.policy
    role = world.people[name].role
    for method, path, action in ENDPOINTS:
        allowed = policy.may(Actor(name, role), action)
        token = csrf(client)
        response = client.request(
            method, _path(world, path), data={"csrf": token} if method == "POST" else None
        )
        if allowed:
            assert "may not see" not in response.text and response.status_code < 500, (name, path)
        else:
            assert response.status_code == 403, (name, method, path, response.status_code)
            assert "may not see" in response.text


def test_signed_out_visitors_are_sent_to_sign_in_and_posts_refused(world: World, app) -> None:
    client = TestClient(app)
    for method, path, _ in ENDPOINTS:
        response = client.request(method, _path(world, path), follow_redirects=False)
        if method == "GET":
            assert response.status_code == 303 and response.headers["location"] == "/login", path
        else:
            assert response.status_code in (401, 403), path


def test_state_changes_without_the_csrf_token_are_refused(world: World, app, clients) -> None:
    client = clients["alice"]
    for path in (f"/approvals/{world.request_id}/approve", "/logout"):
        response = client.post(path, data={"token": "x"})
        assert response.status_code == 403 and "CSRF" in response.text
        response = client.post(path, data={"token": "x", "csrf": "not-the-token"})
        assert response.status_code == 403 and "CSRF" in response.text
    fresh = TestClient(app)
    fresh.get("/login")
    refused = fresh.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]})
    assert refused.status_code == 403
    assert client.get("/people").status_code == 200  # still signed in: nothing happened


def test_names_reasons_and_fields_from_files_and_people_are_escaped(world: World, app, clients) -> None:
    with PartnerStore.open(world.home) as store:
        store.log(Actor("mia", "marketing_analyst"), "read", "denied", dataset=XSS, fields=[XSS], reason=XSS)
    pages = [
        (clients["carol"], "/audit"),
        (clients["carol"], "/budgets"),
        (clients["dana"], "/runs/run-a"),
    ]
    for client, path in pages:
        html = client.get(path).text
        assert XSS not in html, path
        assert "&lt;script&gt;" in html, path
    html = clients["alice"].get("/ingests").text
    assert XSS_FILE not in html and "&lt;img src=x" in html
    export = clients["carol"].get("/audit/export.csv")  # a download, never rendered as a page
    assert (
        export.headers["content-type"].startswith("text/csv")
        and "attachment" in export.headers["content-disposition"]
    )
    assert "alert" in export.text


def test_security_headers_and_cookie_flags(world: World, app) -> None:
    client = TestClient(app)
    response = client.get("/login")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    secure_app = world.app()
    secure_app.state.console.settings.tls = True
    cookie = TestClient(secure_app, base_url="https://testserver").get("/login").headers["set-cookie"]
    assert cookie.startswith(SECURE_COOKIE + "=") and "Secure" in cookie


def test_sign_in_issues_a_new_session_id(world: World, app) -> None:
    """Session fixation: an id known before sign-in is worthless after it."""
    client = TestClient(app)
    page = client.get("/login")
    planted = client.cookies.get("fc_session")
    second = client.post(
        "/login", data={"csrf": csrf_of(page.text), "name": "carol", "password": PASSWORDS["carol"]}
    )
    code = world.code(app.state.console, "carol")
    client.post("/login/totp", data={"csrf": csrf_of(second.text), "code": code}, follow_redirects=False)
    after = client.cookies.get("fc_session")
    assert planted and after and planted != after
    attacker = TestClient(app, cookies={"fc_session": planted})
    assert attacker.get("/audit", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/audit").status_code == 200


def test_a_used_totp_code_is_not_accepted_again(world: World, app) -> None:
    ctx = app.state.console
    key_id = world.people["dana"].signer.key_id
    world.clock.t += 30
    code = ctx.credentials.current_code(key_id)
    assert ctx.credentials.check_totp(key_id, code)
    assert not ctx.credentials.check_totp(key_id, code)


def test_brute_force_locks_the_name_out(world: World, app) -> None:
    client = TestClient(app)
    for _ in range(MAX_FAILURES):
        page = client.get("/login")
        response = client.post(
            "/login", data={"csrf": csrf_of(page.text), "name": "mia", "password": "wrong guess 123"}
        )
        assert response.status_code == 401
    page = client.get("/login")
    locked = client.post(
        "/login", data={"csrf": csrf_of(page.text), "name": "mia", "password": PASSWORDS["mia"]}
    )
    assert locked.status_code == 429 and "locked" in locked.text
    for spelling in ("MIA", "m\u0456a"):  # upper case, a Cyrillic i: the same person, the same lock
        page = client.get("/login")
        again = client.post(
            "/login", data={"csrf": csrf_of(page.text), "name": spelling, "password": PASSWORDS["mia"]}
        )
        assert again.status_code == 429, spelling
    for _ in range(MAX_FAILURES):  # names nobody has are throttled the same way
        page = client.get("/login")
        client.post("/login", data={"csrf": csrf_of(page.text), "name": "nobody", "password": "x" * 12})
    page = client.get("/login")
    assert (
        client.post(
            "/login", data={"csrf": csrf_of(page.text), "name": "nobody", "password": "y" * 12}
        ).status_code
        == 429
    )
    world.clock.t += LOCK_SECONDS + 1
    sign_in(world, app, "mia")  # the lock ends
    entries = [e for e in audit_entries(world) if e.action == "console_login" and e.decision == "denied"]
    assert entries and all("wrong guess" not in str(e.to_dict()) for e in entries)


def audit_entries(world: World):
    with PartnerStore.open(world.home) as store:
        return store.audit.query()


def test_idle_sessions_expire() -> None:
    now = [0.0]
    book = SessionBook(idle_seconds=60, clock=lambda: now[0])
    session = book.new()
    now[0] = 59
    assert book.get(session.sid) is session
    now[0] = 59 + 61
    assert book.get(session.sid) is None


def test_a_revoked_key_is_signed_out_at_once(world: World, app) -> None:
    from fedcustomer.data.people_admin import PeopleAdmin

    client = sign_in(world, app, "rick")
    assert client.get("/approvals", follow_redirects=False).status_code == 403
    with PartnerStore.open(world.home) as store:
        PeopleAdmin(store).revoke(world.people["alice"].signer, world.people["rick"].signer.key_id, "left")
    assert client.get("/approvals", follow_redirects=False).headers["location"] == "/login"


def test_settings_without_a_people_registry_are_refused(tmp_path) -> None:
    from fedcustomer.console.context import ConsoleContext
    from fedcustomer.errors import ConfigError

    with pytest.raises(ConfigError, match="not an initialised partner home"):
        ConsoleContext(ConsoleSettings(home=tmp_path))
