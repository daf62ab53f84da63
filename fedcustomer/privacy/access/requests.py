"""Signed governance requests, and the check that turns one into an authenticated actor.

Every governance action (read, ingest, approve, keys, erase, people, audit reads) is a
:class:`Request`: the partner, the action, the dataset, the fields, the purpose, the
time, a fresh random nonce, the signing key's id and any action-specific values (an
approval's request digest, a key version). The acting person signs its canonical bytes
with their identity key. :class:`Authenticator` checks, before the policy decides:

- what is signed is what is being done (action, dataset, fields, purpose, values);
- the key is in the partner's people registry, not revoked, not expired;
- the signature verifies;
- the time is within the allowed clock skew and the nonce was never used before.

The actor it returns takes its name and role from the registry, never from the caller,
and carries the signed request so the audit entry can hold it and ``audit verify`` can
check it again later.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError
from fedcustomer.privacy.access.people import PeopleRegistry
from fedcustomer.privacy.access.person_keys import Signer, verify_signature
from fedcustomer.privacy.access.policy import Actor, parse_utc, utc_now

DEFAULT_MAX_SKEW = timedelta(minutes=5)
_DOMAIN = b"fedcustomer-request-v1\n"
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_copy(value: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON-able mapping; a value JSON cannot hold is refused here, not at signing."""
    try:
        copied: dict[str, Any] = json.loads(_ENCODER.encode(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a request's details must be plain JSON values ({exc})") from None
    return copied


@dataclass(frozen=True)
class Request:
    """What a person asks to do, in the form they sign."""

    partner: str
    action: str
    key_id: str
    time: str
    nonce: str
    dataset: str | None = None
    fields: tuple[str, ...] = ()
    purpose: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The request owns its own copy of ``extra``: a caller that later changes the dict it
        # passed in (adding a result to its audit details, say) must not change the signed bytes.
        object.__setattr__(self, "extra", _json_copy(self.extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "action": self.action,
            "key_id": self.key_id,
            "time": self.time,
            "nonce": self.nonce,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "purpose": self.purpose,
            "extra": _json_copy(self.extra),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Request:
        try:
            return cls(
                partner=str(raw["partner"]),
                action=str(raw["action"]),
                key_id=str(raw["key_id"]),
                time=str(raw["time"]),
                nonce=str(raw["nonce"]),
                dataset=None if raw.get("dataset") is None else str(raw["dataset"]),
                fields=tuple(str(f) for f in raw.get("fields") or ()),
                purpose=None if raw.get("purpose") is None else str(raw["purpose"]),
                extra=dict(raw.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, ConfigError):
            raise AccessDenied("a signed request is malformed (missing or wrong fields)") from None

    def canonical(self) -> bytes:
        """The signed bytes: a domain tag and canonical JSON (sorted keys, no spaces, UTF-8)."""
        return _DOMAIN + _ENCODER.encode(self.to_dict()).encode("utf-8")

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


@dataclass(frozen=True)
class SignedRequest:
    """A request and its Ed25519 signature by the key named in it."""

    request: Request
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.to_dict(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SignedRequest:
        try:
            signature = base64.b64decode(str(raw["signature"]), validate=True)
            request = raw["request"]
        except (KeyError, TypeError, ValueError):
            raise AccessDenied("a signed request is malformed (no signature)") from None
        return cls(Request.from_dict(request), signature)


def sign_request(
    signer: Signer,
    *,
    partner: str,
    action: str,
    dataset: str | None = None,
    fields: Sequence[str] = (),
    purpose: str | None = None,
    extra: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> SignedRequest:
    """Build and sign a request with a fresh nonce from the OS random source."""
    request = Request(
        partner=partner,
        action=action,
        key_id=signer.key_id,
        time=utc_now(now).isoformat(timespec="seconds"),
        nonce=secrets.token_hex(16),
        dataset=dataset,
        fields=tuple(fields),
        purpose=purpose,
        extra=dict(extra or {}),
    )
    return SignedRequest(request, signer.sign(request.canonical()))


@dataclass(frozen=True)
class AuthenticatedActor(Actor):
    """An actor whose name and role come from the registry, proven by a signed request."""

    key_id: str = ""
    kind: str = "person"
    signed: SignedRequest | None = None

    def audit_details(self) -> dict[str, Any]:
        """What the audit entry keeps so ``audit verify`` can check the signature again."""
        assert self.signed is not None
        return {"key_id": self.key_id, **self.signed.to_dict()}


class NonceBook:
    """Nonces already used, kept long enough to refuse every replay within the skew window.

    One connection per book, in WAL mode, so recording a nonce costs one synchronous
    append rather than a journal round trip per request; :meth:`close` releases it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._con: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def consume(self, nonce: str, key_id: str, at: datetime, keep: timedelta) -> bool:
        """Record ``nonce``; False if it was seen before (a replay)."""
        try:
            if self._con is None:
                self._con = connect(self.path)
                self._con.execute("PRAGMA journal_mode=WAL")
            with transaction(self._con):
                return self._consume(self._con, nonce, key_id, at, keep)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise IntegrityError(f"nonce database {self.path} cannot be used: {exc}") from None

    @staticmethod
    def _consume(con: sqlite3.Connection, nonce: str, key_id: str, at: datetime, keep: timedelta) -> bool:
        con.execute(
            "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, key_id TEXT NOT NULL, seen TEXT)"
        )
        con.execute("DELETE FROM nonces WHERE seen < ?", ((at - keep).isoformat(timespec="seconds"),))
        try:
            con.execute(
                "INSERT INTO nonces VALUES (?, ?, ?)", (nonce, key_id, at.isoformat(timespec="seconds"))
            )
        except sqlite3.IntegrityError:
            return False
        return True


class Authenticator:
    """Check a signed request against the registry (see the module docstring)."""

    def __init__(
        self,
        registry: PeopleRegistry,
        nonces: NonceBook,
        partner: str,
        *,
        max_skew: timedelta = DEFAULT_MAX_SKEW,
    ) -> None:
        self.registry = registry
        self.nonces = nonces
        self.partner = partner
        self.max_skew = max_skew

    def verify(
        self,
        signed: SignedRequest,
        *,
        action: str,
        dataset: str | None = None,
        fields: Sequence[str] = (),
        purpose: str | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> AuthenticatedActor:
        """The authenticated actor, or AccessDenied saying exactly what failed."""
        request = signed.request
        expected = Request(
            partner=self.partner,
            action=action,
            key_id=request.key_id,
            time=request.time,
            nonce=request.nonce,
            dataset=dataset,
            fields=tuple(fields),
            purpose=purpose,
            extra=dict(extra or {}),
        )
        if request.to_dict() != expected.to_dict():
            differs = [k for k, v in expected.to_dict().items() if request.to_dict().get(k) != v]
            raise AccessDenied(
                f"the signed request does not match what is being done (differs in: {', '.join(differs)})"
            )
        at = utc_now(now)
        person = self.registry.active(request.key_id, at)
        if not verify_signature(person.public_key, signed.signature, request.canonical()):
            raise AccessDenied(f"the request's signature does not verify with key {person.key_id}")
        try:
            when = parse_utc(request.time)
        except (ValueError, TypeError):
            raise AccessDenied("the signed request's time is not an ISO 8601 time") from None
        if abs(at - when) > self.max_skew:
            raise AccessDenied(
                f"the signed request is stale or from the future (signed at {request.time}; allowed clock skew "
                f"{int(self.max_skew.total_seconds())} s): sign a new one"
            )
        if len(request.nonce) < 32 or not self.nonces.consume(
            request.nonce, person.key_id, at, 2 * self.max_skew
        ):
            raise AccessDenied("the signed request was already used (replayed nonce): sign a new one")
        return AuthenticatedActor(
            person.name, person.role, key_id=person.key_id, kind=person.kind, signed=signed
        )
