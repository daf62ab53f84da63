"""One vertical job's configuration (CLI options, ``config.json`` in the run directory)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from fedcustomer.errors import ConfigError
from fedcustomer.jobs.config import JobBase, defaults, require_at_least_one, require_positive

DATA_SOURCES = ("synthetic", "uci-credit", "own")  # own: each party's declared dataset and spec
VERTICAL_TASKS = ("repayment", "clv")


@dataclass
class VerticalJob(JobBase):
    """A split-learning job between the label owner (active) and one feature-only party (passive).

    ``batch_size`` is the *expected* Poisson batch: the label owner samples every aligned
    training customer independently with rate ``q = batch_size / n_train`` (public).
    ``steps_per_round`` defaults to ``int(1 / q)`` (one expected pass over the data).
    ``label_epsilon`` is the part of the label owner's ``epsilon`` spent, once per job, on
    the protected labels its label head learns from; ``label_bound`` clips log1p spend
    before that release in the CLV task. ``retail_signal`` (synthetic data only) is the
    strength of the default risk that only retail behaviour reveals (see
    :func:`fedcustomer.data.synthetic.generate_federation`; 0 = none).
    ``baseline`` also trains the label owner's own DP model on its features alone, for
    comparison. It is a second release about the label owner's customers, so it is paid
    from the same budget: the joint job leaves ``baseline_epsilon`` of the label owner's
    ``epsilon`` unspent and the baseline, run on the same ledger (beside the joint job, its
    noise leaving room for the joint job's planned rounds), uses what is left (at least that
    much).

    The shared fields come from :class:`JobBase`; those re-declared here differ for split learning.
    """

    OPTION_KIND: ClassVar[str] = "vertical job"

    rounds: int = 8
    steps_per_round: int | None = None
    batch_size: int = 512
    lr: float = 0.05
    optimizer: str = "adam"
    embed_dim: int = 8
    hidden: int = 16
    max_grad_norm: float = 1.0
    label_dp: bool = True
    label_epsilon: float = 1.0
    label_bound: float = 12.0
    embedding_noise: float = 0.0
    embedding_clip: float = 1.0
    max_noise_multiplier: float = 50.0
    test_fraction: float = 0.25
    customers: int = 20000
    shared_fraction: float = 0.7
    retail_signal: float = 1.5
    baseline: bool = True
    baseline_epsilon: float = 1.0
    out: str = "runs/vertical"
    round_timeout: float = 600.0

    def validate(self) -> None:
        if self.task not in VERTICAL_TASKS:
            raise ConfigError(f"--task must be one of {', '.join(VERTICAL_TASKS)}, got {self.task!r}")
        if self.data not in DATA_SOURCES:
            raise ConfigError(
                f"--data must be one of {', '.join(DATA_SOURCES)} for vertical runs, got {self.data!r}"
            )
        if self.data == "uci-credit" and self.task != "repayment":
            raise ConfigError(
                "the UCI credit data has no spend label; use --task repayment with --data uci-credit"
            )
        self.validate_common()
        for name in ("label_epsilon", "label_bound", "embedding_clip"):
            require_positive(name, getattr(self, name))
        if self.dp and self.label_dp and self.label_epsilon >= self.epsilon:
            raise ConfigError(
                f"--label-epsilon ({self.label_epsilon:g}) must be below --epsilon ({self.epsilon:g}): "
                "the label owner's budget pays for the label release and its own DP-SGD"
            )
        if self.dp and self.baseline:
            require_positive("baseline_epsilon", self.baseline_epsilon)
            reserved = self.baseline_epsilon + (self.label_epsilon if self.label_dp else 0.0)
            if reserved >= self.epsilon:
                raise ConfigError(
                    f"--baseline-epsilon ({self.baseline_epsilon:g})"
                    + (f" plus --label-epsilon ({self.label_epsilon:g})" if self.label_dp else "")
                    + f" must be below --epsilon ({self.epsilon:g}): the label owner's one budget pays for the "
                    "joint model and the comparison model; lower them or pass --no-baseline"
                )
        if not (math.isfinite(self.embedding_noise) and self.embedding_noise >= 0):
            raise ConfigError(f"--embedding-noise must be >= 0, got {self.embedding_noise}")
        require_at_least_one(self, "embed_dim", "hidden", "customers")
        if self.steps_per_round is not None and self.steps_per_round < 1:
            raise ConfigError(f"--steps-per-round must be >= 1, got {self.steps_per_round}")
        if not (0 < self.test_fraction < 1):
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if not (0 <= self.retail_signal <= 5):
            raise ConfigError(f"--retail-signal must be in [0, 5], got {self.retail_signal}")
        if not (0 < self.shared_fraction <= 1):
            raise ConfigError(f"--shared-fraction must be in (0, 1], got {self.shared_fraction}")


#: Each option's default, for the command line (one source: this dataclass).
DEFAULTS: dict[str, Any] = defaults(VerticalJob)
