"""Distributed DP-SGD under secure aggregation: each round is one DP-SGD step over the partners' union.

Every partner Poisson-samples its own rows at rate ``q``, sums their clipped per-example
gradients (clip ``C``) and adds only its *share* of the Gaussian noise, standard deviation
``sigma * C / sqrt(n_min)``, where ``n_min`` is the fewest contributions a sum may hold
(the SecAgg+ side enforces it: see ``apps/secagg.py``). The coordinator sees only the
secure sum, which then carries noise of variance ``m * sigma^2 C^2 / n_min >= sigma^2 C^2``
for ``m >= n_min`` contributions, and takes the step (divide by the expected batch
``q * N_total``, learning rate). Against the coordinator this is centralised DP-SGD over
the union: one subsampled-Gaussian step of rate ``q`` and noise multiplier ``sigma`` per
round. Only with ONE step per round: several local steps between sums are not covered.

Two guarantees per partner, both Gaussian steps of rate ``q``, one per round:

(a) against the coordinator, assuming SecAgg+ holds (honest-but-curious coordinator that
    does not collude with partners, at least ``n_min`` honest contributions per sum):
    noise multiplier ``sigma``;
(b) against anyone who could see this partner's own update (a broken or bypassed SecAgg+,
    a coordinator colluding with every other partner): noise multiplier ``sigma / sqrt(n_min)``.

A partner's ledger is charged with (b) unless its config explicitly accepts the SecAgg+
trust assumption; then with (a). The other guarantee is kept in the charge's details.

Quantisation (SecAgg+ masks integers): the noise is added before quantisation; each
partner's value is clipped per coordinate to ``[-R, R]`` and quantised to ``Q`` levels,
with ``n * Q < M`` (modulus) so the masked integer sum cannot wrap around.
``R`` is chosen so that clipping essentially never happens: a partner's coordinate is at
most ``|batch| * C`` plus its noise, ``|batch| <= b`` except with probability ``beta``
(Bernstein bound) and ``|noise| <= k * share`` on every coordinate except with probability
``beta`` (Gaussian tail, union bound); a partner refuses a round whose ``R`` is too small.
Clipping is post-processing of the partner's noised vector, so (b) is unaffected; for (a)
the view differs from the unclipped mechanism only on an event of probability at most
``beta`` per contribution and round, which takes ``(1 + e^eps) * beta_total`` of (a)'s delta
(``rare_events``): the coordinator calibrates with it reserved, a trusting partner's ledger
row carries the round's event probability, and both guarantees are stated at the target
delta with it inside. A round's sum holds at most ``shares`` contributions: the coordinator
samples no more partners than it sized the quantisation and the event for.
The stochastic rounding of each partner's value (unbiased, at most ``2R / Q`` per
coordinate, orders of magnitude below the noise share) is applied per partner before the
sum: (b) is exact, (a) is stated for the real-valued sum; a formally exact (a) under
rounding would need a discrete mechanism (distributed discrete Gaussian or Skellam).

Accounting: both guarantees are compositions of subsampled-Gaussian steps, so either
accountant applies (``accountants.Accountant``: RDP as Opacus, or PLD with dp-accounting).
A partner's ledger charges, and its round reports both guarantees, with the accountant its
home selects; the coordinator calibrates ``sigma`` with the job's ``distributed_accountant``
(set it to the partners' choice: a PLD-calibrated ``sigma`` is smaller, and an RDP partner
would then see more than the job's epsilon and refuse the rounds past its budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accountants import ACCOUNTANTS, Accountant, accountant_named
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.ledger import APPROX, EVENT_PROBABILITY, GAUSSIAN, Charge
from fedcustomer.privacy.dp.rare_events import epsilon_with_event, event_reserve

MODE = "distributed"
MECHANISM = "dpsgd-distributed"
#: Probability (per partner, per round) that its batch exceeds the bound, and that any noise
#: coordinate exceeds ``k`` shares: both far below any delta a partner would choose.
TAIL_PROBABILITY = 1e-15
#: The SecAgg+ modulus: masked sums are taken modulo 2**32.
MODULUS = 1 << 32
#: Default clip range of a distributed round, in units of the clip norm ``C``.
CLIP_RANGE_UNITS = float(1 << 14)
#: The coarse row count rides in the secure sum in hundreds (the granularity it is rounded to).
COUNT_UNIT = 100


@dataclass(frozen=True)
class DistributedStep:
    """The public parameters of one distributed DP-SGD round, as every partner applies them."""

    noise_multiplier: float  # sigma: the noise the secure sum carries, in units of C
    sample_rate: float  # q: every partner's Poisson rate
    max_grad_norm: float  # C
    min_survivors: int  # n_min: the fewest contributions an unmasked sum may hold
    trust_secagg: bool = False  # the partner accepts the SecAgg+ trust assumption: charge (a)
    shares: int = 0  # the most contributions a sum may hold (the partners sampled); 0: min_survivors

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0) or not math.isfinite(self.noise_multiplier):
            raise ConfigError(f"distributed DP needs a noise multiplier > 0, got {self.noise_multiplier}")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"distributed DP needs a sample rate in (0, 1], got {self.sample_rate}")
        if not (self.max_grad_norm > 0):
            raise ConfigError(f"distributed DP needs a clip norm > 0, got {self.max_grad_norm}")
        if self.min_survivors < 1:
            raise ConfigError(f"distributed DP needs at least 1 survivor, got {self.min_survivors}")
        if self.shares and self.shares < self.min_survivors:
            raise ConfigError(
                f"a sum of at most {self.shares} contributions cannot hold the {self.min_survivors} a step needs"
            )

    @property
    def contributions(self) -> int:
        """The most contributions one round's sum may hold."""
        return max(self.shares, self.min_survivors)

    def clip_event_probability(self) -> float:
        """One round's chance that any contribution is clipped by the secure sum (view (a) only)."""
        return clip_probability_total(1, self.contributions)

    def charged_event_probability(self) -> float:
        """The rare event the charged guarantee carries: (a)'s clip event, none for (b)."""
        return self.clip_event_probability() if self.trust_secagg else 0.0

    @property
    def share_std(self) -> float:
        """This partner's noise standard deviation: its share of ``sigma * C``."""
        return self.noise_multiplier * self.max_grad_norm / math.sqrt(self.min_survivors)

    def coordinator_steps(self) -> GaussianSteps:
        """(a) one round seen through the secure sum: the full noise."""
        return GaussianSteps(self.noise_multiplier, self.sample_rate, 1)

    def single_update_steps(self) -> GaussianSteps:
        """(b) one round seen through this partner's own update: only its share."""
        return GaussianSteps(self.noise_multiplier / math.sqrt(self.min_survivors), self.sample_rate, 1)

    def charged_steps(self) -> GaussianSteps:
        return self.coordinator_steps() if self.trust_secagg else self.single_update_steps()

    @property
    def charged_guarantee(self) -> str:
        return "coordinator (SecAgg+ trusted)" if self.trust_secagg else "single update (SecAgg+ not trusted)"

    def details(self) -> dict[str, Any]:
        """What the ledger row keeps besides the charged triple: both guarantees' noise and the trust."""
        return {
            "dp_mode": MODE,
            "noise_multiplier_coordinator": self.noise_multiplier,
            "noise_multiplier_single_update": self.single_update_steps().noise_multiplier,
            "min_survivors": self.min_survivors,
            "contributions_max": self.contributions,
            "clip_event_probability": self.clip_event_probability(),
            "trust_secagg": self.trust_secagg,
            "charged": "coordinator" if self.trust_secagg else "single_update",
        }


