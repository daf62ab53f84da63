"""The one release path: project the spend, calibrate, refuse, charge once per step, release or re-send.

Horizontal rounds, vertical steps and analytics queries all let a DP result out through
here, so the order that keeps a partner's privacy claim true is written once:

1. **re-send**: a step (a run's round, a query) the ledger already charged gets the result
   kept when it was paid: never a second draw, never a second charge;
2. **calibrate**: the noise multiplier spends what remains of the budget over the steps that
   remain (:func:`calibrate_noise`);
3. **project and refuse**: a step that would take the partner past its target is refused,
   and the refusal recorded in the ledger, before anything is computed (:func:`check`);
4. **charge idempotently** by the step's charge key; the result is kept, unpaid, before the
   charge (or, with :class:`ChargedResults`, in the charge's own ledger transaction), so a crash
   between charge and release leaves a result to re-send rather than a charge with nothing to
   show (:func:`release`);
5. **release** the result, kept again as paid (or, for results kept with
   ``rewrite_paid=False``, left as written: the ledger's charge marks it paid).

Every refusal, whatever the step, is a :class:`BudgetExhausted` with one reason format. This module
sits in the privacy layer: it takes a ledger, a cache directory and the mechanism's inputs,
and knows nothing of partners, stores or models.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from fedcustomer.errors import BudgetExhausted
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.ledger import BudgetLedger, Charge

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class Step:
    """One release of a run (a round, a vertical step, a query): its ledger key and its name in reasons."""

    charge_key: str  # the ledger's idempotency key, e.g. ``run:<id>:round:<r>`` or ``query:<id>``
    label: str  # how a reason names it, e.g. "round 3"
    run_id: str | None = None
    round: int | None = None
    query_id: str | None = None
    cache_name: str | None = None  # the kept result's file name (without suffix); default: the key, made safe

    @property
    def file_stem(self) -> str:
        return self.cache_name if self.cache_name is not None else safe_name(self.charge_key)


@dataclass(frozen=True)
class Mechanism:
    """What one release costs and how the ledger records it: Gaussian steps, or an (epsilon, delta) pair."""

    name: str
    gaussian: GaussianSteps | None = None
    epsilon_delta: tuple[float, float] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Gaussian only: the chance the release differs from the steps' mechanism (ledger.EVENT_PROBABILITY)
    event_probability: float = 0.0

    def __post_init__(self) -> None:
        if (self.gaussian is None) == (self.epsilon_delta is None):
            raise ValueError("a mechanism costs either Gaussian steps or an (epsilon, delta) pair")
        if self.event_probability and self.gaussian is None:
            raise ValueError("only a Gaussian release carries a rare event's probability")

    def gaussian_part(self) -> list[GaussianSteps]:
        return [self.gaussian] if self.gaussian is not None else []

    def approx_part(self) -> list[tuple[float, float]]:
        return [self.epsilon_delta] if self.epsilon_delta is not None else []


@dataclass(frozen=True)
class Released(Generic[R]):
    """A released result with the ledger row that paid for it; ``resent`` when it was paid before."""

    result: R
    charge: Charge
    resent: bool


class Codec(Protocol[R]):
    """How a kept result is written and read back, with its paid mark (the file format is the caller's)."""

    suffix: str

    def dump(self, path: Path, result: R, paid: bool) -> None: ...

    def load(self, path: Path) -> tuple[R, bool]: ...


class PaidResults(Generic[R]):
    """Results kept per step in one directory: pending (written before the charge) or paid.

    With ``rewrite_paid=False`` a result is written once, before its charge, and never again:
    the ledger row is what makes it paid, and ``settle`` adds what the charge tells each time
    it is released or re-sent (so settle must depend on the charge alone, not on later
    charges). One durable write per release instead of two; the kept bytes never change.
    """

    def __init__(self, directory: Path, codec: Codec[R], *, rewrite_paid: bool = True) -> None:
        self.directory = Path(directory)
        self.codec = codec
        self.rewrite_paid = rewrite_paid

    def path(self, step: Step) -> Path:
        return self.directory / f"{step.file_stem}{self.codec.suffix}"

    def load(self, step: Step) -> tuple[R, bool] | None:
        path = self.path(step)
        return self.codec.load(path) if path.exists() else None

    def keep(self, step: Step, result: R, paid: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.codec.dump(self.path(step), result, paid)

    def drop(self, step: Step) -> None:
        self.path(step).unlink(missing_ok=True)


class BytesCodec(Protocol[R]):
    """How a result kept in the ledger is turned into bytes and back."""

    def dumps(self, result: R) -> bytes: ...

    def loads(self, data: bytes, what: str) -> R: ...


class ChargedResults(Generic[R]):
    """Results kept in the ledger, committed in the transaction of the charge that pays for them.

    One durable commit per release (the charge's) instead of a file written and synced before it
    (two syncs: the file and its folder): a charge and its result are committed together or not at
    all, so no step is ever paid without its result, and a crash before the commit leaves neither.
    Every such result is settled from its charge when released or re-sent (as with
    ``PaidResults(rewrite_paid=False)``). ``earlier``: where results were kept before (files), still
    re-sent for the steps they paid.
    """

    rewrite_paid = False

    def __init__(
        self, ledger: BudgetLedger, codec: BytesCodec[R], earlier: PaidResults[R] | None = None
    ) -> None:
        self.ledger = ledger
        self.codec = codec
        self.earlier = earlier

    def load(self, step: Step) -> tuple[R, bool] | None:
        data = self.ledger.kept(step.charge_key)
        if data is not None:
            return self.codec.loads(data, f"result of {step.label} kept in ledger {self.ledger.path}"), False
        return self.earlier.load(step) if self.earlier is not None else None


# --- calibrate, project, refuse, charge -----------------------------------------------------


_CALIBRATED: dict[str, float] = {}  # calibration inputs -> noise multiplier, per process
_CALIBRATED_MAX = 256
_RUNNING: dict[str, threading.Event] = {}  # calibrations being computed in the background, by memo key
_MEMO_LOCK = threading.Lock()


def calibrate_noise(
    ledger: BudgetLedger,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    *,
    sigma_max: float,
    pending: Sequence[Mechanism] = (),
    reserve_epsilon: float = 0.0,
    pin: Path | None = None,
    run: tuple[str, str] | None = None,
) -> float:
    """The noise multiplier for which ``rounds`` more rounds spend exactly the remaining budget.

    ``pending`` releases are charged alongside and ``reserve_epsilon`` is kept for a later
    one. With ``run`` (run id, mechanism) a run keeps one noise multiplier whatever else the
    partner spends meanwhile: the one its first charge paid for, read back from the ledger.
    Before that charge nothing of the run was released, and the noise is calibrated (the same
    ledger and inputs give the same answer), with no file to sync. ``pin``: the file where
    earlier versions kept a run's first answer; read when it exists, no longer written.
    A calibration of the very same inputs started by :func:`precalibrate_noise` is waited for.
    """
    if pin is not None and pin.exists():
        return float(json.loads(pin.read_text(encoding="utf-8"))["noise_multiplier"])
    if run is not None:
        charged = ledger.run_noise(*run)
        if charged is not None:
            return charged
    steps = steps_per_round * max(1, rounds)
    memo_key = _memo_key(ledger, sample_rate, steps, sigma_max, reserve_epsilon, pending)
    with _MEMO_LOCK:
        running = _RUNNING.get(memo_key)
    if running is not None:
        running.wait()  # a failed precalibration leaves no answer: calibrated below, in line
    sigma = _CALIBRATED.get(memo_key)
    if sigma is None:
        sigma = _calibrate(ledger, sample_rate, steps, sigma_max, reserve_epsilon, pending)
        _remember(memo_key, sigma)
    return sigma


def precalibrate_noise(
    ledger: BudgetLedger,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    *,
    sigma_max: float,
    pending: Sequence[Mechanism] = (),
    reserve_epsilon: float = 0.0,
) -> threading.Thread | None:
    """Start :func:`calibrate_noise`'s search for these inputs in a background thread.

    Why: a party idle between two messages can have the answer ready for the next one. The
    ledger is read here, in the caller's thread (no connection crosses threads); the thread only
    computes, and keeps the answer under the key :func:`calibrate_noise` looks up, so it is used
    only when the ledger and inputs are still the same (any charge in between changes the key).
    A failure is logged without data and leaves no answer. None when nothing is left to compute.
    """
    steps = steps_per_round * max(1, rounds)
    memo_key = _memo_key(ledger, sample_rate, steps, sigma_max, reserve_epsilon, pending)
    frozen = _FrozenLedger(ledger)
    with _MEMO_LOCK:
        if memo_key in _CALIBRATED or memo_key in _RUNNING:
            return None
        done = _RUNNING[memo_key] = threading.Event()

    def work() -> None:
        try:
            _remember(memo_key, _calibrate(frozen, sample_rate, steps, sigma_max, reserve_epsilon, pending))
        except Exception as exc:
            log.warning("noise precalibration failed (%s); it is calibrated in line", type(exc).__name__)
        finally:
            with _MEMO_LOCK:
                _RUNNING.pop(memo_key, None)
            done.set()

    # A daemon: it writes nothing but this process's memo, so an exit loses nothing.
    thread = threading.Thread(target=work, name="noise-precalibration", daemon=True)
    thread.start()
    return thread


class _FrozenLedger(BudgetLedger):
    """A ledger's charges read once, held in memory: what a background calibration reads instead of SQLite."""

    def __init__(self, ledger: BudgetLedger) -> None:
        self.path, self.dataset = ledger.path, ledger.dataset
        self.budget, self.accountant = ledger.budget, ledger.accountant
        self._frozen = ledger.all_charges()

    def all_charges(self) -> list[Charge]:
        return list(self._frozen)


def _memo_key(
    ledger: BudgetLedger,
    sample_rate: float,
    steps: int,
    sigma_max: float,
    reserve_epsilon: float,
    pending: Sequence[Mechanism],
) -> str:
    """The calibration's inputs: the same key gives the same answer (partners simulated in one
    process, identical budgets and histories, pay for the search once instead of once each)."""
    return json.dumps(
        [ledger.accounting_state(), ledger.budget.epsilon, ledger.budget.delta, sample_rate, steps]
        + [sigma_max, reserve_epsilon, [repr(m) for m in pending]],
        sort_keys=True,
        default=repr,
    )


def _calibrate(
    ledger: BudgetLedger,
    sample_rate: float,
    steps: int,
    sigma_max: float,
    reserve_epsilon: float,
    pending: Sequence[Mechanism],
) -> float:
    return ledger.calibrate_noise(
        sample_rate,
        steps,
        sigma_max=sigma_max,
        pending_gaussian=[g for m in pending for g in m.gaussian_part()],
        pending_approx=[a for m in pending for a in m.approx_part()],
        reserve_epsilon=reserve_epsilon,
    )


def _remember(memo_key: str, sigma: float) -> None:
    with _MEMO_LOCK:
        if memo_key not in _CALIBRATED and len(_CALIBRATED) >= _CALIBRATED_MAX:
            _CALIBRATED.pop(next(iter(_CALIBRATED)))
        _CALIBRATED[memo_key] = sigma


def refusal_reason(label: str, projected: float, target: float) -> str:
    """The one reason format for a step refused in advance."""
    return f"{label} would bring epsilon to {projected:.3f}, past this partner's target {target:g}"


def check(ledger: BudgetLedger, step: Step, mechanism: Mechanism, pending: Sequence[Mechanism] = ()) -> float:
    """The projected epsilon after this step (and ``pending``); refuse, recording it, if past the target.

    Nothing is charged. A step the ledger already paid is never refused here.
    """
    releases = [*pending, mechanism]
    projected = ledger.project(
        [g for m in releases for g in m.gaussian_part()],
        [a for m in releases for a in m.approx_part()],
        sum(m.event_probability for m in releases),
    ).epsilon
    if projected > ledger.budget.epsilon and ledger.find(step.charge_key) is None:
        run = f" of run {step.run_id}" if step.run_id is not None else ""
        ledger.record_refusal(
            step.charge_key, mechanism.name, projected, f"{step.label}{run} would exceed the target"
        )
        raise BudgetExhausted(
            refusal_reason(step.label, projected, ledger.budget.epsilon), ledger.spent(), projected
        )
    return projected


def charge_once(ledger: BudgetLedger, step: Step, mechanism: Mechanism, kept: bytes | None = None) -> Charge:
    """Charge the step's release; a repeated call for the same step returns the first charge (paid once).

    ``kept`` (Gaussian releases): the result's bytes, committed with the charge."""
    try:
        if mechanism.gaussian is not None:
            return ledger.charge_gaussian(
                step.charge_key,
                mechanism.gaussian,
                mechanism=mechanism.name,
                run_id=step.run_id,
                round=step.round,
                query_id=step.query_id,
                details=mechanism.details,
                kept=kept,
                event_probability=mechanism.event_probability,
            )
        if kept is not None:
            raise ValueError("only a Gaussian release keeps its result in the ledger")
        assert mechanism.epsilon_delta is not None
        epsilon, delta = mechanism.epsilon_delta
        return ledger.charge_approx(
            step.charge_key,
            epsilon,
            delta,
            mechanism=mechanism.name,
            run_id=step.run_id,
            query_id=step.query_id,
            details=mechanism.details,
        )
    except BudgetExhausted as exc:
        if exc.spend is not None:
            raise
        # a concurrent release took the budget since the check
        raise BudgetExhausted(str(exc), ledger.spent()) from None


# --- release or re-send ------------------------------------------------------------------


def resend(
    ledger: BudgetLedger,
    step: Step,
    results: PaidResults[R] | ChargedResults[R],
    settle: Callable[[R, Charge], R],
) -> Released[R] | None:
    """The result this step already paid for, or None when the ledger holds no charge for it.

    A result kept before a charge that did go through (a crash in between) is settled and
    marked paid now (results written once are settled, never rewritten). A charge whose result
    is gone is refused: paying again would spend twice.
    """
    kept = results.load(step)  # first: the codec refuses a kept file that is not this step's
    charge = ledger.find(step.charge_key)
    if charge is None:
        return None
    if kept is None:
        raise BudgetExhausted(
            f"{step.label} was already paid for and its result is gone; not re-spending", ledger.spent()
        )
    result, paid = kept
    if not paid:
        result = settle(result, charge)
        if isinstance(results, PaidResults) and results.rewrite_paid:
            results.keep(step, result, paid=True)
    return Released(result, charge, resent=True)


def release(
    ledger: BudgetLedger,
    step: Step,
    results: PaidResults[R] | ChargedResults[R],
    produce: Callable[[], tuple[R, Mechanism]],
    settle: Callable[[R, Charge], R] = lambda result, _charge: result,
) -> Released[R]:
    """Re-send the paid result, or produce it, keep it, charge it once and release it.

    ``produce`` computes the result and its mechanism (it may call :func:`calibrate_noise`
    and :func:`check` first, which raise :class:`BudgetExhausted`); ``settle`` adds what the charge
    tells (the spend) to the result before it is kept as paid. A refused or failed charge
    drops the pending result and leaves the ledger as it was.
    """
    again = resend(ledger, step, results, settle)
    if again is not None:
        return again
    result, mechanism = produce()
    if isinstance(results, ChargedResults):
        charge = charge_once(ledger, step, mechanism, kept=results.codec.dumps(result))
        if charge.already_paid:  # paid meanwhile by another caller: its result, never a second one
            again = resend(ledger, step, results, settle)
            if again is None:  # charges are never removed: a ledger changed under this process
                raise BudgetExhausted(f"{step.label} was paid and then lost; not re-spending", ledger.spent())
            return again
        return Released(settle(result, charge), charge, resent=False)
    results.keep(step, result, paid=False)  # survives a crash between the charge and the release
    try:
        charge = charge_once(ledger, step, mechanism)
    except BaseException:
        if ledger.find(step.charge_key) is None:
            results.drop(step)
        raise
    result = settle(result, charge)
    if results.rewrite_paid:
        results.keep(step, result, paid=True)
    return Released(result, charge, resent=False)


def safe_name(text: str) -> str:
    """A file-name-safe form of a key or run id."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
