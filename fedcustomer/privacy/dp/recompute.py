"""Recompute a ledger's history with the accounting libraries alone: a compliance officer's check.

Every charge row holds the inputs of its release (Gaussian: noise multiplier, sample rate,
steps; other releases: their epsilon and delta), the budget's delta at the time, and the
accountant that computed its totals (``rdp`` or ``pld`` with its discretisation interval).
For each row, in ledger order, this module rebuilds the partner's spend after it from the
rows up to it (all datasets), calling the libraries directly rather than the ledger's code:

- ``rdp``: ``opacus.accountants.RDPAccountant`` with ``history = [(sigma, q, steps), ...]``,
  ``get_epsilon(delta_target - sum of other releases' deltas)``;
- ``pld``: the Gaussian rows grouped by (sigma, q) with their steps summed (first-charge
  order), each group ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)),
  steps)``, composed as dp-accounting's ``PLDAccountant(ADD_OR_REMOVE_ONE, interval)`` does
  (its own steps, with each one-step PLD built once), ``get_epsilon`` at the same delta;
- then plus the other releases' epsilons (basic composition).

A distributed-DP row (``details.dp_mode == "distributed"``, privacy/dp/distributed.py) also
records the partner's total under both guarantees (``epsilon_total_coordinator``,
``epsilon_total_single_update``): they are recomputed the same way from two histories in
which every distributed row counts with its ``noise_multiplier_coordinator`` or
``noise_multiplier_single_update`` (from its details) and every other Gaussian row as charged,
with the accountant the details name (``accountant``; RDP for rows written before they named one,
whose two totals were always RDP whatever the ledger's accountant).

Rare events (``details.event_probability`` of a row, e.g. a trusting partner's SecAgg+ clip
event; a distributed row's ``clip_event_probability`` for the coordinator view) are summed and
held inside the delta target with ``rare_events.epsilon_with_event``: the total is the
accountant's figure at ``delta_target - sum of deltas - (1 + e^b) * p`` for a ``b`` just above it.

A distributed row's own parameters must also agree with one another (:func:`distributed_row_problems`):
its charged noise multiplier is the one its details say was charged, which is the coordinator's only
when the row says the partner trusted SecAgg+; the single-update noise is the coordinator's over
``sqrt(n_min)``; its clip event is at least ``2e-15`` per contribution, and a trusting row carries it.
A row rewritten whole to agree with itself passes here; ``partner.ledger_audit`` catches it against
the round's audit entry.

A row whose recorded total differs from the recomputation by more than the tolerance, or whose
parameters disagree, is a mismatch. The same rules, as a script with no fedcustomer code, are in the README
("RDP or PLD, and recomputing a ledger").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.privacy_accountant import NeighboringRelation
from opacus.accountants import RDPAccountant

from fedcustomer.privacy.dp.distributed import MODE as _DISTRIBUTED
from fedcustomer.privacy.dp.distributed import clip_probability_total
from fedcustomer.privacy.dp.ledger import APPROX, EVENT_PROBABILITY, GAUSSIAN, Charge
from fedcustomer.privacy.dp.rare_events import epsilon_with_event

DEFAULT_TOLERANCE = 1e-6  # relative: the same libraries agree to the bit; other versions may drift


@dataclass(frozen=True)
class RowCheck:
    """One ledger row: its recorded total against the recomputation."""

    seq: int
    charge_key: str
    dataset: str
    accountant: str
    recorded_total: float
    recomputed_total: float
    recorded_alone: float | None
    recomputed_alone: float | None
    ok: bool
    # distributed-DP rows: the partner's total against the coordinator and against a single update
    recomputed_coordinator: float | None = None
    recomputed_single_update: float | None = None
    # what does not hold among the row's own parameters (distributed-DP rows); empty when consistent
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Libraries:
    """The two accountants, called directly; one-step PLDs built once per check."""

    def __init__(self) -> None:
        self._steps: dict[tuple[float, float, float], Any] = {}

    def rdp(self, history: Sequence[tuple[float, float, int]], delta: float) -> float:
        acc = RDPAccountant()
        acc.history = [h for h in history if h[2]]
        if not acc.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(acc.get_epsilon(delta))

    def pld(self, history: Sequence[tuple[float, float, int]], delta: float, interval: float) -> float:
        groups: dict[tuple[float, float], int] = {}
        for sigma, q, steps in history:
            if steps:
                groups[(sigma, q)] = groups.get((sigma, q), 0) + steps
        if not groups:
            return 0.0
        total = pld_lib.identity(value_discretization_interval=interval)
        for (sigma, q), steps in groups.items():
            total = total.compose(self._one_step(sigma, q, interval).self_compose(steps))
        return float(total.get_epsilon_for_delta(delta))

    def _one_step(self, sigma: float, q: float, interval: float) -> Any:
        key = (sigma, q, interval)
        if key not in self._steps:
            self._steps[key] = pld_lib.from_gaussian_mechanism(
                standard_deviation=sigma,
                sampling_prob=q,
                value_discretization_interval=interval,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            )
        return self._steps[key]

    def composed(
        self,
        accountant: str,
        interval: float | None,
        history: Sequence[tuple[float, float, int]],
        plus: float,
    ) -> Callable[[float], float]:
        """Epsilon at a delta of ``history`` (a copy) plus ``plus`` (the other releases' epsilons)."""
        frozen = list(history)
        return lambda delta: plus + self.gaussian(accountant, interval, frozen, delta)

    def gaussian(
        self,
        accountant: str,
        interval: float | None,
        history: Sequence[tuple[float, float, int]],
        delta: float,
    ) -> float:
        if delta <= 0:
            return math.inf
        if accountant == "pld":
            if interval is None:
                raise ValueError("a PLD row without its discretisation interval")
            return self.pld(history, delta, interval)
        return self.rdp(history, delta)


def recompute(charges: Sequence[Charge], tolerance: float = DEFAULT_TOLERANCE) -> list[RowCheck]:
    """Every row of ``charges`` (all of a partner's, in ledger order) checked against the libraries."""
    libs = _Libraries()
    history: list[tuple[float, float, int]] = []
    views: tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]] = ([], [])
    approx_eps = approx_delta = 0.0
    events = 0.0  # the charged releases' rare events
    view_events = [0.0, 0.0]  # the same for view (a) and view (b)
    out = []
    for c in sorted(charges, key=lambda c: c.seq):
        alone: float | None
        if c.family == GAUSSIAN:
            own = (float(c.noise_multiplier or 0.0), float(c.sample_rate or 0.0), int(c.steps or 0))
            history.append(own)
            distributed = c.details.get("dp_mode") == _DISTRIBUTED
            for view, key in zip(views, _VIEW_KEYS, strict=True):
                view.append((_float_or(c.details.get(key), own[0]), own[1], own[2]) if distributed else own)
            event = _float_or(c.details.get(EVENT_PROBABILITY), 0.0)
            events += event
            if distributed:
                view_events[0] += _float_or(c.details.get("clip_event_probability"), 0.0)
            else:
                view_events = [view_events[0] + event, view_events[1] + event]
            alone = epsilon_with_event(
                libs.composed(c.accountant, c.pld_interval, [own], 0.0),
                c.delta_target,
                event,
            )
        elif c.family == APPROX:
            approx_eps += float(c.epsilon or 0.0)
            approx_delta += float(c.delta or 0.0)
            alone = None if c.epsilon is None else float(c.epsilon)
        else:
            raise ValueError(f"ledger row {c.seq} has an unknown family {c.family!r}")
        total = approx_eps
        if any(h[2] for h in history):
            total = epsilon_with_event(
                libs.composed(c.accountant, c.pld_interval, history, approx_eps),
                c.delta_target - approx_delta,
                events,
            )
        ok = _close(c.epsilon_total, total, tolerance) and (
            alone is None or c.epsilon is None or _close(c.epsilon, alone, tolerance)
        )
        both: list[float | None] = [None, None]
        if c.family == GAUSSIAN and c.details.get("dp_mode") == _DISTRIBUTED:
            # the details name the accountant of both totals; rows written before they did used RDP for them
            by = str(c.details.get("accountant", "rdp"))
            for i, (view, key) in enumerate(zip(views, _TOTAL_KEYS, strict=True)):
                both[i] = epsilon_with_event(
                    libs.composed(by, c.pld_interval, view, approx_eps),
                    c.delta_target - approx_delta,
                    view_events[i],
                )
                recorded = c.details.get(key)
                ok = ok and recorded is not None and _close(float(recorded), float(both[i] or 0.0), tolerance)
        problems = tuple(row_problems(c, tolerance)) if c.family == GAUSSIAN else ()
        out.append(
            RowCheck(
                c.seq,
                c.charge_key,
                c.dataset,
                c.accountant,
                float(c.epsilon_total),
                total,
                None if c.epsilon is None else float(c.epsilon),
                alone,
                ok and not problems,
                both[0],
                both[1],
                problems,
            )
        )
    return out


