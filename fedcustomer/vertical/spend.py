"""A vertical party's budget: its noise, refusals and charges, all through the one release path.

Both parties refuse a round, before releasing anything, when their ledger projects past
the target (noise is fixed at their first round from the remaining budget, as the
horizontal node does), and they charge before releasing. The label owner's label release
is charged once per job, with its first round.

A job of the label owner alone may run beside its joint job (the comparison model in the joint
job's idle slots, ``alongside_run``): its noise is then calibrated, and each of its rounds
checked, with the joint job's unpaid rounds counted as pending at the noise the joint job pays,
so whatever the order of the two jobs' charges, the joint job's planned rounds still fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedcustomer.errors import BudgetExhausted, ConfigError, DataError
from fedcustomer.partner.ledger_keys import vertical_label_key, vertical_round_key
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.ledger import BudgetLedger, Spend
from fedcustomer.privacy.dp.release import (
    Mechanism,
    Step,
    calibrate_noise,
    charge_once,
    check,
    precalibrate_noise,
)
from fedcustomer.vertical.labels import LabelRelease

DPSGD_MECHANISM = "vertical_dpsgd"


@dataclass
class RoundDecision:
    """A party's answer to 'may round r run?' / 'round r is paid'."""

    ok: bool
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    batches: list[np.ndarray] | None = None  # the label owner's public batches (positions in aligned order)


