"""A partner's ledger held against its audit log: every paid training round is in both, with the same spend.

Why: the ledger (SQLite) is not hash-chained, so a row rewritten after the fact with totals composed to
match (a lower spend, a SecAgg+ trust the partner never accepted, a row deleted) still recomputes with
the accounting libraries. The audit log is chained, signed at checkpoints and anchored off the node, and
each round a partner pays for is written to it too: its ``fl_round`` entry keeps the noise multiplier
charged and the partner's total after the round. Holding the two against each other catches such an
edit unless the log was rewritten too, which ``audit verify --anchors`` catches.

Only horizontal training rounds (ledger key ``run:<id>:round:<r>``) have such an entry; other releases
are checked by the recomputation alone. A paid row without an entry is reported apart, not as a
disagreement: a node that stopped between paying and logging leaves one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.privacy.audit.records import ACTION_FL_ROUND, DECISION_ALLOWED, AuditEntry
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.ledger import GAUSSIAN, Charge

DEFAULT_TOLERANCE = 1e-9  # relative: both sides hold the same float, written once


@dataclass
class LedgerAuditReport:
    """Rounds checked, what disagrees (ledger key, why) and paid rounds the log has no entry for."""

    checked: int = 0
    disagreements: list[tuple[str, str]] = field(default_factory=list)
    unlogged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds_checked": self.checked,
            "disagreements": [{"charge_key": k, "problem": p} for k, p in self.disagreements],
            "rounds_without_audit_entry": list(self.unlogged),
        }


def log_entries(audit_dir: Path) -> Iterable[AuditEntry]:
    """A home's audit entries to hold its ledger against (none when it has no log yet)."""
    return AuditLog(audit_dir) if audit_dir.exists() else []


def round_key(run_id: str, round_: int) -> str:
    """The ledger key of a horizontal training round (as ``clients.node.round_step`` writes it)."""
    return f"run:{run_id}:round:{round_}"


def check_ledger_against_audit(
    charges: Sequence[Charge], entries: Iterable[AuditEntry], tolerance: float = DEFAULT_TOLERANCE
) -> LedgerAuditReport:
    """Every paid round of ``charges`` against the ``fl_round`` entries of ``entries`` (a partner's log)."""
    rounds = {
        c.charge_key: c
        for c in charges
        if c.family == GAUSSIAN
        and c.run_id is not None
        and c.round is not None
        and c.charge_key == round_key(c.run_id, c.round)
    }
    report = LedgerAuditReport()
    logged: set[str] = set()
    for entry in entries:
        d = entry.details
        if entry.action != ACTION_FL_ROUND or entry.decision != DECISION_ALLOWED or "epsilon_total" not in d:
            continue  # refused rounds and non-private ones charged nothing
        key = round_key(str(d.get("run_id")), int(d.get("round", -1)))
        logged.add(key)
        charge = rounds.get(key)
        if charge is None:
            report.disagreements.append(
                (key, f"audit entry {entry.seq} records a paid round the ledger no longer has")
            )
            continue
        report.checked += 1
        for name, recorded, logged_value in (
            ("total epsilon", charge.epsilon_total, d.get("epsilon_total")),
            ("noise multiplier", charge.noise_multiplier, d.get("noise_multiplier", charge.noise_multiplier)),
        ):
            if not _same(recorded, logged_value, tolerance):
                report.disagreements.append(
                    (key, f"{name} {recorded!r} in the ledger, {logged_value!r} in audit entry {entry.seq}")
                )
    report.unlogged = sorted(k for k in rounds if k not in logged)
    return report


def _same(a: Any, b: Any, tolerance: float) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= tolerance * max(1.0, abs(x), abs(y))
