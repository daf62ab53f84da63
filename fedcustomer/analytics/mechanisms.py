"""Noise for released aggregates (OpenDP) and the intervals that come with it.

Every release is a vector of per-cell statistics in which one customer touches at most
one cell per statistic. Values are divided by their per-customer *weight* (1 for a
count, ``max(|lower|, |upper|)`` for a clamped sum) so that one customer changes the
normalised vector by at most 1 in each of ``m`` statistics: L1 sensitivity ``m``, L2
sensitivity ``sqrt(m)``. The noise is drawn by OpenDP's floating-point-safe samplers
(``make_laplace`` / ``make_gaussian``), never by numpy.

Laplace releases are (epsilon, 0)-DP and OpenDP's privacy map confirms the epsilon.
Gaussian releases are calibrated with the partner's accountant (RDP, or PLD where its home
selects it) exactly as its ledger accounts them (one full-batch Gaussian step, ``q = 1``),
so they compose tightly with DP-SGD training, and a PLD partner's release carries the
smaller noise its tighter accounting allows (about 7% less at epsilon 1, delta 1e-6).

Intervals cover the noise only: not sampling error, and not the bias of clamping.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import opendp.domains as dp_domains
import opendp.measurements as dp_measurements
import opendp.metrics as dp_metrics
from opendp.mod import enable_features

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy.dp.accounting import GaussianSteps

# Not opendp.prelude: it also imports OpenDP's scikit-learn extras (1.4 s), and a node's
# Flower ClientApp process, started afresh for every message, imports this module.
enable_features("contrib")

LAPLACE = "laplace"
GAUSSIAN = "gaussian"
MECHANISMS = (LAPLACE, GAUSSIAN)


@dataclass(frozen=True)
class Noise:
    """Noise of one released element: independent Laplace scales and Gaussian sigmas, summed."""

    laplace: tuple[float, ...] = ()
    gaussian: tuple[float, ...] = ()

    def __add__(self, other: Noise) -> Noise:
        return Noise(self.laplace + other.laplace, self.gaussian + other.gaussian)

    def scaled(self, factor: float) -> Noise:
        f = abs(float(factor))
        return Noise(tuple(b * f for b in self.laplace), tuple(s * f for s in self.gaussian))

    @property
    def sd(self) -> float:
        """Standard deviation of the total noise."""
        return math.sqrt(sum(2 * b * b for b in self.laplace) + sum(s * s for s in self.gaussian))

    def halfwidth(self, confidence: float) -> float:
        """``t`` with P(|noise| <= t) = confidence."""
        return noise_halfwidth(self, confidence)


@dataclass(frozen=True)
class Calibration:
    """How one release vector is noised, and what it costs."""

    mechanism: str
    epsilon: float
    delta: float
    statistics: int  # m: how many statistics one customer touches (one cell each)
    normalised_scale: float  # Laplace b or Gaussian sigma on the normalised vector
    noise_multiplier: float | None = None  # Gaussian: sigma / L2 sensitivity, for the ledger
    accountant: str | None = None  # Gaussian: the accountant the noise was sized with (rdp or pld)
    pld_interval: float | None = None  # its discretisation interval (PLD only)

    def gaussian_steps(self) -> GaussianSteps:
        assert self.noise_multiplier is not None
        return GaussianSteps(self.noise_multiplier, 1.0, 1)

    def noise_for(self, weight: float) -> Noise:
        scale = self.normalised_scale * abs(float(weight))
        return Noise(laplace=(scale,)) if self.mechanism == LAPLACE else Noise(gaussian=(scale,))


def calibrate(
    mechanism: str, epsilon: float, delta: float, statistics: int, accountant: Accountant | None = None
) -> Calibration:
    """Noise so that the whole vector costs exactly (epsilon, delta) under ``accountant`` (RDP when None)."""
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    if not (epsilon > 0) or not math.isfinite(epsilon):
        raise ConfigError(f"epsilon must be a positive number, got {epsilon}")
    if statistics < 1:
        raise ConfigError("a release needs at least one statistic")
    if mechanism == LAPLACE:
        if delta != 0:
            raise ConfigError(f"the Laplace mechanism is (epsilon, 0)-DP; set delta: 0 (got {delta})")
        return Calibration(LAPLACE, epsilon, 0.0, statistics, statistics / epsilon)
    if not (0 < delta < 1):
        raise ConfigError(f"the Gaussian mechanism needs 0 < delta < 1, got {delta}")
    acc = accountant if accountant is not None else Accountant()
    sigma = _release_sigma(acc, float(epsilon), float(delta))
    return Calibration(
        GAUSSIAN,
        epsilon,
        delta,
        statistics,
        sigma * math.sqrt(statistics),
        noise_multiplier=sigma,
        accountant=acc.name,
        pld_interval=acc.interval,
    )


@functools.lru_cache(maxsize=256)
def _release_sigma(acc: Accountant, epsilon: float, delta: float) -> float:
    """The noise multiplier of one Gaussian release, checked against the accountant.

    A pure function of its arguments, kept: a PLD calibration takes seconds, and a query
    (or an audit replaying it hundreds of times) asks the same question again.
    """
    sigma = acc.calibrate_release(epsilon, delta)
    if acc.epsilon([GaussianSteps(sigma, 1.0, 1)], delta) > epsilon * (1 + 1e-6):
        raise ConfigError(f"epsilon {epsilon} at delta {delta} needs more Gaussian noise than supported")
    return sigma


def release(normalised: Sequence[float], cal: Calibration) -> np.ndarray:
    """Add the calibrated noise to a normalised vector with OpenDP; returns the noisy vector."""
    values = [float(v) for v in normalised]
    if not values:
        return np.zeros(0)
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("a release vector holds a non-finite value; check the declared bounds")
    domain = dp_domains.vector_domain(dp_domains.atom_domain(T=float, nan=False))
    if cal.mechanism == LAPLACE:
        meas = dp_measurements.make_laplace(domain, dp_metrics.l1_distance(T=float), cal.normalised_scale)
        spent = meas.map(float(cal.statistics))
        if spent > cal.epsilon * (1 + 1e-9):  # OpenDP's own map must agree with our calibration
            raise ConfigError(f"OpenDP maps this release to epsilon {spent}, above the planned {cal.epsilon}")
    else:
        meas = dp_measurements.make_gaussian(domain, dp_metrics.l2_distance(T=float), cal.normalised_scale)
    return np.asarray(meas(values), dtype=float)


def noise_halfwidth(noise: Noise, confidence: float) -> float:
    """Half-width of the central ``confidence`` interval of a sum of Laplace and Gaussian noise."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    lap = tuple(sorted(round(b, 12) for b in noise.laplace if b > 0))
    gauss = math.sqrt(sum(s * s for s in noise.gaussian))
    return _halfwidth(lap, round(gauss, 12), round(confidence, 9))