# --- the partner's contribution ------------------------------------------------------------


def clipped_gradient_sum(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    step: DistributedStep,
    generator: torch.Generator,
) -> tuple[list[torch.Tensor], int]:
    """Sum of clipped per-example gradients over a Poisson sample of the rows, per parameter."""
    from fedcustomer.privacy.dp.fast_clipping import FastGradientClipper
    from fedcustomer.privacy.dp.poisson_sampling import GeometricPoissonSampler

    sampler = GeometricPoissonSampler(
        num_samples=len(X), sample_rate=step.sample_rate, generator=generator, steps=1
    )
    idx = sampler.draw()
    clipper = FastGradientClipper(model)
    model.train()
    if len(idx) == 0:
        clipper.zero_summed_grad()
    else:
        clipper.attach()
        try:
            loss = loss_fn(model(X[idx]), y[idx])
            clipper.clip_and_accumulate(loss, batch_size=len(idx), max_grad_norm=step.max_grad_norm)
        finally:
            clipper.detach()
    return [v.detach().clone() for v in clipper.views], len(idx)


def add_noise_share(
    sums: Sequence[torch.Tensor], step: DistributedStep, generator: torch.Generator
) -> list[torch.Tensor]:
    """The partner's released vector: its clipped sum plus ONLY its share of the noise."""
    std = step.share_std
    return [
        s + torch.normal(0.0, std, size=s.shape, generator=generator, dtype=s.dtype, device=s.device)
        for s in sums
    ]


