"""Policy edits in the audit log.

The access policy is a file the partner admin edits (``policy_file`` in
``partner.toml``), so the node cannot see who edits it, but it can see *that* the
policy in force changed: the store keeps a fingerprint of the effective grants (the
parsed policy lines, comments and spacing ignored) and, when a store is opened under a
different policy, writes a ``policy_change`` entry naming the lines added and removed.
The first policy a store sees is recorded without an entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fedcustomer.privacy.access.policy import AccessPolicy

_MAX_LISTED = 40


def policy_lines(policy: AccessPolicy) -> list[str]:
    """The effective grants, one normalised line each, in order."""
    return [str(line) for line in policy.lines]


def fingerprint(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def policy_change(previous: list[str] | None, policy: AccessPolicy) -> tuple[str, dict[str, Any] | None]:
    """(stored value for the new policy, audit details if it differs from ``previous``)."""
    lines = policy_lines(policy)
    stored = json.dumps(lines)
    if previous is None or previous == lines:
        return stored, None
    added = [ln for ln in lines if ln not in previous]
    removed = [ln for ln in previous if ln not in lines]
    details: dict[str, Any] = {
        "source": policy.source,
        "policy_sha256": fingerprint(lines),
        "previous_sha256": fingerprint(previous),
        "added": added[:_MAX_LISTED],
        "removed": removed[:_MAX_LISTED],
    }
    if len(added) > _MAX_LISTED or len(removed) > _MAX_LISTED:
        details["counts"] = {"added": len(added), "removed": len(removed)}
    return stored, details
