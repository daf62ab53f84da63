"""OIDC ID tokens as a way to sign in, where the organisation has an identity provider.

The token's signature is checked against the provider's JWKS (a URL, fetched and cached
by PyJWT's ``PyJWKClient``, or a local JSON file), and so are its issuer, audience,
expiry and issue time (PyJWT). Only asymmetric algorithms are accepted. The token names
the person by one claim (``preferred_username`` unless configured otherwise), which
must equal the name of an active person in the people registry: the role then comes
from the registry, never from the token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from fedcustomer.errors import AccessDenied, ConfigError

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class OidcConfig:
    """Where ID tokens come from and for whom they must be."""

    issuer: str
    audience: str
    jwks: str  # an https URL, or a path to a JWKS JSON file
    claim: str = "preferred_username"

    def __post_init__(self) -> None:
        if not (self.issuer and self.audience and self.jwks):
            raise ConfigError("OIDC needs an issuer, an audience and a JWKS (URL or file)")


class OidcVerifier:
    """Check one ID token (see the module docstring)."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._client: jwt.PyJWKClient | None = None
        self._local: jwt.PyJWKSet | None = None
        if config.jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(config.jwks, cache_keys=True, lifespan=300)
        else:
            try:
                self._local = jwt.PyJWKSet.from_dict(
                    json.loads(Path(config.jwks).read_text(encoding="utf-8"))
                )
            except (OSError, ValueError, jwt.PyJWKSetError) as exc:
                raise ConfigError(f"OIDC JWKS file {config.jwks} cannot be read: {exc}") from None

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._local is not None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._local.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise AccessDenied("the ID token is signed with a key that is not in the provider's JWKS")

    def person_name(self, token: str) -> str:
        """The name the verified token gives (AccessDenied for any failed check)."""
        try:
            claims = jwt.decode(
                token.strip(),
                self._key(token.strip()),
                algorithms=ALGORITHMS,
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except AccessDenied:
            raise
        except jwt.PyJWTError as exc:
            raise AccessDenied(f"the ID token was refused: {exc}") from None
        name = claims.get(self.config.claim)
        if not isinstance(name, str) or not name:
            raise AccessDenied(f"the ID token has no '{self.config.claim}' claim naming the person")
        return name
