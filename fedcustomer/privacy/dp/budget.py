"""A privacy budget: the (epsilon, delta) pair every release about the same customers composes against."""

from __future__ import annotations

from dataclasses import dataclass

from fedcustomer.errors import ConfigError


@dataclass(frozen=True)
class DatasetBudget:
    """The (epsilon, delta) a partner allows for everything released about its customers."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon}")
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")


PartnerBudget = DatasetBudget  # the same pair; the name says what it now covers
