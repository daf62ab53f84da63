"""Checkpoints of a SecAgg+ job, so a restarted coordinator resumes without charging any partner twice.

Both SecAgg+ modes keep one: the distributed DP job (one DP-SGD step per round) and the
local-noise job (FedAvg of updates each partner noised itself). After every round whose
secure sum was applied or discarded, the coordinator writes
``checkpoints/<mode>-<run id>-round-NNNN.pt``: the global model, the optimizer's state where
the next step depends on it (momentum or Adam moments of the distributed step), the rounds
applied and discarded so far, and the job's noise multiplier where the coordinator fixed one
(distributed mode; in local-noise mode each partner calibrates its own). A resumed job starts
from the latest one and runs the rounds after it **with the same round numbers**, so a partner
charged for a round the crash cut short (its ledger key ``run:<id>:round:<r>`` is already
there) re-sends the update it was paid for instead of paying again (privacy/dp/release.py),
and every partner's ledger holds one charge per round however often the coordinator
restarts. The re-sent update was computed on the same global model the checkpoint restores.

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

DISTRIBUTED, LOCAL = "distributed", "secagg"  # file prefixes: the distributed DP job, the local-noise job
PATTERN = "checkpoints/{mode}-{run}-round-{round:04d}.pt"  # per mode and run: other jobs' files never mix in
FORMATS = {DISTRIBUTED: "fedcustomer.distributed-checkpoint/1", LOCAL: "fedcustomer.secagg-checkpoint/1"}


@dataclass
class SecAggProgress:
    """Where a SecAgg+ job stands after ``round``: what a resumed coordinator needs to continue exactly."""

    run_id: str
    round: int  # the last round whose outcome (applied or discarded) is recorded
    noise_multiplier: float | None  # the distributed job's sigma, kept on resume (never re-calibrated)
    model: dict[str, Any]
    optimizer: dict[str, Any]  # empty for the local-noise job (FedAvg keeps no optimizer state)
    applied: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    mode: str = DISTRIBUTED


def save(out: str | Path, progress: SecAggProgress) -> Path:
    """Write the checkpoint of ``progress.round`` atomically (plain tensors, numbers and lists only)."""
    _check_mode(progress.mode)
    blob = {
        "format": FORMATS[progress.mode],
        "run_id": progress.run_id,
        "round": int(progress.round),
        "noise_multiplier": None if progress.noise_multiplier is None else float(progress.noise_multiplier),
        "model": {k: v.detach().cpu().clone() for k, v in progress.model.items()},
        "optimizer": progress.optimizer,
        "applied": [int(r) for r in progress.applied],
        "discarded": [int(r) for r in progress.discarded],
    }
    Path(out, "checkpoints").mkdir(parents=True, exist_ok=True)
    name = PATTERN.format(mode=progress.mode, run=_safe(progress.run_id), round=progress.round)
    return RunDir(out).save_torch(name, blob)


def latest(out: str | Path, run_id: str, mode: str = DISTRIBUTED) -> SecAggProgress | None:
    """The latest ``mode`` checkpoint of run ``run_id`` in ``out``, or None when the job never finished a round.

    A checkpoint of another run, or one that is not a checkpoint of this mode, is refused:
    resuming from it would continue the wrong job (and the partners' charge keys would not match).
    """
    _check_mode(mode)
    paths = sorted(Path(out, "checkpoints").glob(f"{mode}-{_safe(run_id)}-round-*.pt"))
    if not paths:
        return None
    blob = load_weights_only(paths[-1], f"{mode} SecAgg+ checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMATS[mode]:
        raise IntegrityError(f"{paths[-1]} is not a {mode} SecAgg+ checkpoint; remove it to start afresh")
    if blob["run_id"] != run_id:
        raise ConfigError(
            f"{paths[-1]} belongs to run {blob['run_id']!r}, not {run_id!r}: resume with that run's config.json"
        )
    sigma = blob["noise_multiplier"]
    return SecAggProgress(
        run_id=str(blob["run_id"]),
        round=int(blob["round"]),
        noise_multiplier=None if sigma is None else float(sigma),
        model=dict(blob["model"]),
        optimizer=dict(blob["optimizer"]),
        applied=[int(r) for r in blob["applied"]],
        discarded=[int(r) for r in blob["discarded"]],
        mode=mode,
    )


def restore(progress: SecAggProgress | None, model: Any, optimizer: Any = None) -> None:
    """Load a checkpoint's model (and the optimizer's state, where the job has one); nothing for a fresh job."""
    if progress is None:
        return
    try:
        model.load_state_dict(progress.model)
        if optimizer is not None:
            optimizer.load_state_dict(progress.optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"the checkpoint of run {progress.run_id!r} does not fit this job's model or optimizer ({exc}); "
            "resume with the run's own config.json"
        ) from None


def strategy_state(
    progress: SecAggProgress | None,
    out: str | Path,
    run_id: str,
    noise_multiplier: float | None,
    mode: str = DISTRIBUTED,
) -> dict[str, Any]:
    """What the coordinator's strategy starts from: the round offset, the rounds done, its checkpoint writer."""
    return {
        "first": progress.round if progress else 0,
        "applied": list(progress.applied) if progress else [],
        "discarded": list(progress.discarded) if progress else [],
        "on_round": saver(out, run_id, noise_multiplier, mode),
    }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _check_mode(mode: str) -> None:
    if mode not in FORMATS:
        raise ConfigError(f"unknown SecAgg+ checkpoint mode {mode!r}; expected one of {sorted(FORMATS)}")


def saver(
    out: str | Path, run_id: str, noise_multiplier: float | None, mode: str = DISTRIBUTED
) -> Callable[[int, Any], None]:
    """What the coordinator's strategy calls after each round's outcome: write that round's checkpoint.

    ``strategy`` holds ``model``, ``applied`` and ``discarded``, and ``optimizer`` (None in local-noise mode).
    """

    def after_round(rnd: int, strategy: Any) -> None:
        optimizer = getattr(strategy, "optimizer", None)
        save(
            out,
            SecAggProgress(
                run_id=run_id,
                round=rnd,
                noise_multiplier=noise_multiplier,
                model=dict(strategy.model.state_dict()),
                optimizer=optimizer.state_dict() if optimizer is not None else {},
                applied=list(strategy.applied),
                discarded=list(strategy.discarded),
                mode=mode,
            ),
        )

    return after_round
