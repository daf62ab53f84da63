"""Epsilon of a release that equals an accounted mechanism except on a rare event.

If ``M'`` is (epsilon, d)-DP and, on every input, ``M`` differs from ``M'`` only on an event
of probability at most ``p``, then ``M`` is (epsilon, d + (1 + e^epsilon) p)-DP:

    P[M(D) in S] <= P[M'(D) in S] + p <= e^eps (P[M(D') in S] + p) + d + p.

SecAgg+'s clipping in distributed DP is such an event (privacy/dp/distributed.py): a
partner's noised value is clipped only when its batch or its noise is far out in a tail. The
reserve ``(1 + e^epsilon) p`` depends on the epsilon it protects, so :func:`epsilon_with_event`
finds the two together: an epsilon computed at ``delta`` minus a reserve sized for an epsilon
at least as large. Ledger, recomputation, calibration and reports all use this one rule, so a
figure stated at the target delta already holds that delta's share for the event.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: Relative slack of the epsilon a reserve is sized for (a reserve sized for a larger epsilon is
#: larger, so still sound); with it the usual tiny event is settled by two evaluations.
_SLACK = 1e-6
_ITERATE = 8  # fixed-point steps before the search below
_SCAN = 32  # candidate epsilons tried between the lower bound and the largest one delta can hold
_BISECT = 40  # halvings between the last candidate that failed and the first that held


def event_reserve(epsilon: float, probability: float) -> float:
    """The delta a rare event of ``probability`` costs a release whose epsilon is at most ``epsilon``."""
    if probability <= 0:
        return 0.0
    if epsilon > 700:  # e^epsilon overflows a float: no finite delta covers it
        return math.inf
    return (1.0 + math.exp(epsilon)) * probability


def epsilon_with_event(epsilon_at: Callable[[float], float], delta: float, probability: float) -> float:
    """The smallest epsilon found that holds at ``delta`` with the event's reserve inside it.

    ``epsilon_at(d)``: the accounted mechanism's epsilon at delta ``d`` (non-increasing in ``d``;
    ``inf`` when ``d <= 0`` is fine). With no event this is ``epsilon_at(delta)``. Otherwise the
    answer is ``epsilon_at(delta - event_reserve(b, probability))`` for a ``b`` it does not exceed,
    so the release is (answer, delta)-DP; ``inf`` when no such ``b`` is found below the epsilon
    whose reserve alone fills ``delta``.
    """
    if probability <= 0:
        return epsilon_at(delta)
    if 2 * probability >= delta:
        return math.inf

    def at(bound: float) -> float:
        reserve = event_reserve(bound, probability)
        return epsilon_at(delta - reserve) if reserve < delta else math.inf

    # the reserve is at least 2p (epsilon >= 0): the epsilon there is a lower bound on the answer
    low = epsilon_at(delta - 2 * probability)
    if not math.isfinite(low):
        return math.inf
    # a fixed point from below: the usual tiny event settles at once, a larger one in a few steps
    failed = low
    for _ in range(_ITERATE):
        bound = failed * (1 + _SLACK) + _SLACK
        found = at(bound)
        if found <= bound:
            return found
        if not math.isfinite(found):
            break
        failed = found  # a bound that failed (the answer lies above it)
    # a reserve near delta: the first of evenly spaced bounds that holds, then the smallest nearby
    ceiling = math.log(delta / probability - 1)  # its reserve is all of delta
    held = None
    bound = failed
    for i in range(1, _SCAN):
        candidate = bound + (ceiling - bound) * i / _SCAN
        if at(candidate) <= candidate:
            held = candidate
            break
        failed = candidate
    if held is None:
        return math.inf
    for _ in range(_BISECT):
        middle = (failed + held) / 2
        if at(middle) <= middle:
            held = middle
        else:
            failed = middle
    return at(held)