def row_problems(c: Charge, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """What does not hold among a Gaussian row's own parameters (empty when they agree).

    The totals are recomputed from the charged triple and the recorded events; these checks make
    sure the events are numbers and, for a distributed-DP row, that the triple and the events agree
    with the row's own trust, survivors and contributions. They catch a row edited carelessly, not one
    rewritten whole to be self-consistent (a trust the partner never accepted, say): that needs the
    round's audit entry, which ``partner.ledger_audit`` holds the ledger against.
    """
    for key in (EVENT_PROBABILITY, "clip_event_probability"):
        raw = c.details.get(key, 0.0)
        value = _float_or(raw, math.nan)
        if not 0.0 <= value < 1.0:
            return [f"{key} {raw!r} is not a probability"]
    return distributed_row_problems(c, tolerance)


def distributed_row_problems(c: Charge, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """What does not hold among a distributed-DP row's parameters (empty for any other row)."""
    d = c.details
    if d.get("dp_mode") != _DISTRIBUTED:
        return []
    problems: list[str] = []
    try:
        sigma_a = float(d["noise_multiplier_coordinator"])
        sigma_b = float(d["noise_multiplier_single_update"])
        n_min = int(d["min_survivors"])
    except (KeyError, TypeError, ValueError) as exc:
        return [f"distributed row lacks a readable {exc}"]
    if n_min < 1 or not sigma_a > 0:
        return [f"distributed row has min_survivors {n_min} and coordinator noise {sigma_a:g}"]
    if not _close(sigma_b, sigma_a / math.sqrt(n_min), tolerance):
        problems.append(
            f"single-update noise {sigma_b:g} is not the coordinator's {sigma_a:g} / sqrt({n_min})"
        )
    trust = d.get("trust_secagg")
    charged = d.get("charged")
    if trust is not True and trust is not False:
        problems.append(f"trust_secagg is {trust!r}, not true or false")
    elif charged != ("coordinator" if trust else "single_update"):
        problems.append(f"charged {charged!r} does not match trust_secagg {trust}")
    view = sigma_a if charged == "coordinator" else sigma_b
    if not _close(float(c.noise_multiplier or 0.0), view, tolerance):
        problems.append(
            f"charged noise multiplier {float(c.noise_multiplier or 0.0):g} is not the {charged} view's {view:g}"
        )
    event = float(d.get(EVENT_PROBABILITY, 0.0))
    if "clip_event_probability" in d:  # rows written before clip events were reserved have neither
        clip_event = float(d["clip_event_probability"])
        contributions = int(d.get("contributions_max", n_min))
        if contributions < n_min:
            problems.append(f"contributions_max {contributions} is below min_survivors {n_min}")
        floor = clip_probability_total(1, max(contributions, n_min))
        if clip_event < floor * (1 - tolerance):
            problems.append(f"clip event {clip_event:g} is below {floor:g} for {contributions} contributions")
        if trust is True and event < clip_event * (1 - tolerance):
            problems.append(f"charged event {event:g} is below the round's clip event {clip_event:g}")
    return problems


# How a distributed-DP row names its two noise multipliers and its two totals (its details).
_VIEW_KEYS = ("noise_multiplier_coordinator", "noise_multiplier_single_update")
_TOTAL_KEYS = ("epsilon_total_coordinator", "epsilon_total_single_update")


def _float_or(value: Any, fallback: float) -> float:
    """A detail as a number; an unreadable one counts as ``fallback`` (its row is flagged by the parameter check)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return fallback


def _close(recorded: float, recomputed: float, tolerance: float) -> bool:
    if math.isinf(recorded) or math.isinf(recomputed):
        return recorded == recomputed
    return abs(recorded - recomputed) <= tolerance * max(1.0, abs(recomputed))
