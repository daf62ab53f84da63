"""The partner's privacy budget as the compliance officer sees it: every charge, epsilon over time.

Read from the ledger (``ledger.db``), never written. *Recompute* composes the charges
again here, independently of the totals the ledger stored when it charged them, with the
accounting libraries alone (:mod:`fedcustomer.privacy.dp.recompute`, as ``budget verify``):
each row with the accountant it names (Opacus RDP, or dp-accounting's PLD), the other charges
added by basic composition, and each running total is compared with the stored ``epsilon_total``
(a distributed-DP row's two guarantees too, and that its charged noise and clip event are
the ones its trust in SecAgg+ allows).
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TOLERANCE = 1e-6


@dataclass(frozen=True)
class ChargeRow:
    """One ledger charge, with the running total recomputed when asked."""

    seq: int
    time: str
    dataset: str
    family: str
    mechanism: str
    what: str
    epsilon: float | None
    epsilon_total: float
    epsilon_target: float
    recomputed: float | None = None
    verified: bool | None = None  # the library recomputation's verdict on every figure the row records
    # what does not agree among the row's own parameters (recompute.row_problems)
    problems: tuple[str, ...] = ()

    @property
    def matches(self) -> bool | None:
        if self.recomputed is None:
            return None
        close = math.isclose(self.recomputed, self.epsilon_total, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        return close and self.verified is not False


def _rows(ledger_path: Path, table: str) -> list[dict[str, Any]]:
    if not ledger_path.exists():
        return []
    uri = f"file:{ledger_path}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY seq")]
        except sqlite3.OperationalError:  # a ledger created before any charge has no tables yet
            return []


def charges(ledger_path: Path, *, recompute: bool = False) -> list[ChargeRow]:
    """Every charge of the partner (all datasets) in ledger order."""
    out: list[ChargeRow] = []
    rows = _rows(ledger_path, "charges")
    checks = {c.seq: c for c in _recompute(rows)} if recompute else {}
    for r in rows:
        check = checks.get(int(r["seq"]))
        what = r["query_id"] or (f"{r['run_id']} round {r['round']}" if r["run_id"] else r["charge_key"])
        out.append(
            ChargeRow(
                int(r["seq"]),
                str(r["time"]),
                str(r["dataset"]),
                str(r["family"]),
                str(r["mechanism"]),
                str(what),
                r["epsilon"],
                float(r["epsilon_total"]),
                float(r["epsilon_target"]),
                None if check is None else check.recomputed_total,
                None if check is None else check.ok,
                () if check is None else check.problems,
            )
        )
    return out


def _recompute(rows: list[dict[str, Any]]) -> list[Any]:
    """The library recomputation of every row."""
    from fedcustomer.privacy.dp.recompute import recompute

    return recompute(_charges(rows), TOLERANCE)


def _charges(rows: list[dict[str, Any]]) -> list[Any]:
    """Ledger rows as charges (a ledger written before a column existed has its default)."""
    from fedcustomer.privacy.dp.ledger import Charge

    names = set(Charge.__dataclass_fields__) - {"already_paid"}
    return [
        Charge(
            **{k: v for k, v in r.items() if k in names} | {"details": json.loads(r.get("details") or "{}")}
        )
        for r in rows
    ]


def against_audit(ledger_path: Path, audit_dir: Path) -> Any:
    """Every paid release logged with its spend held against its audit entry (``partner.ledger_audit``):
    a ledger rewritten to agree with itself still recomputes, the chained log it was written beside does not."""
    from fedcustomer.partner.ledger_audit import check_ledger_against_audit, log_entries

    return check_ledger_against_audit(_charges(_rows(ledger_path, "charges")), log_entries(audit_dir))


def refusals(ledger_path: Path) -> list[dict[str, Any]]:
    return _rows(ledger_path, "refusals")


def over_time(rows: list[ChargeRow]) -> list[tuple[float, float]]:
    """(POSIX time, running epsilon) per charge, for a chart of epsilon over time."""
    out = []
    for row in rows:
        try:
            at = datetime.fromisoformat(row.time)
        except ValueError:
            continue
        out.append(((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp(), row.epsilon_total))
    return out


def time_label(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%m-%d %H:%M")


def by_dataset(rows: list[ChargeRow]) -> dict[str, list[ChargeRow]]:
    out: dict[str, list[ChargeRow]] = {}
    for row in rows:
        out.setdefault(row.dataset, []).append(row)
    return out
