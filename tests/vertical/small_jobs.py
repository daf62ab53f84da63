"""The small in-process split-learning job that audit and anchor tests run end to end."""

from __future__ import annotations

from pathlib import Path

from fedcustomer.vertical.job import VerticalJob


def small_vertical_job(out: Path, *, rounds: int, steps_per_round: int, baseline: bool) -> VerticalJob:
    """300 synthetic customers, batches of 64, seed 0: seconds per job, every step of the protocol."""
    return VerticalJob(
        out=str(out),
        rounds=rounds,
        batch_size=64,
        steps_per_round=steps_per_round,
        customers=300,
        seed=0,
        baseline=baseline,
    )
