"""Audit of an analytics release: many releases on two neighbouring datasets.

Why this module: a query's epsilon holds only if the partner's release really adds noise
of the calibrated scale to a vector whose per-customer change is what the calibration
assumed. This audit takes the query's own spec, builds the worst neighbouring pair the
declared bounds allow -- D, and D' with one more customer whose value sits at the bound
of largest magnitude, touching every statistic once -- and releases both many times
through the partner's release function (:func:`fedcustomer.analytics.partner._noised`,
the code a partner runs, OpenDP noise included; no ledger is charged).

Two results per query:

* the empirical epsilon lower bound of the best threshold test on the optimal statistic
  (the likelihood ratio of the two release distributions), with Clopper-Pearson bounds
  (:func:`fedcustomer.privacy_audit.bounds.threshold_epsilon`);
* a test of the privacy loss distribution: the privacy loss of every release on D',
  computed with the noise the claim allows, against the same loss computed on releases
  simulated with exactly that noise (two-sample Kolmogorov-Smirnov). A small p-value
  says the released noise is not the noise the claim was calibrated for.

The Laplace loss has atoms: every release beyond the pair's values on either side has the
loss +-Delta/scale exactly. Two things keep the test's p-values uniform on a correct
release: the loss is computed in a closed form that gives those atoms exactly (the plain
difference of two rounded distances scatters them over neighbouring floats, and does so
differently for OpenDP's releases than for numpy's simulated ones, which the test then
took for a difference in the noise), and ties are broken at random before the test (the
two-sample Kolmogorov-Smirnov null distribution assumes none; with ties broken at random
the ranks of the two samples are exchangeable again, as that null distribution needs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedcustomer.analytics import mechanisms
from fedcustomer.analytics.local import Partials, compute_partials
from fedcustomer.analytics.partner import _noised
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy_audit.bounds import CONFIDENCE, threshold_epsilon

DEFAULT_RELEASES = 2000
PLD_REJECT_P = 0.001  # the distribution test's verdict; strict, as it is reported beside the bound

#: The partner's release function: (partner, spec, partials) -> release dict with "stats".
ReleaseFn = Callable[[str, QuerySpec, Partials, Accountant | None], dict[str, Any]]


def neighbours(spec: QuerySpec) -> tuple[Partials, Partials]:
    """D (no customer) and D' (one customer at the worst place the declared bounds allow)."""
    columns = {c: pd.Series([], dtype=object) for c in spec.source_fields()}
    try:
        empty = compute_partials(pd.DataFrame(columns), spec)
    except Exception as exc:
        raise ConfigError(f"query {spec.query_id}: cannot lay out its release for the audit ({exc})") from exc
    worst = {}
    for name, values in empty.stats.items():
        arr = np.zeros_like(values, dtype=float)
        sign = 1.0
        if name == "sum" and spec.bounds is not None:
            lo, hi = spec.bounds
            sign = 1.0 if abs(hi) >= abs(lo) else -1.0
        arr.reshape(-1)[0] = sign * empty.weights[name]  # the customer's largest possible contribution
        worst[name] = arr
    zero = {n: np.zeros_like(v, dtype=float) for n, v in empty.stats.items()}
    return Partials(zero, dict(empty.weights)), Partials(worst, dict(empty.weights))


def _normalised(release: dict[str, Any], weights: dict[str, float]) -> np.ndarray:
    return np.concatenate([np.asarray(release["stats"][n], float).ravel() / weights[n] for n in weights])


def _loss(x: np.ndarray, a: np.ndarray, b: np.ndarray, mechanism: str, scale: float) -> np.ndarray:
    """Privacy loss ln p_D'(x) / p_D(x) under noise of ``scale`` (rows of ``x`` are releases)."""
    if mechanism == mechanisms.LAPLACE:
        # |x - a| - |x - b| is 2x - a - b clipped to +-|b - a| (sign of b - a): exact at the clip
        gap = b - a
        per = np.sign(gap) * np.clip(2 * x - a - b, -np.abs(gap), np.abs(gap))
        return np.asarray(per.sum(axis=1) / scale, dtype=float)
    return np.asarray(
        (((x - a) ** 2).sum(axis=1) - ((x - b) ** 2).sum(axis=1)) / (2 * scale * scale), dtype=float
    )


