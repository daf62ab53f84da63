"""Privacy accounting for DP-SGD and Gaussian releases, on Opacus's RDP accountant.

Training rounds are subsampled-Gaussian steps: their composition is tracked exactly
as one Opacus ``RDPAccountant`` would track it (same history, same orders, same
RDP-to-(epsilon, delta) conversion), so the epsilon we report can be recomputed by
anyone from the recorded ``(noise_multiplier, sample_rate, steps)`` triples.
"""

from __future__ import annotations

import functools
import importlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

from fedcustomer.errors import ConfigError

if TYPE_CHECKING:
    from opacus.accountants import RDPAccountant

ACCOUNTANT = "rdp"  # this module's accountant; ``accountants.Accountant`` selects it or PLD
# Opacus's RDPAccountant.DEFAULT_ALPHAS, written out so that importing this module (every command
# that opens a ledger) does not import Opacus and torch, seconds before `budget show` prints;
# tests/privacy/dp/test_accounting.py checks that the two lists stay the same.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def _rdp() -> ModuleType:
    """Opacus's RDP analysis, imported the first time an RDP figure is computed."""
    return importlib.import_module("opacus.accountants.analysis.rdp")


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
        _rdp().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ORDERS)),
        dtype=float,
    )
    rdp.setflags(write=False)
    return rdp


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders: Sequence[float] = ORDERS) -> float:
    """Convert an RDP curve (at ``orders``) to epsilon at ``delta`` exactly as Opacus does."""
    if not np.any(rdp):
        return 0.0
    with warnings.catch_warnings():
        # Opacus warns when the best order is the largest one; the bound stays valid, only looser.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = _rdp().get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def epsilon(history: Sequence[GaussianSteps], delta: float) -> float:
    """Epsilon of a whole history at ``delta`` (0 for an empty history)."""
    return _epsilon_of(tuple(h.as_tuple() for h in history), float(delta))