# --- quantisation: range, levels, tail bounds ----------------------------------------------


def batch_bound(rows: int, sample_rate: float, fail: float = TAIL_PROBABILITY) -> int:
    """A Poisson batch of ``rows`` at rate ``q`` exceeds this with probability <= ``fail`` (Bernstein)."""
    mean, var, log_inv = rows * sample_rate, rows * sample_rate * (1 - sample_rate), math.log(1 / fail)
    return min(rows, math.ceil(mean + log_inv / 3 + math.sqrt(log_inv**2 / 9 + 2 * log_inv * var)))


def noise_tail_k(coordinates: int, fail: float = TAIL_PROBABILITY) -> float:
    """``k`` with P(any of ``coordinates`` Gaussian coordinates exceeds k sd) <= ``fail``.

    Uses P(|N(0,1)| > k) <= exp(-k^2 / 2) and a union bound over coordinates.
    """
    return math.sqrt(2 * math.log(max(1, coordinates) / fail))


def required_clip_range(step: DistributedStep, rows: int, coordinates: int) -> float:
    """The smallest ``R`` under which this partner's values are clipped with probability <= 2 * fail.

    The batch is bounded for ``rows + 1``: the event's probability must hold on the neighbouring data
    set with one more customer too, or the reserve would not cover the pair the guarantee compares.
    The coarse row count rides in the same vector (in hundreds), so ``R`` must hold it as well.
    """
    gradients = (
        step.max_grad_norm * batch_bound(rows + 1, step.sample_rate)
        + noise_tail_k(coordinates) * step.share_std
    )
    return max(gradients, coarse_count_bound(rows))


def coarse_count_bound(rows: int) -> float:
    """The largest value the coarse row count can take in the secure sum: ``rows`` rounded to the
    nearest :data:`COUNT_UNIT`, in units of it (plus one unit for the neighbouring data set)."""
    return float(math.floor((rows + 1) / COUNT_UNIT + 0.5) + 1)


def quantization_levels(num_shares: int, modulus: int = MODULUS) -> int:
    """The largest power of two ``Q`` with ``num_shares * Q < modulus``: a sum of quantised values never wraps.

    Each value is clipped to ``[-R, R]`` and mapped to ``[0, Q]``; the mask arithmetic is
    modulo ``modulus``, so ``n`` values (and the unit weights SecAgg+ sums alongside) stay
    below it. Capped at 2**30, the range Flower's int32 rounding holds.
    """
    if num_shares < 1:
        raise ConfigError(f"need at least one share, got {num_shares}")
    levels = 1 << 30
    while num_shares * levels >= modulus:
        levels >>= 1
    if levels < 2:
        raise ConfigError(f"{num_shares} partners leave no quantisation levels under modulus {modulus}")
    return levels


def clip_probability_total(rounds: int, partners: int) -> float:
    """beta_total: the chance that any partner's value is clipped in any round (batch or noise tail)."""
    return rounds * partners * 2 * TAIL_PROBABILITY


# --- the coordinator's step ----------------------------------------------------------------


def expected_batch(sample_rate: float, coarse_rows: float) -> float:
    """The normaliser of the step: ``q * N_total`` (a public function of the released coarse count)."""
    return max(1.0, sample_rate * coarse_rows)


def apply_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, summed: Sequence[torch.Tensor], batch: float
) -> None:
    """One optimizer step with gradient ``summed / batch`` (post-processing of the secure sum)."""
    optimizer.zero_grad(set_to_none=False)
    for p, s in zip([p for p in model.parameters() if p.requires_grad], summed, strict=True):
        p.grad = (s / batch).to(p.dtype).reshape(p.shape)
    optimizer.step()


# --- both guarantees over a ledger's history -------------------------------------------------


