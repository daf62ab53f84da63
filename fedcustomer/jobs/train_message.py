"""The train/evaluate message of a horizontal round, encoded and decoded in one place.

The coordinator encodes a job into a flat, Flower-ConfigRecord-safe dict
(:func:`encode_train_config`; the rounds loop stamps ``server-round`` on it each round);
the partner node decodes it into :class:`TrainInstructions`. Keeping both sides here
means a key cannot be renamed on one side only, and a missing optional key falls back to
the same default a job would have used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError
from fedcustomer.jobs.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIPPING,
    DEFAULT_DP_MODE,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_MAX_NOISE_MULTIPLIER,
    DEFAULT_OPTIMIZER,
    DEFAULT_PROXIMAL_MU,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SEED,
)
from fedcustomer.models.clv import CLVTarget


class TrainJob(Protocol):
    """What the coordinator's job must tell the partners (a horizontal ``JobConfig`` does)."""

    run_id: str
    rounds: int
    task: str
    arch: str
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    dp: bool
    max_grad_norm: float
    max_noise_multiplier: float
    clipping: str
    strategy: str
    proximal_mu: float
    seed: int

    @property
    def dataset_name(self) -> str: ...


def encode_train_config(job: TrainJob, spec: FeatureSpec) -> dict[str, Any]:
    """The instructions every partner receives each round (flat, Flower-ConfigRecord-safe)."""
    message = {
        "run-id": job.run_id,
        "planned-rounds": job.rounds,
        "task": job.task,
        "arch": job.arch,
        "dataset": job.dataset_name,
        "feature-spec": json.dumps(spec.to_dict()),
        "local-epochs": job.local_epochs,
        "batch-size": job.batch_size,
        "lr": job.lr,
        "optimizer": job.optimizer,
        "dp": job.dp,
        "max-grad-norm": job.max_grad_norm,
        "max-noise-multiplier": job.max_noise_multiplier,
        "clipping": job.clipping,
        "proximal-mu": job.proximal_mu if job.strategy == "fedprox" else DEFAULT_PROXIMAL_MU,
        "seed": job.seed,
    }
    dp_mode = str(getattr(job, "dp_mode", DEFAULT_DP_MODE))
    if dp_mode != DEFAULT_DP_MODE:  # plain messages stay as they were
        message["dp-mode"] = dp_mode
        message["sample-rate"] = float(getattr(job, "sample_rate", DEFAULT_SAMPLE_RATE))
    clv_target = getattr(job, "clv_target", None)
    if job.task == "clv" and clv_target is not None:  # repayment messages stay as they were
        target: CLVTarget = clv_target()
        message.update(
            {
                "clv-transform": target.transform,
                "clv-spend-cap": float(target.spend_cap),
                "clv-loss": target.loss,
                "clv-huber-delta": float(target.huber_delta),
            }
        )
    return message


@dataclass(frozen=True)
class TrainInstructions:
    """What the coordinator asks of a partner for one round (decoded from a ConfigRecord)."""

    run_id: str
    round: int
    planned_rounds: int
    task: str
    arch: str
    dataset: str
    spec: FeatureSpec
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    optimizer: str = DEFAULT_OPTIMIZER
    dp: bool = True
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER
    clipping: str = DEFAULT_CLIPPING
    proximal_mu: float = DEFAULT_PROXIMAL_MU
    seed: int = DEFAULT_SEED
    dp_mode: str = DEFAULT_DP_MODE
    sample_rate: float = DEFAULT_SAMPLE_RATE
    # distributed mode, set by the SecAgg+ coordinator: the union's noise multiplier, the fewest
    # contributions a sum may hold (n_min), the secure sum's clip range
    noise_multiplier: float = 0.0
    min_survivors: int = 0
    secagg_shares: int = 0  # the most contributions a round's sum may hold (the partners sampled)
    secagg_clip_range: float = 0.0
    # clv: the training target and loss (None: a coordinator that predates targets, unscaled log1p)
    clv: CLVTarget | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TrainInstructions:
        """Decode :func:`encode_train_config`'s dict (plus ``server-round``); required keys must be there."""
        try:
            return cls(
                run_id=str(cfg["run-id"]),
                round=int(cfg.get("server-round", 1)),
                planned_rounds=int(cfg["planned-rounds"]),
                task=str(cfg["task"]),
                arch=str(cfg["arch"]),
                dataset=str(cfg["dataset"]),
                spec=FeatureSpec.from_dict(json.loads(str(cfg["feature-spec"]))),
                local_epochs=int(cfg.get("local-epochs", DEFAULT_LOCAL_EPOCHS)),
                batch_size=int(cfg.get("batch-size", DEFAULT_BATCH_SIZE)),
                lr=float(cfg.get("lr", DEFAULT_LR)),
                optimizer=str(cfg.get("optimizer", DEFAULT_OPTIMIZER)),
                dp=bool(cfg.get("dp", True)),
                max_grad_norm=float(cfg.get("max-grad-norm", DEFAULT_MAX_GRAD_NORM)),
                max_noise_multiplier=float(cfg.get("max-noise-multiplier", DEFAULT_MAX_NOISE_MULTIPLIER)),
                clipping=str(cfg.get("clipping", DEFAULT_CLIPPING)),
                proximal_mu=float(cfg.get("proximal-mu", DEFAULT_PROXIMAL_MU)),
                seed=int(cfg.get("seed", DEFAULT_SEED)),
                dp_mode=str(cfg.get("dp-mode", DEFAULT_DP_MODE)),
                sample_rate=float(cfg.get("sample-rate", DEFAULT_SAMPLE_RATE)),
                noise_multiplier=float(cfg.get("noise-multiplier", 0.0)),
                min_survivors=int(cfg.get("min-survivors", 0)),
                secagg_shares=int(cfg.get("secagg-shares", 0)),
                secagg_clip_range=float(cfg.get("secagg-clip-range", 0.0)),
                clv=_clv_target(cfg),
            )
        except KeyError as exc:
            raise ConfigError(f"training instructions lack {exc.args[0]!r}") from None


def _clv_target(cfg: dict[str, Any]) -> CLVTarget | None:
    if "clv-transform" not in cfg:
        return None
    return CLVTarget(
        str(cfg["clv-transform"]),
        float(cfg["clv-spend-cap"]),
        str(cfg["clv-loss"]),
        float(cfg["clv-huber-delta"]),
    )
