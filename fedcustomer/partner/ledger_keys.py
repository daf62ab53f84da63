"""The ledger key of each kind of release, in one place: the code that charges it and the check that
holds the ledger against the audit log (``partner.ledger_audit``) must spell it the same way.

A key is the ledger's idempotency key (a release is paid once per key) and names the release in
``budget show`` and ``budget verify``.
"""

from __future__ import annotations


def round_key(run_id: str, round_: int) -> str:
    """A horizontal training round."""
    return f"run:{run_id}:round:{round_}"


def vertical_round_key(run_id: str, role: str, round_: int) -> str:
    """A split-learning party's round."""
    return f"run:{run_id}:vertical:{role}:round:{round_}"


def vertical_label_key(run_id: str, role: str) -> str:
    """A split-learning job's label release (paid with the party's first round)."""
    return f"run:{run_id}:vertical:{role}:labels"


def query_key(query_id: str) -> str:
    """An analytics query."""
    return f"query:{query_id}"


def psi_key(kind: str, run_id: str, session: str) -> str:
    """A PSI session's DP release: ``kind`` ``count`` (count-only PSI) or ``sum`` (intersection-sum)."""
    return f"psi-{kind}:{run_id}:{session}"
