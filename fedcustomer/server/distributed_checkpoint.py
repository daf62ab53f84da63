"""Checkpoints of a distributed DP job (one DP-SGD step per round under SecAgg+), so a restarted coordinator resumes.

After every round whose secure sum was applied or discarded, the coordinator writes
``checkpoints/distributed-<run id>-round-NNNN.pt``: the model, the optimizer's state (momentum or
Adam moments: the next step depends on them), the rounds applied and discarded so far, and
the job's noise multiplier. A resumed job starts from the latest one and runs the rounds
after it **with the same round numbers**, so a partner charged for a round the crash cut
short (its ledger key ``run:<id>:round:<r>`` is already there) re-sends the update it was
paid for instead of paying again (privacy/dp/release.py), and every partner's ledger holds
one charge per round however often the coordinator restarts. The re-sent update was
computed on the same global model the checkpoint restores.

Checkpoints are loaded weights-only (models/weights_io.py): a planted or damaged file stops
the resume with a clear error instead of running code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError, IntegrityError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.weights_io import load_weights_only

PATTERN = "checkpoints/distributed-{run}-round-{round:04d}.pt"  # per run: another run's files never mix in
FORMAT = "fedcustomer.distributed-checkpoint/1"


@dataclass
class DistributedProgress:
    """Where a distributed job stands after ``round``: what a resumed coordinator needs to continue exactly."""

    run_id: str
    round: int  # the last round whose outcome (applied or discarded) is recorded
    noise_multiplier: float  # the job's sigma: a resumed job keeps it (never re-calibrated)
    model: dict[str, Any]
    optimizer: dict[str, Any]
    applied: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)


def save(out: str | Path, progress: DistributedProgress) -> Path:
    """Write the checkpoint of ``progress.round`` atomically (plain tensors, numbers and lists only)."""
    blob = {
        "format": FORMAT,
        "run_id": progress.run_id,
        "round": int(progress.round),
        "noise_multiplier": float(progress.noise_multiplier),
        "model": {k: v.detach().cpu().clone() for k, v in progress.model.items()},
        "optimizer": progress.optimizer,
        "applied": [int(r) for r in progress.applied],
        "discarded": [int(r) for r in progress.discarded],
    }
    Path(out, "checkpoints").mkdir(parents=True, exist_ok=True)
    return RunDir(out).save_torch(PATTERN.format(run=_safe(progress.run_id), round=progress.round), blob)


def latest(out: str | Path, run_id: str) -> DistributedProgress | None:
    """The latest checkpoint of run ``run_id`` in ``out``, or None when the job never finished a round.

    A checkpoint of another run, or one that is not a distributed checkpoint, is refused:
    resuming from it would continue the wrong job (and the partners' charge keys would not match).
    """
    paths = sorted(Path(out, "checkpoints").glob(f"distributed-{_safe(run_id)}-round-*.pt"))
    if not paths:
        return None
    blob = load_weights_only(paths[-1], "distributed-DP checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise IntegrityError(f"{paths[-1]} is not a distributed-DP checkpoint; remove it to start afresh")
    if blob["run_id"] != run_id:
        raise ConfigError(
            f"{paths[-1]} belongs to run {blob['run_id']!r}, not {run_id!r}: resume with that run's config.json"
        )
    return DistributedProgress(
        run_id=str(blob["run_id"]),
        round=int(blob["round"]),
        noise_multiplier=float(blob["noise_multiplier"]),
        model=dict(blob["model"]),
        optimizer=dict(blob["optimizer"]),
        applied=[int(r) for r in blob["applied"]],
        discarded=[int(r) for r in blob["discarded"]],
    )


def restore(progress: DistributedProgress | None, model: Any, optimizer: Any) -> None:
    """Load a checkpoint's model and optimizer state (nothing for a fresh job)."""
    if progress is None:
        return
    try:
        model.load_state_dict(progress.model)
        optimizer.load_state_dict(progress.optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"the checkpoint of run {progress.run_id!r} does not fit this job's model or optimizer ({exc}); "
            "resume with the run's own config.json"
        ) from None


def strategy_state(
    progress: DistributedProgress | None, out: str | Path, run_id: str, noise_multiplier: float
) -> dict[str, Any]:
    """What the coordinator's strategy starts from: the round offset, the rounds done, its checkpoint writer."""
    return {
        "first": progress.round if progress else 0,
        "applied": list(progress.applied) if progress else [],
        "discarded": list(progress.discarded) if progress else [],
        "on_round": saver(out, run_id, noise_multiplier),
    }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def saver(out: str | Path, run_id: str, noise_multiplier: float) -> Callable[[int, Any], None]:
    """What the coordinator's strategy calls after each round's outcome: write that round's checkpoint.

    ``strategy`` holds ``model``, ``optimizer``, ``applied`` and ``discarded`` (the distributed step).
    """

    def after_round(rnd: int, strategy: Any) -> None:
        save(
            out,
            DistributedProgress(
                run_id=run_id,
                round=rnd,
                noise_multiplier=noise_multiplier,
                model=dict(strategy.model.state_dict()),
                optimizer=strategy.optimizer.state_dict(),
                applied=list(strategy.applied),
                discarded=list(strategy.discarded),
            ),
        )

    return after_round
