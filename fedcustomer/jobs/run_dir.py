"""The run directory a job leaves behind, written by one writer for every kind of job.

``config.json`` (the job as asked for), ``summary.json`` (the stable, machine-readable
result), ``metrics.csv`` (one row per round), ``anchors.jsonl`` (the partners' audit
anchors), ``model.pt`` and checkpoints. Every file is
written whole or not at all, so a crash mid-run leaves the last complete version a reader
or a ``--resume`` can use.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_bytes, atomic_write_text
from fedcustomer.jobs.config import JobBase

# What a job writes into its run directory (simulated homes and their placements stay where they are:
# a later job on the same OUT keeps using them, budgets included).
RUN_OUTPUTS = (
    "config.json",
    "summary.json",
    "metrics.csv",
    "model.pt",
    "feature_spec.json",
    "feature_specs.json",
    "anchors.jsonl",
    "plots",
    "checkpoints",
    "privacy_audit.json",
    "privacy_audit.png",
)
PREVIOUS = "previous"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RunDir:
    """One job's output folder; created on first use."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def set_aside_previous(self, run_id: str) -> Path | None:
        """Move another run's outputs to ``previous/<its run id>/``; where they went, or None.

        Why: a new job pointed at an old run's directory would otherwise overwrite its model,
        summary and anchors (the compliance officer's evidence) and leave its later checkpoints
        beside the new ones, where a ``--resume`` would pick them up. The same run id (a resume)
        is left alone.
        """
        try:
            old = json.loads(self.path("config.json").read_text(encoding="utf-8")).get("run_id")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            old = None
        if old == run_id:
            return None
        name = str(old) if isinstance(old, str) and _SAFE_NAME.match(old) else "unnamed-run"
        target = self.root / PREVIOUS / name
        n = 1
        while target.exists():
            n += 1
            target = self.root / PREVIOUS / f"{name}-{n}"
        target.mkdir(parents=True)
        for item in RUN_OUTPUTS:
            if self.path(item).exists():
                os.replace(self.path(item), target / item)
        return target

    def write_config(self, job: JobBase) -> Path:
        """``config.json``: every option of the job, keys sorted (a resume reads it back)."""
        return self.write_json("config.json", job.to_dict(), sort_keys=True)

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """``summary.json`` in the order the summary was built (its schema is in the README)."""
        return self.write_json("summary.json", summary)

    def write_json(self, name: str, data: Any, *, sort_keys: bool = False) -> Path:
        return atomic_write_text(self.path(name), json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")

    def write_jsonl(self, name: str, rows: Sequence[Any]) -> Path:
        """One compact JSON value per line (e.g. ``anchors.jsonl``), rewritten whole."""
        return atomic_write_text(self.path(name), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def write_metrics_csv(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """``metrics.csv``: the union of the rows' columns, in first-seen order."""
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns or ["round"])
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write_text(self.path("metrics.csv"), buffer.getvalue())

    def write_model(self, state_dict: Mapping[str, Any]) -> Path:
        """``model.pt``: the final global weights."""
        return self.save_torch("model.pt", dict(state_dict))

    def save_torch(self, name: str, obj: Any) -> Path:
        """Any torch-serialisable object (model, checkpoint) under ``name``, atomically."""
        import torch  # only the writers that save weights need it

        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return atomic_write_bytes(self.path(name), buffer.getvalue())
