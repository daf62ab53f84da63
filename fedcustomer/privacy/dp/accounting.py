"""Privacy accounting for DP-SGD and Gaussian releases, on Opacus's RDP accountant.

Training rounds are subsampled-Gaussian steps: their composition is tracked exactly
as one Opacus ``RDPAccountant`` would track it (same history, same orders, same
RDP-to-(epsilon, delta) conversion), so the epsilon we report can be recomputed by
anyone from the recorded ``(noise_multiplier, sample_rate, steps)`` triples.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedcustomer.errors import ConfigError

ACCOUNTANT = "rdp"  # this module's accountant; ``accountants.Accountant`` selects it or PLD
ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)


@dataclass(frozen=True)
class GaussianSteps:
    """``steps`` applications of a Gaussian mechanism on a Poisson subsample of rate ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0):
            raise ConfigError(f"noise multiplier must be > 0, got {self.noise_multiplier}")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")

    def as_tuple(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def rdp_curve(history: Iterable[GaussianSteps]) -> np.ndarray:
    """Total RDP at every order of :data:`ORDERS` (RDP composes by addition)."""
    total = np.zeros(len(ORDERS))
    for h in history:
        if h.steps:
            total += _one_step_rdp(h.sample_rate, h.noise_multiplier) * h.steps
    return total


@functools.lru_cache(maxsize=1024)
def _one_step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step, cached: a ledger re-composes its whole history on every charge.

    Opacus's ``compute_rdp`` is this same vector times ``steps`` (tens of ms per call for
    fractional orders), so caching it keeps the result bit-identical and makes a charge
    cost milliseconds however long the history is.
    """
    rdp = np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)
        ),
        dtype=float,
    )
    rdp.setflags(write=False)
    return rdp


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """Convert an RDP curve to epsilon at ``delta`` exactly as Opacus does."""
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        # Opacus warns when the best order is the largest one; the bound stays valid, only looser.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def epsilon(history: Sequence[GaussianSteps], delta: float) -> float:
    """Epsilon of a whole history at ``delta`` (0 for an empty history)."""
    return epsilon_from_rdp(rdp_curve(history), delta)


def opacus_accountant(history: Sequence[GaussianSteps]) -> RDPAccountant:
    """An Opacus accountant holding the same history, for independent re-computation."""
    acc = RDPAccountant()
    acc.history = [h.as_tuple() for h in history if h.steps]
    return acc


def calibrate_noise(
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
    """Smallest noise multiplier whose ``steps`` fit in the budget left after ``prior``.

    Returns ``sigma_max`` when even that does not fit: the caller then trains fewer
    rounds and refuses the rest, rather than using noise so large the model is useless.
    """
    if steps <= 0:
        return sigma_max
    base = rdp_curve(prior)
    orders = list(ORDERS)

    def eps_at(sigma: float) -> float:
        return epsilon_from_rdp(
            base
            + np.asarray(
                rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
            ),
            delta,
        )

    return bisect_noise(eps_at, epsilon_target, sigma_min, sigma_max, tolerance)


def bisect_noise(
    eps_at: Callable[[float], float],
    epsilon_target: float,
    sigma_min: float,
    sigma_max: float,
    tolerance: float,
) -> float:
    """Smallest noise multiplier in ``[sigma_min, sigma_max]`` whose epsilon is at most the target.

    The answer is always a point where ``eps_at`` was evaluated and found within the target,
    so calibration meets the target from below (or returns ``sigma_max``, which may not).
    """
    if eps_at(sigma_max) > epsilon_target:
        return sigma_max
    if eps_at(sigma_min) <= epsilon_target:
        return sigma_min
    return bisect_bracket(eps_at, epsilon_target, sigma_min, sigma_max, tolerance)


def bisect_bracket(
    eps_at: Callable[[float], float], epsilon_target: float, lo: float, hi: float, tolerance: float
) -> float:
    """Narrow ``lo`` (over the target) and ``hi`` (within it) to ``tolerance``; returns the ``hi`` end."""
    while hi - lo > tolerance * max(1.0, lo):
        mid = math.sqrt(lo * hi) if hi / lo > 1.5 else (lo + hi) / 2
        if eps_at(mid) <= epsilon_target:
            hi = mid
        else:
            lo = mid
    return hi
