"""Run directories as the console shows them: status, rounds, epsilon per partner, refusals.

Reads what a job writes (``config.json``, ``metrics.csv`` after every round,
``summary.json`` at the end; see the README's run directory section) and never anything
else: a run page shows aggregates and the partners' own refusal reasons, no record.
A run without ``summary.json`` is *running* while its ``metrics.csv`` keeps growing.
A folder holding an analytics query's ``result.json`` (``fedcustomer query --out``) is shown
as a DP query: its released estimates with their confidence intervals, the partners that
refused, and the spend; never the ``truth`` a local simulation may have added beside them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DOWNLOADS = ("summary.json", "metrics.csv", "model.pt", "config.json", "anchors.jsonl")
MARKERS = ("config.json", "summary.json", "result.json")
QUERY_FORMAT = "fedcustomer.analytics.result/1"
QUERY_ROW_KEYS = ("group", "statistic", "label", "estimate", "ci_low", "ci_high", "noise_sd")


@dataclass
class Run:
    """What the console knows about one run directory."""

    name: str
    path: Path
    status: str
    rounds_planned: int | None
    rounds_done: int
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, float | None]] = field(default_factory=list)
    query: dict[str, Any] | None = None

    @property
    def metric_columns(self) -> list[str]:
        return sorted({k for r in self.rows for k in r if k.startswith("eval_")})

    @property
    def partners(self) -> list[str]:
        return sorted({k[len("epsilon_") :] for r in self.rows for k in r if k.startswith("epsilon_")})

    def series(self, column: str) -> list[tuple[float, float]]:
        out = []
        for r in self.rows:
            x, y = r.get("round"), r.get(column)
            if x is not None and y is not None and math.isfinite(y):
                out.append((x, y))
        return out

    def refusals(self) -> list[dict[str, Any]]:
        """Every refusal and failure the summary reports (round, partner, kind, reason)."""
        out = []
        for p in self.summary.get("partners") or []:
            for kind in ("refusals", "failures"):
                for item in p.get(kind) or []:
                    out.append(
                        {
                            "partner": p.get("name"),
                            "kind": kind[:-1] if kind == "refusals" else "failure",
                            "round": item.get("round"),
                            "reason": item.get("reason"),
                        }
                    )
        return out

    def downloads(self) -> list[str]:
        return [n for n in DOWNLOADS if (self.path / n).is_file()]

    def progress(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "rounds_done": self.rounds_done,
            "rounds_planned": self.rounds_planned,
        }


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunsFolder:
    """The runs folder the console was given."""

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else Path(root)

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        found = [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and RUN_NAME.fullmatch(p.name) and any((p / f).exists() for f in MARKERS)
        ]
        return sorted(found, key=lambda n: (self.root / n).stat().st_mtime, reverse=True)  # type: ignore[operator]

    def path_of(self, name: str) -> Path:
        """The run's directory; ConfigError for a name that is not a run here (no path tricks)."""
        if self.root is None or not RUN_NAME.fullmatch(name) or name not in self.names():
            raise ConfigError("no such run")
        return self.root / name

    def load(self, name: str, *, rows: bool = True) -> Run:
        path = self.path_of(name)
        summary = _json(path / "summary.json")
        config = _json(path / "config.json")
        table: list[dict[str, float | None]] = []
        metrics = path / "metrics.csv"
        if rows and metrics.exists():
            text = metrics.read_text(encoding="utf-8")
            table = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
        done = len(table) if rows else _count_rows(metrics)
        planned = summary.get("rounds_planned") or config.get("rounds") or config.get("num_rounds")
        status = str(summary.get("status") or "running") if summary else "running"
        if summary:
            done = int(summary.get("rounds_completed") or done)
        query = _query(path / "result.json")
        if query is not None and not summary and not metrics.exists():
            status = "completed"  # a query's result is written once, when it is complete
        planned = planned if isinstance(planned, int) else None
        return Run(name, path, status, planned, done, summary, config, table, query)

    def download(self, name: str, file: str) -> Path:
        if file not in DOWNLOADS:
            raise ConfigError("no such file")
        path = self.path_of(name) / file
        if not path.is_file():
            raise ConfigError("no such file")
        return path


def _query(path: Path) -> dict[str, Any] | None:
    """The released part of an analytics result: estimates with intervals, refusals, spend (no truth)."""
    raw = _json(path)
    if raw.get("format") != QUERY_FORMAT:
        return None
    rows = [{k: r.get(k) for k in QUERY_ROW_KEYS} for r in raw.get("rows") or [] if isinstance(r, dict)]
    return {
        "query_id": raw.get("query_id"),
        "kind": raw.get("kind"),
        "dataset": raw.get("dataset"),
        "confidence": raw.get("confidence"),
        "partners": raw.get("partners") or [],
        "refused": raw.get("refused") or {},
        "spend": raw.get("spend") or {},
        "rows": rows,
    }


def _count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0
