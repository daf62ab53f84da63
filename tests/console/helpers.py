"""Signing in through the console's HTTP interface (TestClient), as each person."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.console.conftest import PASSWORDS, World, csrf_of


def sign_in(world: World, app: Any, name: str) -> TestClient:
    """A client signed in as ``name`` with password and TOTP."""
    client = TestClient(app)
    page = client.get("/login")
    second = client.post(
        "/login", data={"csrf": csrf_of(page.text), "name": name, "password": PASSWORDS[name]}
    )
    assert second.status_code == 200, second.text
    code = world.code(app.state.console, name)
    done = client.post(
        "/login/totp", data={"csrf": csrf_of(second.text), "code": code}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    return client


def csrf(client: TestClient, path: str = "/") -> str:
    return csrf_of(client.get(path).text)
