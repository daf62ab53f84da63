"""The coordinator's record of a vertical job's trained rounds, so a restarted coordinator resumes.

Only what the coordinator already knows is kept (per-round metrics, epsilon reports, timings);
the parties keep their own state and charge each round once, so resuming pays nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import IntegrityError


@dataclass
class VerticalRound:
    round: int
    status: str  # "trained" | "refused"
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    epsilon_target: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    wall_time_s: float = 0.0
    refused_by: str | None = None  # the first party that refused, and its reason
    reason: str | None = None
    refusals: dict[str, str] = field(default_factory=dict)  # every party that refused this round: its reason


@dataclass(frozen=True)
class RoundCheckpoint:
    """The trained rounds of one drive, in one JSON file (rewritten atomically after each round)."""

    path: Path

    def load(self) -> list[VerticalRound]:
        if not self.path.exists():
            return []
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))["rounds"]
            rounds = [VerticalRound(**row) for row in rows]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{self.path}: not a vertical round checkpoint ({exc}); remove it") from None
        if [r.round for r in rounds] != list(range(1, len(rounds) + 1)) or any(
            r.status != "trained" for r in rounds
        ):
            raise IntegrityError(f"{self.path}: rounds out of order or not trained; remove it to start over")
        return rounds

    def save(self, rounds: list[VerticalRound]) -> None:
        trained = [asdict(r) for r in rounds if r.status == "trained"]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"rounds": trained}, indent=1) + "\n")