class _Job(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def rounds(self) -> int: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def steps_per_round(self) -> int: ...
    @property
    def max_noise_multiplier(self) -> float: ...
    @property
    def reserve_epsilon(self) -> float: ...
    @property
    def alongside_run(self) -> str: ...
    @property
    def alongside_rounds(self) -> int: ...


def public_sampling(batch_size: int, n_train: int, steps_per_round: int = 0) -> tuple[float, int]:
    """The public Poisson rate and steps per round of a job (steps 0: one pass over the training customers).

    The coordinator announces them; a party that checks its first round in its setup reply
    computes the same from its own counts, and the coordinator compares the two.
    """
    q = min(1.0, batch_size / max(1, n_train))
    return q, steps_per_round or max(1, int(1 / q))


def q_steps(cfg: _Job) -> tuple[float, int]:
    """The public Poisson rate and steps per round the coordinator announced."""
    q, steps = cfg.sample_rate, cfg.steps_per_round
    if not (0 < q <= 1) or steps < 1:
        raise ConfigError("the coordinator sent no sample rate / steps per round; it must set them up first")
    return q, steps


class PartySpend:
    """One party's releases in one run: ``state['sigma']`` pins its noise, ``persist`` keeps it."""

    def __init__(
        self,
        ledger: BudgetLedger,
        cfg: _Job,
        name: str,
        label_release: LabelRelease | None,
        state: Callable[[], dict[str, Any]],
        persist: Callable[[], None],
    ) -> None:
        self.ledger, self.cfg, self.name, self.label_release = ledger, cfg, name, label_release
        self._state, self._persist = state, persist

    def label_step(self) -> Step:
        return Step(vertical_label_key(self.cfg.run_id, self.cfg.role), "label release", self.cfg.run_id)

    def round_step(self, rnd: int) -> Step:
        key = vertical_round_key(self.cfg.run_id, self.cfg.role, rnd)
        return Step(key, f"vertical round {rnd}", self.cfg.run_id, rnd)

    def label_mechanism(self) -> Mechanism | None:
        """The label release's charge while it is still to be paid in this job."""
        release = self.label_release
        if release is None or self.ledger.find(self.label_step().charge_key) is not None:
            return None
        return release.cost({"party": self.name, **release.to_dict()})

    def alongside_pending(self) -> list[Mechanism]:
        """The unpaid rounds of the job this one runs beside, at the noise that job pays (none if none).

        Read from this party's own ledger: the other job's first paid round gives its noise,
        rate and steps; its rounds not yet paid are what this job must leave room for.
        """
        run, planned = self.cfg.alongside_run, self.cfg.alongside_rounds
        if not run:
            return []
        if run == self.cfg.run_id or planned < 1:
            raise DataError("a job runs beside another job of the same party, with at least one round")
        keys = [vertical_round_key(run, self.cfg.role, r) for r in range(1, planned + 1)]
        paid = [c for c in (self.ledger.find(key) for key in keys) if c is not None]
        first = paid[0] if paid else None
        if first is None or first.noise_multiplier is None or first.sample_rate is None or not first.steps:
            raise DataError(
                f"run {run} has paid no round yet at partner {self.name!r}: "
                "a job runs beside it only once its noise is known"
            )
        other = GaussianSteps(first.noise_multiplier, first.sample_rate, first.steps)
        details = {"party": self.name, "role": self.cfg.role, "run": run}
        return [Mechanism(DPSGD_MECHANISM, gaussian=other, details=details)] * (planned - len(paid))

    def round_mechanism(self, rnd: int) -> Mechanism:
        q, steps = q_steps(self.cfg)
        steps_paid = GaussianSteps(self.noise_multiplier(rnd), q, steps)
        return Mechanism(
            DPSGD_MECHANISM, gaussian=steps_paid, details={"party": self.name, "role": self.cfg.role}
        )

    def noise_multiplier(self, rnd: int) -> float:
        """Fixed at the party's first round of the run: the remaining budget over the remaining rounds."""
        state = self._state()
        if state["sigma"] is not None:
            return float(state["sigma"])
        sigma = calibrate_noise(self.ledger, *self._calibration_inputs(rnd), **self._calibration_options())
        state["sigma"] = float(sigma)
        self._persist()
        return float(sigma)

    def precalibrate(self, rnd: int) -> bool:
        """Start round ``rnd``'s calibration in the background (the noise is not yet fixed).

        Why: the label owner waits idle between the joint job's open and its comparison model's
        begin; the begin then finds the answer ready when the ledger has not changed meanwhile.
        The ledger is read here; nothing is charged, pinned or persisted. True when started.
        """
        if self._state()["sigma"] is not None:
            return False
        thread = precalibrate_noise(
            self.ledger, *self._calibration_inputs(rnd), **self._calibration_options()
        )
        return thread is not None

    def _calibration_inputs(self, rnd: int) -> tuple[float, int, int]:
        """Sample rate, steps a round and rounds left from ``rnd``: the same for the search and its answer."""
        q, steps = q_steps(self.cfg)
        return q, steps, self.cfg.rounds - rnd + 1

    def _calibration_options(self) -> dict[str, Any]:
        """What is charged beside this party's rounds and what is kept back, for either calibration call."""
        label = self.label_mechanism()
        return {
            "sigma_max": self.cfg.max_noise_multiplier,
            "pending": ([label] if label is not None else []) + self.alongside_pending(),
            "reserve_epsilon": self.cfg.reserve_epsilon,
        }

    def check_round(self, rnd: int) -> RoundDecision:
        """Would this round fit the budget? Nothing is charged or released."""
        mechanism = self.round_mechanism(rnd)
        sigma = self.noise_multiplier(rnd)
        if self.ledger.find(self.round_step(rnd).charge_key) is not None:
            return RoundDecision(True, metrics={"noise-multiplier": sigma})
        label = self.label_mechanism()
        pending = ([label] if label else []) + self.alongside_pending()
        try:
            projected = check(self.ledger, self.round_step(rnd), mechanism, pending)
        except BudgetExhausted as exc:
            return RoundDecision(False, exc.reason, _projection(exc.spend, exc.projected, sigma))
        return RoundDecision(True, metrics=_projection(self.ledger.spent(), projected, sigma))

    def charge_round(self, rnd: int) -> RoundDecision:
        """Charge the round (and, once per job, the label release); a repeated call pays nothing more."""
        mechanism = self.round_mechanism(rnd)
        label = self.label_mechanism()
        label_charge = None
        beside = self.alongside_pending()
        try:
            if beside:  # the other job's unpaid rounds must still fit after this charge
                check(self.ledger, self.round_step(rnd), mechanism, beside)
            if label is not None:
                label_charge = charge_once(self.ledger, self.label_step(), label)
            charge = charge_once(self.ledger, self.round_step(rnd), mechanism)
        except BudgetExhausted as exc:
            spent = {"epsilon-total": exc.spend.epsilon, "epsilon-target": exc.spend.epsilon_target}
            return RoundDecision(False, exc.reason, spent)
        assert mechanism.gaussian is not None
        metrics = {
            # the row's own total (the spend after this round), as its audit entry keeps it: a round paid
            # before a restart reports what it cost then, not what the ledger has composed since
            "epsilon-total": float(charge.epsilon_total),
            "epsilon-target": self.ledger.budget.epsilon,
            "delta": self.ledger.budget.delta,
            "noise-multiplier": mechanism.gaussian.noise_multiplier,
            "charged-now": float(not charge.already_paid),
            "epsilon-round": float(charge.epsilon or 0.0),  # this round's DP-SGD steps on their own
        }
        if label_charge is not None:  # the label release, paid with the job's first round
            metrics["epsilon-label"] = float(label_charge.epsilon or 0.0)
        return RoundDecision(True, metrics=metrics)

    def accounting(self, max_grad_norm: float) -> dict[str, Any]:
        """The inputs anyone needs to recompute this party's epsilon."""
        state = self.ledger.accounting_state()
        q, steps = q_steps(self.cfg)
        return {
            "accountant": state["accountant"],
            "noise_multiplier": self._state()["sigma"],
            "sample_rate": q,
            "steps_per_round": steps,
            "delta": self.ledger.budget.delta,
            "max_grad_norm": max_grad_norm,
            "sampling": "poisson",
            "history": state["gaussian_history"],
            "approx_charges": state["approx_charges"],
        }


def _projection(spent: Spend, projected: float | None, sigma: float) -> dict[str, float]:
    return {
        "epsilon-projected": float(projected or 0.0),
        "epsilon-target": spent.epsilon_target,
        "epsilon-total": spent.epsilon,
        "noise-multiplier": sigma,
    }