def ks_ties_broken(observed: np.ndarray, claimed: np.ndarray, rng: np.random.Generator) -> Any:
    """Two-sample Kolmogorov-Smirnov test on the pooled ranks, tied values ordered at random.

    Why: the test's null distribution holds for samples without ties; a loss with atoms has
    many, and scipy's p-value for them is not uniform. Ordering each tie at random makes every
    assignment of ranks to the two samples equally likely under the null, as for continuous data.
    """
    pooled = np.concatenate([observed, claimed])
    order = np.lexsort((rng.random(pooled.size), pooled))
    ranks = np.empty(pooled.size, dtype=float)
    ranks[order] = np.arange(pooled.size)
    return stats.ks_2samp(ranks[: observed.size], ranks[observed.size :])


def audit_query(
    spec: QuerySpec,
    *,
    releases: int = DEFAULT_RELEASES,
    seed: int = 0,
    release_fn: ReleaseFn = _noised,
    confidence: float = CONFIDENCE,
    accountant: Accountant | None = None,
) -> dict[str, Any]:
    """Release ``spec`` ``releases`` times on D and on D'; the bound and the loss-distribution test.

    ``accountant``: the one the partner sized its Gaussian noise with (RDP when None); the
    releases and the claimed noise are both that partner's.
    """
    if releases < 40:
        raise ConfigError(f"--releases must be at least 40, got {releases}")
    started = time.perf_counter()
    d, d1 = neighbours(spec)
    a, b = _normalised({"stats": d.stats}, d.weights), _normalised({"stats": d1.stats}, d1.weights)
    on_d = np.stack(
        [_normalised(release_fn("audit", spec, d, accountant), d.weights) for _ in range(releases)]
    )
    on_d1 = np.stack(
        [_normalised(release_fn("audit", spec, d1, accountant), d1.weights) for _ in range(releases)]
    )
    claimed = mechanisms.calibrate(spec.mechanism, spec.epsilon, spec.delta, d.statistics, accountant)
    scale = claimed.normalised_scale
    loss_d, loss_d1 = _loss(on_d, a, b, spec.mechanism, scale), _loss(on_d1, a, b, spec.mechanism, scale)
    bound = threshold_epsilon(loss_d, loss_d1, spec.delta, confidence, seed=seed)
    rng = np.random.default_rng(seed)
    if spec.mechanism == mechanisms.LAPLACE:
        reference = b + rng.laplace(0.0, scale, size=(releases, len(b)))
    else:
        reference = b + rng.normal(0.0, scale, size=(releases, len(b)))
    loss_claimed = _loss(reference, a, b, spec.mechanism, scale)
    ks = ks_ties_broken(loss_d1, loss_claimed, rng)
    return {
        "mechanism": f"analytics:{spec.kind}:{spec.mechanism}",
        "method": "repeated releases on neighbouring datasets, Clopper-Pearson threshold test",
        "query_id": spec.query_id,
        "claimed_epsilon": spec.epsilon,
        "delta": spec.delta,
        "calibrated_with": claimed.accountant,
        "confidence": confidence,
        "statistics": d.statistics,
        "releases_per_dataset": releases,
        "epsilon_lower_bound": bound["epsilon_lower_bound"],
        "threshold_test": bound,
        "privacy_loss_test": {
            "test": "two-sample Kolmogorov-Smirnov, released vs claimed noise, ties broken at random",
            "statistic": float(ks.statistic),
            "p_value": float(ks.pvalue),
            "mean_loss_observed": float(loss_d1.mean()),
            "mean_loss_claimed": float(loss_claimed.mean()),
            "rejected": bool(ks.pvalue < PLD_REJECT_P),
        },
        "flagged": bool(bound["epsilon_lower_bound"] > spec.epsilon),
        "seconds": round(time.perf_counter() - started, 3),
    }
