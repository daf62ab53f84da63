"""A signed request is a value: what the signer passed in cannot change what was signed."""

from __future__ import annotations

import math

import pytest

from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.access.person_keys import KeySigner, verify_signature
from fedcustomer.privacy.access.requests import SignedRequest, sign_request


def _verifies(signer: KeySigner, signed: SignedRequest) -> bool:
    again = SignedRequest.from_dict(signed.to_dict())  # as `audit verify` reads it back from the log
    return verify_signature(signer.public_key, again.signature, again.request.canonical())


def test_changing_the_callers_details_after_signing_leaves_the_signed_request_intact() -> None:
    signer = KeySigner.generate()
    details = {"export": {"format": "jsonl"}, "verified": True}
    signed = sign_request(signer, partner="bank", action="audit_read", extra={"details": details})
    details["export"]["count"] = 4  # a caller recording a result in the dict it passed in
    details["verified"] = False
    assert signed.request.extra == {"details": {"export": {"format": "jsonl"}, "verified": True}}
    assert _verifies(signer, signed)
    signed.to_dict()["request"]["extra"]["details"]["verified"] = "edited"  # nor a copy handed out
    assert _verifies(signer, signed)


def test_details_json_cannot_hold_are_refused_when_signing_and_when_read_back() -> None:
    signer = KeySigner.generate()
    with pytest.raises(ConfigError, match="plain JSON"):
        sign_request(signer, partner="bank", action="read", extra={"when": object()})
    raw = sign_request(signer, partner="bank", action="read").to_dict()
    raw["request"]["extra"] = {"x": math.nan}
    with pytest.raises(AccessDenied, match="malformed"):
        SignedRequest.from_dict(raw)
