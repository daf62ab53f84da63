"""Checks on a new entry before it is logged: names, vocabulary, JSON-safe details, no card numbers.

Entries carry pseudonyms, never a customer's core-tier value; a card number in
``pseudonyms`` or ``reason`` is refused without echoing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fedcustomer.errors import DataError
from fedcustomer.privacy.audit.records import ACTION_READ, DECISIONS, canonical_json, is_int

_MAX_DETAILS_BYTES = 8192
_ACTION_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_CARD_RE = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _looks_like_card_number(text: str) -> bool:
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return True
    return False


def _need_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"audit entry field {name!r} must be a non-empty string, got {type(value).__name__}")
    return value


def _opt_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"audit entry field {name!r} must be a string or None, got {type(value).__name__}")
    return value


def _str_list(name: str, values: Any) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise DataError(f"audit entry field {name!r} must be a sequence of strings, not a single string")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise DataError(f"audit entry field {name!r}[{i}] must be a string, got {type(v).__name__}")
    return out


def entry_record(
    *,
    actor: str,
    role: str,
    action: str,
    decision: str,
    dataset: str | None,
    fields: Sequence[str],
    tier: str | None,
    purpose: str | None,
    approvals: Sequence[str],
    row_count: int | None,
    reason: str | None,
    pseudonyms: Sequence[str],
    details: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validated entry content (without seq, time and hashes); raises DataError."""
    rec: dict[str, Any] = {
        "actor": _need_name("actor", actor),
        "role": _need_name("role", role),
        "action": _need_name("action", action),
        "decision": _need_name("decision", decision),
        "dataset": _opt_str("dataset", dataset),
        "fields": _str_list("fields", fields),
        "tier": _opt_str("tier", tier),
        "purpose": _opt_str("purpose", purpose),
        "approvals": _str_list("approvals", approvals),
        "row_count": row_count,
        "reason": _opt_str("reason", reason),
        "pseudonyms": _str_list("pseudonyms", pseudonyms),
    }
    if not _ACTION_RE.fullmatch(action):
        raise DataError(f"audit action {action!r} must be a lower-case identifier such as {ACTION_READ!r}")
    if decision not in DECISIONS:
        raise DataError(f"audit decision {decision!r} must be one of {sorted(DECISIONS)}")
    if row_count is not None and (not is_int(row_count) or row_count < 0):
        raise DataError(f"audit row_count must be a non-negative integer or None, got {row_count!r}")
    for i, p in enumerate(rec["pseudonyms"]):
        if not p or any(c.isspace() for c in p) or _looks_like_card_number(p):
            raise DataError(
                f"audit pseudonyms[{i}] is not a pseudonym (empty, contains spaces, or looks like a card "
                "number); log the customer's pseudonym, never a core-tier value"
            )
    if reason is not None and _looks_like_card_number(reason):
        raise DataError("audit reason looks like it contains a card number; refer to customers by pseudonym")
    if details is None:
        rec["details"] = {}
    else:
        if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
            raise DataError("audit details must be a mapping with string keys")
        try:
            encoded = canonical_json(dict(details))
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"audit details must be JSON-safe (str, int, float, bool, None, lists, dicts): {exc}"
            ) from None
        if len(encoded) > _MAX_DETAILS_BYTES:
            raise DataError(
                f"audit details are {len(encoded)} bytes; keep them under {_MAX_DETAILS_BYTES} (ids, counts)"
            )
        rec["details"] = json.loads(encoded)  # a private, JSON-normalised copy
    return rec
