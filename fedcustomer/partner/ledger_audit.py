"""A partner's ledger held against its audit log: every paid release logged with its spend is in both, alike.

Why: the ledger (SQLite) is not hash-chained, so a row rewritten after the fact with totals composed to
match (a lower spend, a SecAgg+ trust the partner never accepted, a row deleted) still recomputes with
the accounting libraries. The audit log is chained, signed at checkpoints and anchored off the node, and
the releases below are written to it too, with what they cost when they were paid. Holding the two
against each other catches such an edit unless the log was rewritten too, which ``audit verify
--anchors`` catches.

Which releases have such an entry (the entry's fields, against the row's):

- a horizontal training round, ledger key ``run:<id>:round:<r>``: its ``fl_round`` entry keeps the
  noise multiplier charged and the partner's total after the round;
- a split-learning party's round, ``run:<id>:vertical:<role>:round:<r>``: its ``vertical_round``
  entry keeps the same two; the job's label release, ``run:<id>:vertical:<role>:labels``, paid with
  the first round, is in that round's entry as ``epsilon_label`` (the release's own epsilon);
- an analytics query, ``query:<id>``: its ``query`` entry keeps the total after the query (a replay
  logs the total its first answer paid);
- a PSI's DP count or intersection-sum, ``psi-count:<run>:<session>`` / ``psi-sum:<run>:<session>``:
  its ``psi_release`` entry keeps the ledger key, the release's own epsilon and the total after it.

A paid row of these kinds without an entry is reported apart, not as a disagreement: a node that
stopped between paying and logging leaves one, and so did versions that did not log the spend.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.partner.ledger_keys import (
    psi_key,
    query_key,
    round_key,
    vertical_label_key,
    vertical_round_key,
)
from fedcustomer.privacy.audit.records import (
    ACTION_FL_ROUND,
    ACTION_PSI_RELEASE,
    ACTION_QUERY,
    ACTION_VERTICAL_ROUND,
    DECISION_ALLOWED,
    AuditEntry,
)
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.ledger import GAUSSIAN, Charge

__all__ = [  # the key builders are re-exported: callers of the check name keys with them
    "LedgerAuditReport",
    "check_ledger_against_audit",
    "log_entries",
    "logged_kind",
    "logged_releases",
    "psi_key",
    "query_key",
    "round_key",
    "vertical_label_key",
    "vertical_round_key",
]

DEFAULT_TOLERANCE = 1e-9  # relative: both sides hold the same float, written once
LABEL_RELEASE = "label_release"  # the kind of a vertical job's label release (logged in its first round)


@dataclass
class LedgerAuditReport:
    """Paid releases checked (ledger key -> kind), what disagrees (ledger key, why) and paid releases the
    log has no entry for. A release logged more than once (a replayed query) is one release, each of its
    entries checked."""

    checked_keys: dict[str, str] = field(default_factory=dict)
    disagreements: list[tuple[str, str]] = field(default_factory=list)
    unlogged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.disagreements

    @property
    def checked(self) -> int:
        return len(self.checked_keys)

    @property
    def checked_by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(self.checked_keys.values()).items()))

    @property
    def disagreeing(self) -> int:
        """How many releases (ledger keys) disagree, a key the ledger no longer has included."""
        return len({key for key, _ in self.disagreements})

    def summary(self) -> str:
        """One line: how many paid releases were checked, of which kinds, and whether they agree."""
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.checked_by_kind.items()) or "none"
        verdict = "all agree" if self.ok else f"{self.disagreeing} disagree"
        return f"{self.checked} paid release(s) held against their audit entries ({kinds}): {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "releases_checked": self.checked,
            "checked_by_kind": self.checked_by_kind,
            "releases_disagreeing": self.disagreeing,
            "disagreements": [{"charge_key": k, "problem": p} for k, p in self.disagreements],
            "releases_without_audit_entry": list(self.unlogged),
        }


@dataclass(frozen=True)
class LoggedRelease:
    """What one audit entry says a paid release cost: the ledger key and (what, row attribute, logged value)."""

    key: str
    kind: str
    seq: int
    values: tuple[tuple[str, str, Any], ...]


def log_entries(audit_dir: Path) -> Iterable[AuditEntry]:
    """A home's audit entries to hold its ledger against (none when it has no log yet)."""
    return AuditLog(audit_dir) if audit_dir.exists() else []