def guarantee_histories(charges: Sequence[Charge]) -> tuple[list[GaussianSteps], list[GaussianSteps]]:
    """The Gaussian history as seen (a) by the coordinator and (b) through single updates.

    A distributed charge contributes its noise multiplier for each view; every other
    Gaussian charge counts the same in both.
    """
    coordinator: list[GaussianSteps] = []
    single: list[GaussianSteps] = []
    for c in charges:
        if c.family != GAUSSIAN or c.noise_multiplier is None or c.sample_rate is None or c.steps is None:
            continue
        base = GaussianSteps(float(c.noise_multiplier), float(c.sample_rate), int(c.steps))
        if c.details.get("dp_mode") == MODE:
            coordinator.append(
                GaussianSteps(float(c.details["noise_multiplier_coordinator"]), base.sample_rate, base.steps)
            )
            single.append(
                GaussianSteps(
                    float(c.details["noise_multiplier_single_update"]), base.sample_rate, base.steps
                )
            )
        else:
            coordinator.append(base)
            single.append(base)
    return coordinator, single


def both_epsilons(
    charges: Sequence[Charge],
    delta: float,
    extra: DistributedStep | None = None,
    accountant: Accountant | None = None,
) -> tuple[float, float]:
    """(epsilon against the coordinator, epsilon against a single update) over ``charges`` (+ ``extra``).

    Composition as the ledger's: ``accountant`` (the partner's; RDP when None) within Gaussian
    releases, basic composition with the (epsilon, delta) releases. The view the ledger charged
    is the very history it composed, so that figure equals the ledger's ``epsilon_total``.
    """
    acc = accountant if accountant is not None else Accountant()
    coordinator, single = guarantee_histories(charges)
    events_a, events_b = guarantee_events(charges)
    if extra is not None:
        coordinator.append(extra.coordinator_steps())
        single.append(extra.single_update_steps())
        events_a += extra.clip_event_probability()
    approx_eps = sum(float(c.epsilon or 0.0) for c in charges if c.family == APPROX)
    approx_delta = sum(float(c.delta or 0.0) for c in charges if c.family == APPROX)

    def composed(history: list[GaussianSteps]) -> Callable[[float], float]:
        return lambda d: acc.epsilon(history, d) + approx_eps if d > 0 else float("inf")

    rdp_delta = delta - approx_delta
    return (
        epsilon_with_event(composed(coordinator), rdp_delta, events_a),
        epsilon_with_event(composed(single), rdp_delta, events_b),
    )


def guarantee_events(charges: Sequence[Charge]) -> tuple[float, float]:
    """The rare events' total probability under view (a) and view (b).

    A distributed row's clip event counts for (a) (recorded in its details whatever the
    partner was charged); any other row's recorded event counts for both views.
    """
    a = b = 0.0
    for c in charges:
        if c.family != GAUSSIAN:
            continue
        if c.details.get("dp_mode") == MODE:
            a += float(c.details.get("clip_event_probability", 0.0))
        else:
            other = float(c.details.get(EVENT_PROBABILITY, 0.0))
            a, b = a + other, b + other
    return a, b


def run_epsilons(
    step: DistributedStep, rounds: int, delta: float, accountant: Accountant | None = None
) -> tuple[float, float]:
    """The two guarantees of ``rounds`` distributed rounds alone (what one job costs a fresh partner),
    (a) with the rounds' clip events inside ``delta``."""
    acc = accountant if accountant is not None else Accountant()
    a = GaussianSteps(step.noise_multiplier, step.sample_rate, rounds)
    b = GaussianSteps(step.single_update_steps().noise_multiplier, step.sample_rate, rounds)
    eps_a = epsilon_with_event(
        lambda d: acc.epsilon([a], d) if d > 0 else float("inf"),
        delta,
        rounds * step.clip_event_probability(),
    )
    return eps_a, acc.epsilon([b], delta)


def calibrate_sigma(
    sample_rate: float,
    rounds: int,
    epsilon: float,
    delta: float,
    sigma_max: float,
    accountant: Accountant | None = None,
    contributions: int = 0,
) -> float:
    """The union's noise multiplier for which ``rounds`` one-step rounds reach ``epsilon`` (view (a)).

    With ``accountant`` (RDP when None): a fresh partner using it is charged (if it trusts
    SecAgg+) exactly what this plan promised, within the calibration's tolerance from below.
    ``contributions``: the most a round's sum holds; the rounds' clip events are reserved
    out of ``delta`` first (sized for ``epsilon``, which the answer does not exceed).
    """
    acc = accountant if accountant is not None else Accountant()
    reserve = event_reserve(epsilon, clip_probability_total(rounds, contributions))
    if reserve >= delta:
        raise ConfigError(
            f"delta {delta:g} cannot hold the secure sum's clip events at epsilon {epsilon:g} "
            f"({rounds} rounds, {contributions} partners): raise delta or lower epsilon"
        )
    return acc.calibrate_noise(
        [], sample_rate, rounds, epsilon * (1 - 1e-9), delta - reserve, sigma_max=sigma_max
    )