@functools.lru_cache(maxsize=256)
def _epsilon_of(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Epsilon of an exact history, remembered: a round asks it three times of the same triples
    (the check before training, the charge's total and the round alone), and the conversion
    from RDP is Opacus's full search over orders. Same triples in the same order, same float."""
    return epsilon_from_rdp(rdp_curve(GaussianSteps(*h) for h in history), delta)


def opacus_accountant(history: Sequence[GaussianSteps]) -> RDPAccountant:
    """An Opacus accountant holding the same history, for independent re-computation."""
    from opacus.accountants import RDPAccountant

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

    def eps_over(orders: Sequence[float], at: Sequence[int]) -> Callable[[float], float]:
        def eps_at(sigma: float) -> float:
            rdp = _rdp().compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=list(orders))
            return epsilon_from_rdp(base[list(at)] + np.asarray(rdp), delta, orders)

        return eps_at

    def exact(sigma: float) -> float:
        # Opacus's compute_rdp is the one-step vector times ``steps``; cached, so the charge that
        # follows (the same sample rate and noise) reuses what calibration computed.
        return epsilon_from_rdp(base + _one_step_rdp(sample_rate, sigma) * steps, delta)

    # Opacus's epsilon is a minimum over the orders, so over the integer orders alone (closed
    # form, several times cheaper than the fractional ones) it is never below the exact one:
    # the noise found with them fits the budget and brackets the exact search from above.
    upper = eps_over([ORDERS[i] for i in _INTEGER_AT], _INTEGER_AT)
    plan = (tuple(h.as_tuple() for h in prior), steps, epsilon_target, delta, sigma_min, sigma_max, tolerance)
    known, guess = _NEARBY.lookup(plan, sample_rate)
    if known is not None:  # these very inputs: the same answer again
        return known
    if guess is None:  # no neighbour: a noise that fits over a few orders near the optimum
        guess = _fitting_guess(
            base, sample_rate, steps, epsilon_target, delta, sigma_min, sigma_max, tolerance
        )
    sigma = bisect_noise_from_above(
        exact, upper, epsilon_target, sigma_min, sigma_max, tolerance, guess=guess
    )
    _NEARBY.remember(plan, sample_rate, sigma)
    return sigma


_INTEGER_AT: tuple[int, ...] = tuple(i for i, a in enumerate(ORDERS) if float(a).is_integer())
_INTEGER_ORDERS = np.array([ORDERS[i] for i in _INTEGER_AT])


def integer_order_rdp(sample_rate: float, noise_multiplier: float, orders: np.ndarray) -> np.ndarray:
    """One step's RDP at integer orders, all at once: the closed form Opacus sums order by order.

    ``log A(a) = logsumexp_i [log C(a, i) + i log q + (a - i) log(1 - q) + (i^2 - i) / (2 sigma^2)]``
    over ``i = 0..a``, RDP ``log A / (a - 1)`` (Mironov, Talwar and Zhang 2019). Used only to
    place the search: every answer is confirmed with Opacus's own figures.
    """
    if sample_rate >= 1.0:
        return orders / (2 * noise_multiplier**2)
    i = np.arange(int(orders.max()) + 1, dtype=float)
    a = orders[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (
            special.gammaln(a + 1)
            - special.gammaln(i + 1)
            - special.gammaln(np.maximum(a - i, 0) + 1)
            + i * math.log(sample_rate)
            + (a - i) * math.log1p(-sample_rate)
            + (i * i - i) / (2 * noise_multiplier**2)
        )
    terms = np.where(i <= a, terms, -np.inf)
    return np.asarray(special.logsumexp(terms, axis=1) / (orders - 1), dtype=float)


def _order_epsilons(rdp: np.ndarray, orders: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon at each order, Opacus's conversion (``get_privacy_spent`` takes their minimum)."""
    return np.asarray(rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders))


def _fitting_guess(
    base: np.ndarray,
    sample_rate: float,
    steps: int,
    epsilon_target: float,
    delta: float,
    sigma_min: float,
    sigma_max: float,
    tolerance: float,
) -> float | None:
    """A noise that fits the budget over a few of Opacus's orders (so over all of them), near the answer.

    The integer orders in closed form (vectorised, microseconds) find the best integer order;
    a fine bisection over Opacus's own RDP at the orders within one of it follows. Epsilon over a
    subset of the orders is never below the exact one, so the answer fits; where the subset
    holds the exact optimum's order (the usual case), it is the exact answer to a fraction of
    the tolerance, which :func:`bisect_noise_from_above` confirms with two full evaluations.
    None when the closed form finds nothing inside the range (the exact search decides).
    """
    fine = tolerance / 4
    ints = _INTEGER_ORDERS
    base_int = base[list(_INTEGER_AT)]

    def eps_int(sigma: float) -> float:
        rdp = base_int + steps * integer_order_rdp(sample_rate, sigma, ints)
        return float(np.nanmin(_order_epsilons(rdp, ints, delta)))

    hi = bisect_noise(eps_int, epsilon_target, sigma_min, sigma_max, fine)
    if not (sigma_min < hi < sigma_max):
        return None
    at = base_int + steps * integer_order_rdp(sample_rate, hi, ints)
    best = float(ints[int(np.nanargmin(_order_epsilons(at, ints, delta)))])
    near = [i for i, a in enumerate(ORDERS) if abs(a - best) <= 1.05]
    orders = [ORDERS[i] for i in near]

    def eps_near(sigma: float) -> float:
        rdp = _rdp().compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
        return epsilon_from_rdp(base[near] + np.asarray(rdp), delta, orders)

    gap = hi * 4e-3  # the fractional orders usually save well under 1% of the noise
    while hi > sigma_min:
        lo = max(sigma_min, hi - gap)
        if eps_near(lo) > epsilon_target:
            return bisect_bracket(eps_near, epsilon_target, lo, hi, fine)
        hi, gap = lo, gap * 4
    return sigma_min


class _Nearby:
    """Noise found per process for a plan (history, steps, target) at other sample rates.

    Partners of an IID split differ by a row or two, so their sample rates, and the noise they
    need, differ by less than the search's tolerance: the nearest one found is the first guess,
    which the exact search then confirms or moves away from (never taken unchecked).
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._found: OrderedDict[tuple[object, ...], list[tuple[float, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, plan: tuple[object, ...], sample_rate: float) -> tuple[float | None, float | None]:
        """(the noise found for this very sample rate, else None; the nearest one's as a guess)."""
        with self._lock:
            found = list(self._found.get(plan, ()))
        for rate, sigma in found:
            if rate == sample_rate:
                return sigma, None
        if not found:
            return None, None
        return None, min(found, key=lambda f: abs(math.log(f[0] / sample_rate)))[1]

    def remember(self, plan: tuple[object, ...], sample_rate: float, sigma: float) -> None:
        with self._lock:
            found = self._found.setdefault(plan, [])
            found.append((sample_rate, sigma))
            del found[: -self.size]
            self._found.move_to_end(plan)
            while len(self._found) > self.size:
                self._found.popitem(last=False)


_NEARBY = _Nearby()


def bisect_noise_from_above(
    exact: Callable[[float], float],
    upper: Callable[[float], float],
    epsilon_target: float,
    sigma_min: float,
    sigma_max: float,
    tolerance: float,
    *,
    guess: float | None = None,
) -> float:
    """:func:`bisect_noise` on ``exact``, started from ``guess`` or from the answer of ``upper``,
    a cheaper epsilon never below the exact one.

    The answer meets the contract of an exact bisection: a noise whose exact epsilon was
    evaluated and found within the target, less than ``tolerance`` above one found over it (or
    ``sigma_min``, or ``sigma_max`` when even that does not fit). ``guess`` and ``upper`` only
    place the bracket: a guess over the target, or an ``upper`` that ever fell below ``exact``,
    leaves the decision to the plain exact search.
    """
    close = guess is not None and sigma_min < guess < sigma_max and exact(guess) <= epsilon_target
    if close:
        assert guess is not None
        hi = guess
    else:
        hi = bisect_noise(upper, epsilon_target, sigma_min, sigma_max, tolerance)
        if hi >= sigma_max or exact(hi) > epsilon_target:
            return bisect_noise(exact, epsilon_target, sigma_min, sigma_max, tolerance)
    # first look one tolerance below a guess (usually the answer already), 2% below upper's answer
    gap = tolerance * max(1.0, hi / (1 + tolerance)) * 0.999 if close else hi * 0.02
    while hi > sigma_min:
        lo = max(sigma_min, hi - gap)
        if exact(lo) > epsilon_target:
            return bisect_bracket(exact, epsilon_target, lo, hi, tolerance)
        hi, gap = lo, gap * 4  # still within the target: look further down
    return sigma_min


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
