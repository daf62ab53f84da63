"""The options every job shares, their defaults and their validation, in one place.

A default lives here once, as a named constant: the job dataclasses, the partner node's
reading of a train message and the command line all take it from here, so they cannot
disagree. Torch-free (the CLI imports it at start-up).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from fedcustomer.errors import ConfigError

# --- defaults a user sees (CLI options, config.json, flwr run-config) -----------------
DEFAULT_TASK = "repayment"
DEFAULT_DATA = "synthetic"
DEFAULT_EPSILON = 3.0  # each partner's epsilon target for a dataset (all releases together)
DEFAULT_DELTA = 1e-5
DEFAULT_SEED = 0  # data, splits and initial weights; never DP noise
DEFAULT_ROUNDS = 5
DEFAULT_PARTNERS = 3
DEFAULT_MIN_PARTNERS = 2
DEFAULT_SPLIT = "iid"
DEFAULT_ARCH = "mlp"
DEFAULT_STRATEGY = "fedavg"
DEFAULT_LOCAL_EPOCHS = 1
DEFAULT_BATCH_SIZE = 128  # expected (Poisson) batch
# With DEFAULT_MAX_GRAD_NORM: DP-SGD's step is bounded by lr x clip (see benchmarks/RESULTS.md).
DEFAULT_LR = 0.5
DEFAULT_MAX_GRAD_NORM = 0.5
DEFAULT_MAX_NOISE_MULTIPLIER = 10.0  # past it partners train fewer rounds instead
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_CLIPPING = "fast"
DEFAULT_PROXIMAL_MU = 0.0  # no proximal term unless the strategy is FedProx
DEFAULT_OUT = "runs/latest"
DEFAULT_ROUND_TIMEOUT = 3600.0

OPTIMIZERS = ("sgd", "adam")
# "local": every partner adds the full DP-SGD noise to its own update (several local steps).
# "distributed": with SecAgg+, each round is ONE DP-SGD step over the union; each partner adds
# only its share of the noise (privacy/dp/distributed.py). Its Poisson rate q must be set
# (--sample-rate); 0 means unset.
DP_MODES = ("local", "distributed")
DEFAULT_DP_MODE = "local"
DEFAULT_SAMPLE_RATE = 0.0


def new_run_id() -> str:
    """Sortable, collision-free run id (time + random suffix)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def require_positive(name: str, value: float) -> None:
    """Refuse a non-positive, non-finite or non-numeric option, named as the user typed it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def require_at_least_one(job: object, *names: str) -> None:
    """Refuse a count option below 1, named as the user typed it."""
    for name in names:
        if int(getattr(job, name)) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(job, name)}")


@dataclass
class JobBase:
    """The fields, checks and (de)serialisation a horizontal and a vertical job share.

    A subclass re-declares a field to give it another default, adds its own fields, and
    checks its own choices before calling :meth:`validate_common`.
    """

    #: What an unknown option is called in the refusal ("unknown job option 'x'").
    OPTION_KIND: ClassVar[str] = "job"
    #: Other names an option may arrive under (e.g. Flower's ``num-server-rounds``).
    ALIASES: ClassVar[dict[str, str]] = {}

    task: str = DEFAULT_TASK
    data: str = DEFAULT_DATA
    data_dir: str | None = None
    rounds: int = DEFAULT_ROUNDS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    optimizer: str = DEFAULT_OPTIMIZER
    dp: bool = True
    epsilon: float = DEFAULT_EPSILON
    delta: float = DEFAULT_DELTA
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER
    seed: int = DEFAULT_SEED
    out: str = DEFAULT_OUT
    homes: str | None = None
    run_id: str = field(default_factory=new_run_id)
    round_timeout: float = DEFAULT_ROUND_TIMEOUT

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse nonsense early, with the option name the user typed."""
        self.validate_common()

    def validate_common(self) -> None:
        """The checks every job needs: optimiser, privacy target, step sizes, counts."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        require_positive("epsilon", self.epsilon)
        if not (0 < self.delta < 1):
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        for name in ("lr", "max_grad_norm", "max_noise_multiplier"):
            require_positive(name, getattr(self, name))
        require_at_least_one(self, "rounds", "batch_size")

    # --- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Accept CLI-style (dash) or Python-style keys; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.replace("-", "_")
            name = cls.ALIASES.get(name, name)
            if name not in known:
                raise ConfigError(f"unknown {cls.OPTION_KIND} option {key!r}")
            kwargs[name] = value
        return cls(**kwargs)


def defaults(cls: type[JobBase]) -> dict[str, Any]:
    """Each option's default, for the command line (one source: the dataclass)."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