AUTO = "auto"  # the coordinator asks the partners which accountant each charges with


def resolve_job_accountant(requested: str, partners: Sequence[str | None]) -> str:
    """The accountant to calibrate ``sigma`` with: ``requested``, or for ``auto`` the partners' common choice.

    Calibrating with PLD gives a smaller ``sigma``, which a partner composing with RDP judges
    above the job's epsilon (it would refuse rounds); calibrating with RDP gives a larger one,
    which a PLD partner judges below it. So ``auto`` picks PLD only when every partner answered
    ``pld``, and RDP otherwise (a partner that did not answer counts as RDP).
    """
    if requested != AUTO:
        return requested
    return "pld" if partners and all(name == "pld" for name in partners) else "rdp"


def job_accountant(name: str | None) -> Accountant:
    """The accountant a distributed job calibrates with (its ``distributed_accountant``; RDP when unset)."""
    return accountant_named(name)


TRUST_ASSUMPTION = (
    "epsilon_coordinator holds if SecAgg+ holds: the coordinator follows the protocol, does not collude "
    "with partners, and every unmasked sum holds at least min_survivors honest contributions (partners "
    "refuse to unmask fewer). epsilon_single_update holds against anyone who sees one partner's update. "
    "Each partner's ledger charges epsilon_single_update unless its partner.toml has [secagg] trust = true."
)


def privacy_report(
    step: DistributedStep,
    *,
    rounds: int,
    delta: float,
    partners: int,
    clip_range: float,
    levels: int,
    nodes: Sequence[int] = (),
    accountant: Accountant | None = None,
) -> dict[str, Any]:
    """summary.json's account of a distributed job: both guarantees for a partner taking part in every round.

    The headline figures use ``accountant`` (the job's calibration accountant, RDP when None);
    ``by_accountant`` gives both guarantees under RDP and PLD, since each partner's ledger
    reports with its own.
    """
    acc = accountant if accountant is not None else Accountant()
    step = replace(step, shares=max(step.shares, partners))
    beta = rounds * step.clip_event_probability()

    def guarantees_with(a: Accountant) -> dict[str, float]:
        eps_a, eps_b = run_epsilons(step, rounds, delta, a)
        return {
            "epsilon_coordinator": eps_a,
            "delta_coordinator": delta,  # the clip events' reserve is inside it
            "epsilon_single_update": eps_b,
            "delta_single_update": delta,
        }

    by_accountant = {
        name: guarantees_with(acc if name == acc.name else accountant_named(name)) for name in ACCOUNTANTS
    }
    guarantees = by_accountant[acc.name]
    return {
        "noise_multiplier": step.noise_multiplier,
        "noise_multiplier_single_update": step.single_update_steps().noise_multiplier,
        "sample_rate": step.sample_rate,
        "max_grad_norm": step.max_grad_norm,
        "min_survivors": step.min_survivors,
        "steps_per_round": 1,
        "rounds_accounted": rounds,
        "accountant": acc.name,
        "accounting": acc.describe(),
        **guarantees,
        "by_accountant": by_accountant,
        "partners": [{"node_id": int(n), **guarantees} for n in nodes],
        "quantisation": {
            "noise": "continuous Gaussian, added before quantisation",
            "clip_range": clip_range,
            "levels": levels,
            "modulus": MODULUS,
            "wrap_around": f"impossible: {partners} x {levels} < {MODULUS}",
            "clip_probability_total": beta,
            "clip_event_delta_reserved": event_reserve(by_accountant[acc.name]["epsilon_coordinator"], beta),
        },
        "trust_assumption": TRUST_ASSUMPTION,
        "note": "rounds_accounted counts every round a partner may have been charged for; each partner's "
        "spend over all its jobs is in its own ledger",
    }
