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
        return np.asarray((np.abs(x - a) - np.abs(x - b)).sum(axis=1) / scale, dtype=float)
    return np.asarray(
        (((x - a) ** 2).sum(axis=1) - ((x - b) ** 2).sum(axis=1)) / (2 * scale * scale), dtype=float
    )


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
    ks = stats.ks_2samp(loss_d1, _loss(reference, a, b, spec.mechanism, scale))
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
            "test": "two-sample Kolmogorov-Smirnov, released vs claimed noise",
            "statistic": float(ks.statistic),
            "p_value": float(ks.pvalue),
            "mean_loss_observed": float(loss_d1.mean()),
            "mean_loss_claimed": float(_loss(reference, a, b, spec.mechanism, scale).mean()),
            "rejected": bool(ks.pvalue < PLD_REJECT_P),
        },
        "flagged": bool(bound["epsilon_lower_bound"] > spec.epsilon),
        "seconds": round(time.perf_counter() - started, 3),
    }
