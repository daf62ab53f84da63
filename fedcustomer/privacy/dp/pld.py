"""Privacy accounting with privacy loss distributions (PLD), on Google's ``dp-accounting``.

PLD accounting composes the exact privacy loss distribution of each subsampled-Gaussian
step, so for the same history it reports a smaller epsilon than RDP's conversion (often
10-20% smaller), which buys less noise for the same target.

What is computed, so that anyone can recompute it with ``dp_accounting`` alone:

- the Gaussian history is **grouped**: charges with the same (noise multiplier, sample
  rate) are one group whose steps are summed, groups in the order of their first charge
  (composition commutes, so this is the same mechanism; grouping makes a run calibrated
  for ``rounds x steps`` report exactly what its calibration promised);
- each group is ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)``,
  the groups a ``ComposedDpEvent``;
- the event is composed by ``PLDAccountant(ADD_OR_REMOVE_ONE, value_discretization_interval)``
  and read with ``get_epsilon(delta)``. The accountant builds every Gaussian PLD with
  ``pessimistic_estimate=True`` (the library's default, which it does not let a caller
  change): privacy losses are rounded *up* to the grid, so the epsilon is an upper bound
  whatever the interval; a coarser interval is faster and slightly looser.

This module repeats the accountant's own steps (identity, then ``compose`` of each group's
``self_compose``) to cache the single-step PLDs and composed prefixes; the figures are
the accountant's, bit for bit (tests compare them).
"""

from __future__ import annotations

import importlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accounting import GaussianSteps, bisect_bracket, bisect_noise

if TYPE_CHECKING:
    from dp_accounting import dp_event

#: The discretisation of privacy losses: the library's default, 1e-4 nats. Pessimistic
#: rounding makes any interval sound; 1e-4 keeps the epsilon within ~0.1% of the exact
#: PLD for the histories a partner accrues; building one step's PLD takes about a second.
VALUE_DISCRETIZATION_INTERVAL = 1e-4
NEIGHBOURING = (
    "ADD_OR_REMOVE_ONE"  # dp_accounting's NeighboringRelation, as Opacus's RDP: one customer added or removed
)


def _pld_lib() -> ModuleType:
    """dp_accounting's PLD module, imported the first time a PLD is built (not by every command
    that opens a ledger: importing the library takes about a second)."""
    return importlib.import_module("dp_accounting.pld.privacy_loss_distribution")


def _neighbouring() -> Any:
    from dp_accounting.privacy_accountant import NeighboringRelation

    return NeighboringRelation[NEIGHBOURING]


#: Calibration searches on this coarser grid first (10x faster), then checks the answer on the
#: ledger's own grid, which is almost always within the search tolerance of it (both are
#: pessimistic; the finer one is the tighter): two evaluations on the fine grid instead of ~15.
COARSE_SEARCH_INTERVAL = 1e-3

_PREFIXES: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # (interval, *groups) -> composed PLD
_PREFIXES_MAX = 8  # composed PLDs are a few MB each
_ONE_STEP: OrderedDict[tuple[float, float, float], Any] = OrderedDict()  # (sigma, q, interval) -> PLD
_ONE_STEP_MAX = 16
_LOCK = threading.Lock()


def check_interval(interval: float) -> float:
    """Refuse a discretisation interval that is not a small positive number."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (0 < interval <= 0.1):
        raise ConfigError(f"the PLD discretisation interval must be in (0, 0.1], got {interval!r}")
    return float(interval)


def grouped(history: Sequence[GaussianSteps]) -> list[GaussianSteps]:
    """Steps of identical (noise multiplier, sample rate) summed; groups in first-charge order."""
    steps: dict[tuple[float, float], int] = {}
    for h in history:
        if h.steps:
            key = (float(h.noise_multiplier), float(h.sample_rate))
            steps[key] = steps.get(key, 0) + int(h.steps)
    return [GaussianSteps(sigma, q, n) for (sigma, q), n in steps.items()]


def dp_event_of(history: Sequence[GaussianSteps]) -> dp_event.DpEvent:
    """The ``dp_accounting`` event the PLD accountant composes for this history."""
    from dp_accounting import dp_event

    return dp_event.ComposedDpEvent(
        [
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(g.sample_rate, dp_event.GaussianDpEvent(g.noise_multiplier)),
                g.steps,
            )
            for g in grouped(history)
        ]
    )


def epsilon(
    history: Sequence[GaussianSteps], delta: float, interval: float = VALUE_DISCRETIZATION_INTERVAL
) -> float:
    """Epsilon of a whole history at ``delta`` (0 for an empty one)."""
    groups = grouped(history)
    if not groups:
        return 0.0
    return float(_composed(tuple(g.as_tuple() for g in groups), interval).get_epsilon_for_delta(delta))


def calibrate_noise(
    prior: Sequence[GaussianSteps],
    sample_rate: float,
    steps: int,
    epsilon_target: float,
    delta: float,
    *,
    interval: float = VALUE_DISCRETIZATION_INTERVAL,
    sigma_min: float = 0.3,
    sigma_max: float = 50.0,
    tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier whose ``steps`` fit in the budget left after ``prior`` (PLD).

    Each candidate is composed exactly as :func:`epsilon` would compose ``prior`` plus the
    new steps, so the spend reported once those steps are charged is the one found here.
    """
    if steps <= 0:
        return sigma_max
    exact = _eps_after(prior, sample_rate, steps, delta, interval)
    if interval >= COARSE_SEARCH_INTERVAL:
        return bisect_noise(exact, epsilon_target, sigma_min, sigma_max, tolerance)
    coarse = _eps_after(prior, sample_rate, steps, delta, COARSE_SEARCH_INTERVAL)
    guess = bisect_noise(coarse, epsilon_target, sigma_min, sigma_max, tolerance)
    if guess >= sigma_max or exact(guess) > epsilon_target:  # the grids disagree: search on the exact one
        return bisect_noise(exact, epsilon_target, sigma_min, sigma_max, tolerance)
    below = guess * (1 - tolerance)
    if below <= sigma_min or exact(below) > epsilon_target:
        return guess  # within the tolerance of the exact grid's answer
    lo = max(sigma_min, guess * 0.99)
    if lo >= below:
        return below
    if exact(lo) <= epsilon_target:
        return bisect_noise(exact, epsilon_target, sigma_min, lo, tolerance)
    return bisect_bracket(exact, epsilon_target, lo, below, tolerance)


