"""What a data scientist asks for: one federated job's configuration.

The same fields come from the CLI, from ``[tool.flwr.app.config]`` when the app is
started with ``flwr run``, and are written to the run directory as ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from fedcustomer.errors import ConfigError
from fedcustomer.jobs.config import (
    DEFAULT_ARCH,
    DEFAULT_CLIPPING,
    DEFAULT_DP_MODE,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_MIN_PARTNERS,
    DEFAULT_PARTNERS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SPLIT,
    DEFAULT_STRATEGY,
    DP_MODES,
    JobBase,
    defaults,
    require_at_least_one,
    require_positive,
)
from fedcustomer.models.names import (
    ARCHITECTURES,
    DEFAULT_CLV_HUBER_DELTA,
    DEFAULT_CLV_LOSS,
    DEFAULT_CLV_SPEND_CAP,
    DEFAULT_CLV_TRANSFORM,
    TASKS,
)

if TYPE_CHECKING:  # the target's loss is a torch module: `fedcustomer run --help` stays free of torch
    from fedcustomer.models.clv import CLVTarget

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
# Strategies that aggregate with FedAvg's uniform mean: the ones Flower's accounted central-DP wrapper accepts.
CAPPED_CENTRAL_STRATEGIES = ("fedavg", "fedprox")
CENTRAL_ACCOUNTANTS = ("rdp", "pld")
SPLITS = ("iid", "non-iid")
CLIPPINGS = ("fast", "ghost", "hooks")
EVAL_MODES = ("every", "final", "none")


@dataclass
class JobConfig(JobBase):
    """One federated training job (horizontal: every partner holds the same features).

    The shared fields (task, data, rounds, batch size, lr, DP target, seed, out, homes,
    run id, round timeout) and their defaults come from :class:`JobBase`.
    """

    ALIASES: ClassVar[dict[str, str]] = {"num_server_rounds": "rounds"}

    label: str | None = None
    feature_spec: str | None = (
        None  # JSON file declaring features, bounds and categories (else inferred, with notices)
    )
    split: str = DEFAULT_SPLIT
    partners: int = DEFAULT_PARTNERS
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    arch: str = DEFAULT_ARCH
    clipping: str = DEFAULT_CLIPPING
    strategy: str = DEFAULT_STRATEGY
    proximal_mu: float = 0.01
    trimmed_beta: float = 0.2
    server_lr: float = 0.05
    central_dp: bool = False
    central_noise_multiplier: float = 1.0
    central_clipping_norm: float = 1.0
    # The job stops before the round that would take the partner-level epsilon past this (None: no cap).
    central_max_epsilon: float | None = None
    central_accountant: str = "rdp"  # rdp | pld: how the partner-level epsilon is composed
    min_partners: int = DEFAULT_MIN_PARTNERS
    federated_eval: str = "every"
    dp_mode: str = DEFAULT_DP_MODE  # "distributed": one DP-SGD step over the union per round (SecAgg+ only)
    sample_rate: float = DEFAULT_SAMPLE_RATE  # distributed mode's Poisson rate q (required there)
    # distributed mode: the accountant the coordinator calibrates sigma with: rdp | pld, or auto (ask the
    # partners: pld when every partner charges with pld, else rdp); each partner's ledger charges with its own
    distributed_accountant: str = "auto"
    # clv only: the target the model learns (spend clipped to a declared public cap, transformed,
    # scaled to [0, 1]) and its loss; metrics stay on the original scale
    clv_transform: str = DEFAULT_CLV_TRANSFORM
    clv_spend_cap: float = DEFAULT_CLV_SPEND_CAP
    clv_loss: str = DEFAULT_CLV_LOSS
    clv_huber_delta: float = DEFAULT_CLV_HUBER_DELTA
    # In simulation the partners are local processes whose failures are reported, so the
    # timeout (JobBase.round_timeout) only guards against a hang; a busy machine can make a
    # round take minutes.

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
        if self.dp_mode not in DP_MODES:
            raise ConfigError(f"--dp-mode must be one of {', '.join(DP_MODES)}, got {self.dp_mode!r}")
        if self.dp_mode == "distributed":
            if not self.dp:
                raise ConfigError("--dp-mode distributed is a DP mode; it cannot run with --no-dp")
            if not (0 < self.sample_rate <= 1):
                raise ConfigError(
                    f"--dp-mode distributed needs --sample-rate in (0, 1], got {self.sample_rate}"
                )
        self.validate_common()
        self.clv_target()  # refuses a bad transform, loss, cap or delta (checked for every task)
        require_at_least_one(self, "partners", "local_epochs", "min_partners")
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
        if self.distributed_accountant not in (*CENTRAL_ACCOUNTANTS, "auto"):
            raise ConfigError(
                f"--distributed-accountant must be one of {', '.join(CENTRAL_ACCOUNTANTS)} or auto, "
                f"got {self.distributed_accountant!r}"
            )
        if self.central_accountant not in CENTRAL_ACCOUNTANTS:
            raise ConfigError(
                f"--central-accountant must be one of {', '.join(CENTRAL_ACCOUNTANTS)}, got {self.central_accountant!r}"
            )
        if self.central_max_epsilon is not None:
            if not self.central_dp:
                raise ConfigError("--central-max-epsilon caps partner-level DP: it needs --central-dp")
            require_positive("central-max-epsilon", self.central_max_epsilon)
            if self.strategy not in CAPPED_CENTRAL_STRATEGIES:
                raise ConfigError(
                    f"--central-max-epsilon needs a strategy that averages updates uniformly "
                    f"({', '.join(CAPPED_CENTRAL_STRATEGIES)}), not {self.strategy!r}: Flower's accounted "
                    "central-DP wrapper is only sound for that aggregation"
                )
            first = self.central_epsilon_after(1)
            if first > self.central_max_epsilon:
                raise ConfigError(
                    f"--central-max-epsilon {self.central_max_epsilon:g} is below the partner-level epsilon of a "
                    f"single round ({first:.3f} at --central-noise-multiplier {self.central_noise_multiplier:g}, "
                    f"delta {self.delta:g}, {self.central_accountant.upper()}): no round could run. Raise the cap "
                    "or the central noise multiplier"
                )

    def central_epsilon_after(self, rounds: int, sample_rate: float = 1.0) -> float:
        """The partner-level (central DP) epsilon after ``rounds`` rounds with the job's accountant; the cap
        accounts every partner in every round (``sample_rate`` 1: no sampling amplification)."""
        from fedcustomer.privacy.dp.accountants import accountant_named
        from fedcustomer.privacy.dp.accounting import GaussianSteps

        steps = GaussianSteps(self.central_noise_multiplier, sample_rate, rounds)
        return accountant_named(self.central_accountant).epsilon([steps], self.delta)

    def central_cap_rounds(self) -> int | None:
        """How many of the planned rounds ``--central-max-epsilon`` lets run (None without a cap)."""
        if not self.central_dp or self.central_max_epsilon is None:
            return None
        cap, low, high = self.central_max_epsilon, 0, self.rounds  # epsilon grows with rounds: bisect
        while low < high:
            mid = (low + high + 1) // 2
            if self.central_epsilon_after(mid) <= cap:
                low = mid
            else:
                high = mid - 1
        return low

    def clv_target(self) -> CLVTarget:
        """The CLV target and loss this job trains with (unused by repayment jobs)."""
        from fedcustomer.models.clv import CLVTarget

        return CLVTarget(self.clv_transform, self.clv_spend_cap, self.clv_loss, self.clv_huber_delta)

    @property
    def dataset_name(self) -> str:
        """The partner dataset read (store and ledger): budgets are per dataset, shared by all jobs on it."""
        from fedcustomer.partner.datasets import dataset_name

        return dataset_name(self.data, self.task)


#: Each option's default, for the command line (one source: this dataclass).
DEFAULTS: dict[str, Any] = defaults(JobConfig)
