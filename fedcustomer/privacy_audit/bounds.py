"""Statistics that turn an attack's guesses into an epsilon lower bound.

Why this module: an audit is only as honest as its bound. Two are used:

* :func:`one_run_epsilon` -- the one-run bound of Steinke, Nasr and Jagielski
  ("Privacy Auditing with One (1) Training Run", NeurIPS 2023, Theorem 5.2 and the
  p-value procedure of its Appendix D). ``m`` canaries are each included with
  probability 1/2; the auditor makes ``r`` guesses (abstaining on the rest) of which ``v``
  are right. Under (epsilon, delta)-DP,

      P[W >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v - i) - f(v)) / i,
      f(x) = P[Binomial(r, e^eps / (1 + e^eps)) >= x].

  The lower bound is the largest epsilon whose p-value is still below ``1 - confidence``.
* :func:`threshold_epsilon` -- many independent releases on two neighbouring datasets:
  a threshold test's false and true positive rates, bounded with Clopper-Pearson, give
  ``eps >= ln((TPR_low - delta) / FPR_high)`` (both directions tried).

Plus ROC helpers for the membership-inference attacks. Pure numpy / scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fedcustomer.errors import ConfigError

CONFIDENCE = 0.95
_EPS_CEILING = 60.0  # beyond this every realistic p-value is 0; the search stops there


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct guesses out of ``r`` (m canaries) if the mechanism were (eps, delta)-DP."""
    if not (0 <= v <= r <= m):
        raise ConfigError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if epsilon < 0 or not (0 <= delta <= 1):
        raise ConfigError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Bin >= v]
    if delta == 0:
        return min(tail, 1.0)
    # (f(v - i) - f(v)) / i = P[v - i <= Bin < v] / i for i = 1..v; the max over i.
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # pmf(v-1), pmf(v-2), ..., pmf(0)
    ratios = np.cumsum(below) / np.arange(1, v + 1)
    return float(min(tail + 2.0 * m * delta * float(ratios.max()), 1.0))


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """Largest epsilon that ``v`` right out of ``r`` guesses refutes at ``confidence`` (0 if none)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0  # p(lo) < alpha <= p(hi)
    while one_run_p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, hi * 2
        if hi > _EPS_CEILING:
            return _EPS_CEILING
    for _ in range(50):
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class GuessResult:
    """The best guess count for one scored set of canaries, and the bound it gives."""

    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
        }


def guess_counts(m: int) -> list[int]:
    """Guess counts tried (each side: top k guessed in, bottom k guessed out), fixed before scoring."""
    counts = sorted({max(1, int(round(m * f))) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)})
    return [k for k in counts if 2 * k <= m] or [m // 2]


def best_guesses(
    scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = CONFIDENCE
) -> GuessResult:
    """Guess "in" for the k highest scores and "out" for the k lowest, for each k of :func:`guess_counts`.

    Trying a few k and keeping the best is what the paper does too; the confidence is split
    over the tries (Bonferroni), so the kept bound still holds at ``confidence``.
    """
    scores = np.asarray(scores, dtype=float)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m < 2 or len(included) != m:
        raise ConfigError("a canary audit needs at least 2 canaries, each with a score and a coin")
    order = np.argsort(scores, kind="stable")
    counts = guess_counts(m)
    level = 1.0 - (1.0 - confidence) / len(counts)
    best = GuessResult(0.0, m, 0, 0)
    for k in counts:
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        eps = one_run_epsilon(m, 2 * k, correct, delta, level)
        if eps > best.epsilon_lower_bound or best.guesses == 0:
            best = GuessResult(eps, m, 2 * k, correct)
    return best


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Two one-sided ``confidence`` bounds (lower, upper) on a binomial proportion."""
    if trials <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(stats.beta.ppf(alpha, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lo, hi


def _eps_at(tp: int, fp: int, n1: int, n0: int, delta: float, confidence: float) -> float:
    tpr_lo, _ = clopper_pearson(tp, n1, confidence)
    _, fpr_hi = clopper_pearson(fp, n0, confidence)
    if tpr_lo - delta <= 0 or fpr_hi <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def threshold_epsilon(
    scores_d: np.ndarray,
    scores_d1: np.ndarray,
    delta: float,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, float]:
    """Epsilon lower bound from releases on D (``scores_d``) and its neighbour D' (``scores_d1``).

    Half of each sample picks the threshold and direction that look best; the other half
    measures them, so the bound needs no correction for the choice. Each of the two rates
    is bounded at ``sqrt(confidence)``, so both hold together at ``confidence``.
    """
    a = np.asarray(scores_d, dtype=float)
    b = np.asarray(scores_d1, dtype=float)
    if len(a) < 20 or len(b) < 20:
        raise ConfigError("a threshold audit needs at least 20 releases on each dataset")
    rng = np.random.default_rng(seed)
    a, b = rng.permutation(a), rng.permutation(b)
    a_pick, a_test = a[: len(a) // 2], a[len(a) // 2 :]
    b_pick, b_test = b[: len(b) // 2], b[len(b) // 2 :]
    level = math.sqrt(confidence)
    best = (0.0, 0.0, 1.0)  # (estimate on the picking half, threshold, direction)
    for direction in (1.0, -1.0):
        pos, neg = direction * b_pick, direction * a_pick  # "positive" = looks like D'
        for t in np.quantile(pos, np.linspace(0.0, 0.98, 50)):
            est = _eps_at(int((pos >= t).sum()), int((neg >= t).sum()), len(pos), len(neg), delta, level)
            if est > best[0]:
                best = (est, float(t), direction)
    _, t, direction = best
    pos, neg = direction * b_test, direction * a_test
    tp, fp = int((pos >= t).sum()), int((neg >= t).sum())
    return {
        "epsilon_lower_bound": _eps_at(tp, fp, len(pos), len(neg), delta, level),
        "threshold": t,
        "true_positive_rate": tp / len(pos),
        "false_positive_rate": fp / len(neg),
        "releases_per_dataset": float(min(len(scores_d), len(scores_d1))),
    }


def roc(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates over every threshold (higher score = "member")."""
    s = np.concatenate([np.asarray(scores_members, float), np.asarray(scores_nonmembers, float)])
    y = np.concatenate([np.ones(len(scores_members)), np.zeros(len(scores_nonmembers))])
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # ties move together
    tps = np.cumsum(y)[last]
    fps = np.cumsum(1 - y)[last]
    tpr = np.r_[0.0, tps / max(1.0, y.sum())]
    fpr = np.r_[0.0, fps / max(1.0, (1 - y).sum())]
    return fpr, tpr


def attack_metrics(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 0.1% and 1% FPR (the largest TPR whose FPR does not exceed the level)."""
    fpr, tpr = roc(scores_members, scores_nonmembers)
    auc = float(np.trapezoid(tpr, fpr))
    out = {"auc": auc}
    for level, name in ((0.001, "tpr_at_0.1pct_fpr"), (0.01, "tpr_at_1pct_fpr")):
        ok = fpr <= level + 1e-12
        out[name] = float(tpr[ok].max()) if ok.any() else 0.0
    return out
