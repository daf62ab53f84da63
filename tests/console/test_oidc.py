"""OIDC ID tokens: checked against a local JWKS made here; the role comes from the registry."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from fedcustomer.console.app import create_app
from fedcustomer.console.context import ConsoleSettings
from fedcustomer.console.oidc import OidcConfig, OidcVerifier
from fedcustomer.errors import AccessDenied, ConfigError
from tests.console.conftest import World, csrf_of

ISSUER, AUDIENCE = "https://idp.example.test", "fedcustomer-console"


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def token(key, **claims) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "preferred_username": "carol",
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def test_a_valid_token_names_the_person_and_bad_ones_are_refused(idp) -> None:
    key, jwks = idp
    verifier = OidcVerifier(OidcConfig(ISSUER, AUDIENCE, str(jwks)))
    assert verifier.person_name(token(key)) == "carol"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    bad = {
        "wrong issuer": token(key, iss="https://evil.test"),
        "wrong audience": token(key, aud="someone-else"),
        "expired": token(key, iat=now - 7200, exp=now - 3600),
        "forged": token(other),
        "no name": token(key, preferred_username=None),
        "unsigned": jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, "iat": now}, "", algorithm="none"
        ),
    }
    for why, text in bad.items():
        with pytest.raises(AccessDenied):
            verifier.person_name(text)
            pytest.fail(why)
    with pytest.raises(ConfigError):
        OidcVerifier(OidcConfig(ISSUER, AUDIENCE, str(jwks.parent / "missing.json")))


def test_oidc_sign_in_takes_the_role_from_the_registry(world: World, idp) -> None:
    key, jwks = idp
    app = create_app(
        ConsoleSettings(home=world.home.root, runs=world.runs, oidc=OidcConfig(ISSUER, AUDIENCE, str(jwks)))
    )
    client = TestClient(app)
    page = client.get("/login")
    assert 'id="oidc-form"' in page.text
    claims = {"role": "partner_admin", "roles": ["partner_admin"]}  # ignored: the registry decides
    done = client.post(
        "/login/oidc",
        data={"csrf": csrf_of(page.text), "id_token": token(key, **claims)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert "carol (compliance_officer)" in client.get("/audit").text
    assert client.get("/people").status_code == 403
    stranger = TestClient(app)
    page = stranger.get("/login")
    refused = stranger.post(
        "/login/oidc",
        data={"state": csrf_of(page.text), "id_token": token(key, preferred_username="mallory")},
    )
    assert refused.status_code == 401
    no_csrf = stranger.post("/login/oidc", data={"id_token": token(key)})
    assert no_csrf.status_code == 403
