"""Which accountant composes a partner's Gaussian releases: RDP (Opacus) or PLD (dp-accounting).

A partner chooses one in partner.toml (``accountant = "pld"`` in ``[budget]``; RDP when
unset, so existing homes report what they always did). The choice is used for both sides of
a release: calibration (the noise for the budget left) and reporting (the spend, the
refusals). Each ledger row records the accountant that produced its totals.

Mixed histories (a partner that switched): every spend is the **whole** history recomposed
with the accountant selected now. Both accountants are sound over any history, so the figure
reported is a valid bound; the smaller of the two is never picked per release.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp import accounting, pld
from fedcustomer.privacy.dp.accounting import GaussianSteps

RDP = "rdp"
PLD = "pld"
ACCOUNTANTS = (RDP, PLD)
DEFAULT = RDP
#: Below this noise multiplier one Gaussian release's PLD spans too many grid points (tens of seconds per
#: evaluation at 0.1): a PLD partner's Gaussian query that would need less noise (epsilon above ~20) is refused.
PLD_MIN_RELEASE_NOISE = 0.25


@dataclass(frozen=True)
class Accountant:
    """An accountant and its one parameter (the PLD's discretisation interval)."""

    name: str = DEFAULT
    pld_interval: float = pld.VALUE_DISCRETIZATION_INTERVAL

    def __post_init__(self) -> None:
        if self.name not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.name!r}")
        pld.check_interval(self.pld_interval)

    @property
    def interval(self) -> float | None:
        """The discretisation interval the ledger records (None for RDP, which has none)."""
        return self.pld_interval if self.name == PLD else None

    def epsilon(self, history: Sequence[GaussianSteps], delta: float) -> float:
        """Epsilon of a Gaussian history at ``delta``."""
        if self.name == PLD:
            return pld.epsilon(history, delta, self.pld_interval)
        return accounting.epsilon(history, delta)

    def calibrate_noise(
        self,
        prior: Sequence[GaussianSteps],
        sample_rate: float,
        steps: int,
        epsilon_target: float,
        delta: float,
        *,
        sigma_min: float = 0.3,
        sigma_max: float = 50.0,
        tolerance: float = 1e-3,
    ) -> float:
        """Smallest noise multiplier whose ``steps`` fit in ``epsilon_target`` after ``prior``."""
        if self.name == PLD:
            return pld.calibrate_noise(
                prior,
                sample_rate,
                steps,
                epsilon_target,
                delta,
                interval=self.pld_interval,
                sigma_min=sigma_min,
                sigma_max=sigma_max,
                tolerance=tolerance,
            )
        return accounting.calibrate_noise(
            prior,
            sample_rate,
            steps,
            epsilon_target,
            delta,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            tolerance=tolerance,
        )

    def calibrate_release(self, epsilon: float, delta: float) -> float:
        """Noise multiplier of one full-batch Gaussian release (``q = 1``) whose epsilon alone is ``epsilon``.

        What a Gaussian analytics query is sized with, so that the ledger (which composes it
        with this same accountant) charges what the query asked for. RDP searches as it always
        did; PLD searches just above the exact Gaussian mechanism's noise (Balle and Wang), a
        lower bound for any sound accountant, which PLD's pessimistic grid meets within ~1e-4.
        """
        return _release_noise(self.name, self.pld_interval, float(epsilon), float(delta))

    def describe(self) -> dict[str, Any]:
        """What a report says about the accountant (enough to recompute with the library)."""
        if self.name == PLD:
            return {
                "accountant": PLD,
                "library": "dp-accounting PLDAccountant (pessimistic discretisation)",
                "value_discretization_interval": self.pld_interval,
            }
        return {"accountant": RDP, "library": "opacus RDPAccountant"}


@functools.lru_cache(maxsize=256)
def _release_noise(name: str, interval: float, epsilon: float, delta: float) -> float:
    """One full-batch Gaussian release's noise multiplier, cached: queries repeat (epsilon, delta) pairs."""
    if name != PLD:
        return accounting.calibrate_noise(
            [], 1.0, 1, epsilon, delta, sigma_min=1e-3, sigma_max=1e5, tolerance=1e-6
        )
    exact = pld.exact_gaussian_noise(epsilon, delta)
    if exact < PLD_MIN_RELEASE_NOISE:
        raise ConfigError(
            f"a Gaussian release at epsilon {epsilon:g} (delta {delta:g}) needs noise multiplier {exact:.3f}, "
            f"below {PLD_MIN_RELEASE_NOISE:g}, which PLD accounting cannot size in reasonable time: use a "
            "smaller epsilon or the Laplace mechanism"
        )
    for upper in (exact * (1 + 1e-2), max(exact * 2, _release_noise(RDP, interval, epsilon, delta))):
        sigma = pld.calibrate_noise(
            [], 1.0, 1, epsilon, delta, interval=interval, sigma_min=exact, sigma_max=upper, tolerance=1e-5
        )
        if pld.epsilon([GaussianSteps(sigma, 1.0, 1)], delta, interval) <= epsilon:
            return sigma
    return sigma  # the caller checks the spend and refuses a release it cannot size


def accountant_named(name: str | None, interval: float | None = None) -> Accountant:
    """The accountant a ledger row or a config names (RDP when it names none)."""
    return Accountant(
        name or DEFAULT, pld.VALUE_DISCRETIZATION_INTERVAL if interval is None else float(interval)
    )
