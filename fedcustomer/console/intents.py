"""What the console asks a person to sign, and the signed answer they paste back.

The browser never holds a person's private key, so every state change made in the
console (an approval, a rejection, console credentials for a colleague) and the
key-based sign-in are requests the person signs on their own machine with
``fedcustomer console sign --identity FILE INTENT`` (``sign-challenge`` for the sign-in).
An *intent* is the unsigned part of a :class:`~fedcustomer.privacy.access.requests.Request`
(partner, action, dataset, fields, purpose, extra) as base64url JSON; ``sign`` adds the
signer's key id, the time and a fresh nonce, signs it, and prints the signed request as
one base64url token. The console hands the token to the store unchanged, which checks
it like any signed governance request (registry, signature, time, nonce, and that it
asks exactly what is being done), so the audit entry holds the person's own signature.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.access.person_keys import Signer
from fedcustomer.privacy.access.requests import SignedRequest, sign_request

INTENT_KEYS = ("partner", "action", "dataset", "fields", "purpose", "extra")
MAX_TOKEN = 16_384


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    text = "".join(text.split())
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_intent(
    partner: str,
    action: str,
    *,
    dataset: str | None = None,
    fields: tuple[str, ...] = (),
    purpose: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The intent text the console shows beside the ``sign`` command."""
    body = {
        "partner": partner,
        "action": action,
        "dataset": dataset,
        "fields": list(fields),
        "purpose": purpose,
        "extra": dict(extra or {}),
    }
    return _b64(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def read_intent(text: str) -> dict[str, Any]:
    """Decode an intent; ConfigError if it is not one."""
    try:
        body = json.loads(_unb64(text))
    except (ValueError, binascii.Error):
        raise ConfigError("that is not a console intent (copy the whole text the console shows)") from None
    if not isinstance(body, dict) or set(body) != set(INTENT_KEYS) or not isinstance(body["extra"], dict):
        raise ConfigError("that is not a console intent (copy the whole text the console shows)")
    return body


def sign_intent(signer: Signer, intent: str) -> str:
    """Sign what ``intent`` asks, now, with a fresh nonce; the token to paste into the console."""
    body = read_intent(intent)
    signed = sign_request(
        signer,
        partner=str(body["partner"]),
        action=str(body["action"]),
        dataset=body["dataset"],
        fields=[str(f) for f in body["fields"]],
        purpose=body["purpose"],
        extra=body["extra"],
    )
    return _b64(json.dumps(signed.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8"))


def read_signed(token: str, *, key_id: str | None = None) -> SignedRequest:
    """The signed request in a pasted token (AccessDenied if malformed or by another key)."""
    if not token or len(token) > MAX_TOKEN:
        raise AccessDenied("paste the token printed by `fedcustomer console sign`")
    try:
        raw = json.loads(_unb64(token))
    except (ValueError, binascii.Error):
        raise AccessDenied("the pasted token is not a signed request; paste the whole token") from None
    if not isinstance(raw, dict):
        raise AccessDenied("the pasted token is not a signed request; paste the whole token")
    signed = SignedRequest.from_dict(raw)
    if key_id is not None and signed.request.key_id != key_id:
        raise AccessDenied("the token was signed with another person's key than the one signed in")
    return signed
