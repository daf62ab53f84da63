"""What a data scientist asks for: one federated job's configuration.

The same fields come from the CLI, from ``[tool.flwr.app.config]`` when the app is
started with ``flwr run``, and are written to the run directory as ``config.json``.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError
from fedcustomer.models.names import ARCHITECTURES, TASKS

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
SPLITS = ("iid", "non-iid")
CLIPPINGS = ("fast", "ghost", "hooks")
EVAL_MODES = ("every", "final", "none")


def new_run_id() -> str:
    """Sortable, collision-free run id (time + random suffix)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class JobConfig:
    """One federated training job (horizontal: every partner holds the same features)."""

    task: str = "repayment"
    data: str = "synthetic"
    data_dir: str | None = None
    label: str | None = None
    feature_spec: str | None = (
        None  # JSON file declaring features, bounds and categories (else inferred, with notices)
    )
    split: str = "iid"
    partners: int = 3
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 128
    lr: float = (
        0.5  # with max_grad_norm 0.5: DP-SGD's step is bounded by lr x clip (see benchmarks/RESULTS.md)
    )
    optimizer: str = "sgd"
    arch: str = "mlp"
    dp: bool = True
    epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 0.5
    max_noise_multiplier: float = 10.0
    clipping: str = "fast"
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    trimmed_beta: float = 0.2
    server_lr: float = 0.05
    central_dp: bool = False
    central_noise_multiplier: float = 1.0
    central_clipping_norm: float = 1.0
    min_partners: int = 2
    federated_eval: str = "every"
    seed: int = 0
    out: str = "runs/latest"
    homes: str | None = None
    run_id: str = field(default_factory=new_run_id)
    # In simulation the partners are local processes whose failures are reported, so the
    # timeout only guards against a hang; a busy machine can make a round take minutes.
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse nonsense early, with the option name the user typed."""
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.arch not in ARCHITECTURES[self.task]:
            raise ConfigError(
                f"--arch for {self.task} must be one of {', '.join(ARCHITECTURES[self.task])}, got {self.arch!r}"
            )
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}"
            )
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.clipping not in CLIPPINGS:
            raise ConfigError(f"--clipping must be one of {', '.join(CLIPPINGS)}, got {self.clipping!r}")
        if self.federated_eval not in EVAL_MODES:
            raise ConfigError(
                f"--federated-eval must be one of {', '.join(EVAL_MODES)}, got {self.federated_eval!r}"
            )
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        require_positive("epsilon", self.epsilon)
        if not (0 < self.delta < 1):
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        require_positive("lr", self.lr)
        require_positive("max-grad-norm", self.max_grad_norm)
        require_positive("max-noise-multiplier", self.max_noise_multiplier)
        for name in ("partners", "rounds", "local_epochs", "batch_size", "min_partners"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_partners > self.partners:
            raise ConfigError(
                f"--min-partners ({self.min_partners}) cannot exceed --partners ({self.partners})"
            )
        if self.strategy == "krum" and self.partners < 3:
            raise ConfigError("krum needs at least 3 partners")
        if not (0 <= self.trimmed_beta < 0.5):
            raise ConfigError(f"trimmed beta must be in [0, 0.5), got {self.trimmed_beta}")
        if self.central_dp:
            require_positive("central-noise-multiplier", self.central_noise_multiplier)
            require_positive("central-clipping-norm", self.central_clipping_norm)

    # --- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobConfig:
        """Accept CLI-style (dash) or Python-style keys; unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name == "num_server_rounds":
                name = "rounds"
            if name not in known:
                raise ConfigError(f"unknown job option {key!r}")
            kwargs[name] = value
        return cls(**kwargs)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @property
    def dataset_name(self) -> str:
        """The partner dataset read (store and ledger): budgets are per dataset, shared by all jobs on it."""
        from fedcustomer.partner.datasets import dataset_name

        return dataset_name(self.data, self.task)


def require_positive(name: str, value: float) -> None:
    """Refuse a non-positive, non-finite or non-numeric option, named as the user typed it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