def exact_gaussian_noise(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier for which ONE Gaussian release (sensitivity 1, no sampling) is (epsilon, delta)-DP.

    The exact privacy profile of the Gaussian mechanism (Balle and Wang, ICML 2018):
    ``delta(eps) = Phi(1/(2s) - eps*s) - e^eps * Phi(-1/(2s) - eps*s)``, decreasing in ``s``;
    solved by bisection in log space. Any sound accountant (PLD's pessimistic grid included)
    needs at least this much noise, so calibration searches just above it.
    """
    if not (epsilon > 0) or not (0 < delta < 1):
        raise ConfigError(f"a Gaussian release needs epsilon > 0 and 0 < delta < 1, got ({epsilon}, {delta})")

    def profile(s: float) -> float:
        a = 1 / (2 * s)
        return _phi(a - epsilon * s) - math.exp(epsilon) * _phi(-a - epsilon * s) if epsilon < 700 else 0.0

    lo, hi = 1e-3, 1.0  # the smallest noise any calibration here considers
    while profile(hi) > delta:
        lo, hi = hi, hi * 2
    while hi / lo > 1 + 1e-12:
        mid = math.sqrt(lo * hi)
        if profile(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _eps_after(
    prior: Sequence[GaussianSteps], sample_rate: float, steps: int, delta: float, interval: float
) -> Callable[[float], float]:
    """Epsilon of ``prior`` plus ``steps`` at a candidate noise, composed exactly as :func:`epsilon` would."""
    groups = grouped(prior)
    base = _composed(tuple(g.as_tuple() for g in groups), interval)

    def eps_at(sigma: float) -> float:
        if any(g.noise_multiplier == sigma and g.sample_rate == sample_rate for g in groups):
            return epsilon([*prior, GaussianSteps(sigma, sample_rate, steps)], delta, interval)
        one = _one_step(sigma, sample_rate, interval, keep=False)
        return float(base.compose(one.self_compose(steps)).get_epsilon_for_delta(delta))

    return eps_at


def _composed(groups: tuple[tuple[float, float, int], ...], interval: float) -> Any:
    """identity, then each group's ``self_compose`` composed in order (the PLD accountant's steps).

    The longest composed prefix still cached is the start: a run's rounds only change the
    last group, so a charge costs one ``self_compose`` and one ``compose``.
    """
    start, done = _pld_lib().identity(value_discretization_interval=interval), 0
    with _LOCK:
        for n in range(len(groups), 0, -1):
            cached = _PREFIXES.get((interval, *groups[:n]))
            if cached is not None:
                _PREFIXES.move_to_end((interval, *groups[:n]))
                start, done = cached, n
                break
    result = start
    for n in range(done, len(groups)):
        sigma, q, steps = groups[n]
        result = result.compose(_one_step(sigma, q, interval).self_compose(steps))
        if n >= len(groups) - 2:  # keep the whole history and the one without its last group
            _remember((interval, *groups[: n + 1]), result)
    return result


def _remember(key: tuple[Any, ...], value: Any) -> None:
    with _LOCK:
        _PREFIXES[key] = value
        _PREFIXES.move_to_end(key)
        while len(_PREFIXES) > _PREFIXES_MAX:
            _PREFIXES.popitem(last=False)


def _one_step(sigma: float, sample_rate: float, interval: float, keep: bool = True) -> Any:
    """One step's PLD, cached: building it is most of the cost of a charge.

    Calibration's candidates are not kept (``keep=False``) unless already there; the
    noise it settles on is built again once, by the first charge.
    """
    key = (sigma, sample_rate, interval)
    with _LOCK:
        if key in _ONE_STEP:
            _ONE_STEP.move_to_end(key)
            return _ONE_STEP[key]
    built = _pld_lib().from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=sample_rate,
        value_discretization_interval=interval,
        neighboring_relation=_neighbouring(),
    )
    if keep:
        with _LOCK:
            _ONE_STEP[key] = built
            while len(_ONE_STEP) > _ONE_STEP_MAX:
                _ONE_STEP.popitem(last=False)
    return built
