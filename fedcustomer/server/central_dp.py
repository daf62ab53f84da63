"""Partner-level (central) DP with a maximum epsilon the coordinator enforces.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` (1.42) takes an ``accountant``
(``flwr.supercore.privacy_accounting.PrivacyAccountant``). With one it:

- checks, when a round is configured and **before any message is sent**, whether composing
  that round's Gaussian release would take the accountant past ``max_epsilon``, and raises
  ``PrivacyBudgetExhausted`` if so (the round loop stops there: no partner trains, no partial
  round);
- composes the release only once a noised aggregate was produced;
- refuses to aggregate unless every sampled partner replied with equal weights (the
  sensitivity its noise is calibrated for), and accepts only FedAvg's aggregation.

The unit is the partner (all of one partner's data); the release is accounted without
sampling amplification (every partner takes part in every round). Flower ships one backend,
``RdpAccountant`` on dp-accounting's RDP: that is what ``rdp`` uses (its figures equal the
Opacus RDP the ledgers use, at sample rate 1). ``pld`` plugs :class:`PldAccountant`, the same
protocol over this project's PLD accounting, into the same wrapper.
"""

from __future__ import annotations

import math

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyAccountant,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedcustomer.privacy.dp.accountants import PLD, Accountant, accountant_named
from fedcustomer.privacy.dp.accounting import GaussianSteps

UNIT = "partner (all of one partner's data)"


class PldAccountant:
    """Flower's ``PrivacyAccountant`` protocol over dp-accounting's PLD (pessimistic discretisation)."""

    def __init__(self, config: PrivacyConfig, accountant: Accountant) -> None:
        if config.sampling_method is not SamplingMethod.NO_AMPLIFICATION:
            raise ValueError("the PLD central accountant accounts releases without sampling amplification")
        self._config = config
        self._accountant = accountant
        self._history: list[GaussianSteps] = []

    @property
    def config(self) -> PrivacyConfig:
        return self._config

    @property
    def num_releases(self) -> int:
        return sum(h.steps for h in self._history)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        self._history.append(self._steps(event, count))

    def get_epsilon(self, delta: float) -> float:
        return self._accountant.epsilon(self._history, delta)

    def get_delta(self, epsilon: float) -> float:
        """Smallest delta (to 1e-3 relative) at which the history's epsilon is within ``epsilon``."""
        lo, hi = 1e-300, 1.0 - 1e-12
        if self.get_epsilon(hi) > epsilon:
            return 1.0
        for _ in range(80):
            mid = math.exp((math.log(lo) + math.log(hi)) / 2)
            if self.get_epsilon(mid) > epsilon:
                lo = mid
            else:
                hi = mid
            if hi / lo < 1.001:
                break
        return hi

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        target = self._config.target_delta if delta is None else delta
        return PrivacySpent(self.get_epsilon(target), target, self.num_releases, PLD)

    def would_exceed(
        self, event: GaussianPrivacyEvent, max_epsilon: float | None = None, count: int = 1
    ) -> bool:
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be given in PrivacyConfig or to would_exceed()")
        projected = self._accountant.epsilon(
            [*self._history, self._steps(event, count)], self._config.target_delta
        )
        return projected > limit

    def state_dict(self) -> dict[str, object]:
        return {
            "backend": PLD,
            "value_discretization_interval": self._accountant.pld_interval,
            "history": [h.as_tuple() for h in self._history],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        history = state.get("history")
        if state.get("backend") != PLD or not isinstance(history, list):
            raise ValueError("accountant state was not written by the PLD central accountant")
        self._history = [GaussianSteps(float(s), float(q), int(n)) for s, q, n in history]

    def _steps(self, event: GaussianPrivacyEvent, count: int) -> GaussianSteps:
        if event.population_size != self._config.population_size:
            raise ValueError(
                f"event population {event.population_size} differs from {self._config.population_size}"
            )
        return GaussianSteps(event.noise_multiplier, 1.0, count)  # no amplification: sample rate 1


def central_accountant(
    accountant: str, *, noise_multiplier: float, delta: float, partners: int, max_epsilon: float | None
) -> PrivacyAccountant:
    """The accountant the DP wrapper enforces ``max_epsilon`` with (``rdp``: Flower's own)."""
    config = PrivacyConfig(
        target_delta=delta,
        population_size=partners,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=max_epsilon,
    )
    chosen = accountant_named(accountant)
    if chosen.name == PLD:
        return PldAccountant(config, chosen)
    return RdpAccountant(config)


def restore(accountant: PrivacyAccountant, noise_multiplier: float, partners: int, rounds: int) -> None:
    """Compose the rounds a resumed run already released (so the cap counts them)."""
    if rounds > 0:
        accountant.compose(GaussianPrivacyEvent(noise_multiplier, partners, partners), rounds)