def logged_releases(entry: AuditEntry) -> list[LoggedRelease]:
    """The paid releases ``entry`` records with their spend (none for refusals, reads and other actions)."""
    d = entry.details
    if entry.decision != DECISION_ALLOWED or "epsilon_total" not in d:
        return []  # refused releases charged nothing; entries of versions that did not log the spend
    total = ("total epsilon", "epsilon_total", d["epsilon_total"])
    sigma = (
        (("noise multiplier", "noise_multiplier", d["noise_multiplier"]),) if "noise_multiplier" in d else ()
    )
    seq = entry.seq
    if entry.action == ACTION_FL_ROUND:
        return [
            LoggedRelease(
                round_key(str(d.get("run_id")), _int(d.get("round"))), ACTION_FL_ROUND, seq, (total, *sigma)
            )
        ]
    if entry.action == ACTION_VERTICAL_ROUND and not d.get("refused"):
        run_id, role = str(d.get("run_id")), str(d.get("vertical_role"))
        out = [
            LoggedRelease(
                vertical_round_key(run_id, role, _int(d.get("round"))),
                ACTION_VERTICAL_ROUND,
                seq,
                (total, *sigma),
            )
        ]
        if "epsilon_label" in d:
            label = ("label release epsilon", "epsilon", d["epsilon_label"])
            out.append(LoggedRelease(vertical_label_key(run_id, role), LABEL_RELEASE, seq, (label,)))
        return out
    if entry.action == ACTION_QUERY and isinstance(d.get("query_id"), str):
        return [LoggedRelease(query_key(d["query_id"]), ACTION_QUERY, seq, (total,))]
    if entry.action == ACTION_PSI_RELEASE and isinstance(d.get("charge_key"), str):
        own = (("release epsilon", "epsilon", d["epsilon"]),) if d.get("epsilon") is not None else ()
        return [LoggedRelease(d["charge_key"], ACTION_PSI_RELEASE, seq, (total, *own))]
    return []


def logged_kind(charge: Charge) -> str | None:
    """The kind of audit entry that records ``charge`` with its spend (None: checked by recomputation alone)."""
    key, run_id = charge.charge_key, charge.run_id
    if run_id is not None:
        if charge.family == GAUSSIAN and charge.round is not None and key == round_key(run_id, charge.round):
            return ACTION_FL_ROUND
        vertical = re.fullmatch(rf"run:{re.escape(run_id)}:vertical:[^:]+:(labels|round:\d+)", key)
        if vertical is not None:  # the label release may be any mechanism (e.g. randomised response)
            return LABEL_RELEASE if vertical.group(1) == "labels" else ACTION_VERTICAL_ROUND
    if charge.query_id is not None and key == query_key(charge.query_id):
        return ACTION_QUERY
    if (
        run_id is not None
        and charge.query_id is not None
        and key
        in (
            psi_key("count", run_id, charge.query_id),
            psi_key("sum", run_id, charge.query_id),
        )
    ):
        return ACTION_PSI_RELEASE
    return None


def check_ledger_against_audit(
    charges: Sequence[Charge], entries: Iterable[AuditEntry], tolerance: float = DEFAULT_TOLERANCE
) -> LedgerAuditReport:
    """Every paid release of ``charges`` that is logged with its spend against the entries of ``entries``."""
    covered = {c.charge_key: c for c in charges if logged_kind(c) is not None}
    report = LedgerAuditReport()
    logged: set[str] = set()
    for entry in entries:
        for release in logged_releases(entry):
            logged.add(release.key)
            report.checked_keys[release.key] = release.kind
            charge = covered.get(release.key)
            if charge is None:
                report.disagreements.append(
                    (
                        release.key,
                        f"audit entry {release.seq} records a paid release the ledger no longer has",
                    )
                )
                continue
            for what, attribute, logged_value in release.values:
                recorded = getattr(charge, attribute)
                if not _same(recorded, logged_value, tolerance):
                    report.disagreements.append(
                        (
                            release.key,
                            f"{what} {recorded!r} in the ledger, {logged_value!r} in audit entry {release.seq}",
                        )
                    )
    report.unlogged = sorted(k for k in covered if k not in logged)
    return report


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _same(a: Any, b: Any, tolerance: float) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= tolerance * max(1.0, abs(x), abs(y))