@lru_cache(maxsize=4096)
def _halfwidth(lap: tuple[float, ...], gauss: float, confidence: float) -> float:
    from scipy import signal, stats  # 1.5 s to import: only where an interval is computed

    if not lap and gauss == 0:
        return 0.0
    if not lap:
        return gauss * float(stats.norm.ppf(0.5 + confidence / 2))
    if len(lap) == 1 and gauss == 0:
        return lap[0] * math.log(1 / (1 - confidence))
    sd = math.sqrt(sum(2 * b * b for b in lap) + gauss * gauss)
    if len(lap) > 50:  # many comparable terms: the sum is normal to well within display precision
        big = max(lap)
        if big * big * 2 < 0.05 * sd * sd:
            return sd * float(stats.norm.ppf(0.5 + confidence / 2))
    # Numerical convolution of the densities on a grid wide enough for the heaviest tail.
    half = 25 * sd
    n = 1 << 15
    x = np.linspace(-half, half, n)
    dx = x[1] - x[0]
    density: np.ndarray | None = None
    leftover = gauss * gauss
    for b in lap:
        if b < 20 * dx:  # too narrow to resolve: its variance is folded into the Gaussian part
            leftover += 2 * b * b
            continue
        pdf = np.exp(-np.abs(x) / b) / (2 * b)
        density = pdf if density is None else signal.fftconvolve(density, pdf, mode="same") * dx
    if leftover > 0 and math.sqrt(leftover) >= 20 * dx:
        pdf = stats.norm.pdf(x, scale=math.sqrt(leftover))
        density = pdf if density is None else signal.fftconvolve(density, pdf, mode="same") * dx
    if density is None:
        return sd * float(stats.norm.ppf(0.5 + confidence / 2))
    density = np.clip(density, 0, None)
    cdf = np.cumsum(density) * dx
    cdf /= cdf[-1]
    # symmetric: P(|X| <= t) = 2 F(t) - 1
    target = 0.5 + confidence / 2
    return float(max(np.interp(target, cdf, x), 0.0))


def box_ratio(
    num: float, num_hw: float, den: float, den_hw: float, lo: float, hi: float
) -> tuple[float, float, float]:
    """Estimate and interval of num/den from separate intervals, clipped to [lo, hi].

    With each interval at level 1 - alpha/2 the ratio interval holds with at least
    1 - alpha (Bonferroni): conservative, never too narrow.
    """
    estimate = min(max(num / den, lo), hi) if den > 0 else (lo + hi) / 2
    d_lo, d_hi = den - den_hw, den + den_hw
    if d_lo <= 0:
        return estimate, lo, hi
    n_lo, n_hi = num - num_hw, num + num_hw
    corners = [n_lo / d_lo, n_lo / d_hi, n_hi / d_lo, n_hi / d_hi]
    # Each end clipped into [lo, hi]: when every corner falls outside the range (a small group's noisy
    # sum below zero), the interval shrinks to the bound the estimate was clipped to, never past it.
    low = min(max(lo, min(corners)), hi)
    high = max(min(hi, max(corners)), lo)
    return estimate, low, high
