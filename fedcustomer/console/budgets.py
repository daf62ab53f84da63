"""The partner's privacy budget as the compliance officer sees it: every charge, epsilon over time.

Read from the ledger (``ledger.db``), never written. *Recompute* composes the charges
again here, independently of the totals the ledger stored when it charged them: the
Gaussian charges' Renyi DP curves are summed in order (the same RDP accountant the
ledger uses, :mod:`fedcustomer.privacy.dp.accounting`), the other charges added by basic
composition, and each running total is compared with the stored ``epsilon_total``.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps

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

    @property
    def matches(self) -> bool | None:
        if self.recomputed is None:
            return None
        return math.isclose(self.recomputed, self.epsilon_total, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


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
    rdp: np.ndarray | None = None
    approx_eps = approx_delta = 0.0
    for r in _rows(ledger_path, "charges"):
        again = None
        if recompute:
            if r["family"] == "gaussian_rdp":
                steps = GaussianSteps(float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"]))
                curve = accounting.rdp_curve([steps])
                rdp = curve if rdp is None else rdp + curve
            else:
                approx_eps += float(r["epsilon"] or 0.0)
                approx_delta += float(r["delta"] or 0.0)
            if rdp is not None:
                left = float(r["delta_target"]) - approx_delta
                again = (accounting.epsilon_from_rdp(rdp, left) if left > 0 else math.inf) + approx_eps
            else:
                again = approx_eps
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
                again,
            )
        )
    return out


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
