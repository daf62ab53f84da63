"""Combine partners' DP releases into one answer with intervals (post-processing only).

Partners add independent noise to their own partial aggregates; the coordinator sums
them, so a combined count carries the sum of the partners' noise and its interval is
computed from that exact mixture (see :func:`mechanisms.noise_halfwidth`). Ratios
(means, conversion rates, completeness) use a box interval: numerator and denominator
each at level ``1 - (1 - confidence) / 2``, which holds jointly with at least
``confidence`` (conservative). Quantile intervals come from the noisy cumulative
histogram and treat the noisy total as exact (approximate; resolution is one bin).

Intervals describe the DP noise only, not sampling error or clamping bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcustomer.analytics.mechanisms import LAPLACE, Noise, box_ratio
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import DataError, FederationError

CLAMP_NOTE = (
    "values were clamped to the declared bounds before aggregation; real values outside them bias "
    "the answer toward the bounds"
)
NOISE_NOTE = "intervals cover the DP noise only (not sampling error or clamping bias)"


@dataclass
class QueryResult:
    """The released answer: one row per cell (and bin/step), with estimate, interval and noise sd."""

    spec: QuerySpec
    partners: list[str]
    rows: list[dict[str, Any]]
    refused: dict[str, str] = field(default_factory=dict)
    partner_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    spend: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    latency_s: float | None = None
    anchors: list[dict[str, Any]] = field(default_factory=list)  # partners' audit anchors, as received
    # Gaussian releases: the accountant each partner sized its noise with (rdp or pld), so an
    # audit replays the noise each partner really added.
    calibrated_with: dict[str, str] = field(default_factory=dict)

    @property
    def query_id(self) -> str:
        return self.spec.query_id

    def row(self, statistic: str | None = None, label: str | None = None, **group: str) -> dict[str, Any]:
        """The one row matching a statistic, label and group values (KeyError if none)."""
        for r in self.rows:
            if (
                (statistic is None or r["statistic"] == statistic)
                and (label is None or r.get("label") == label)
                and all(r["group"].get(k) == v for k, v in group.items())
            ):
                return r
        raise KeyError(f"no row for statistic={statistic!r} label={label!r} group={group}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fedcustomer.analytics.result/1",
            "query_id": self.spec.query_id,
            "spec": self.spec.to_dict(),
            "kind": self.spec.kind,
            "dataset": self.spec.dataset,
            "confidence": self.spec.confidence,
            "partners": list(self.partners),
            "refused": dict(self.refused),
            "spend": dict(self.spend),
            "calibrated_with": dict(self.calibrated_with),
            "rows": self.rows,
            "partner_rows": self.partner_rows,
            "notes": list(self.notes),
            "latency_s": self.latency_s,
        }


def _noise_of(release: dict[str, Any], stat: str) -> Noise:
    scale = float(release["normalised_scale"]) * abs(float(release["weights"][stat]))
    return Noise(laplace=(scale,)) if release["mechanism"] == LAPLACE else Noise(gaussian=(scale,))


def _sum_noise(parts: Sequence[Noise], times: int = 1) -> Noise:
    total = Noise()
    for p in parts:
        for _ in range(times):
            total = total + p
    return total


def combine(
    spec: QuerySpec, releases: Sequence[dict[str, Any]], refused: dict[str, str] | None = None
) -> QueryResult:
    """Sum the releases cell by cell and derive the kind's estimates and intervals."""
    refused = dict(refused or {})
    if not releases:
        raise FederationError(
            f"query {spec.query_id}: no partner released an answer"
            + (": " + "; ".join(f"{k}: {v}" for k, v in refused.items()) if refused else "")
        )
    for r in releases:
        if r.get("query_id") != spec.query_id or r.get("kind") != spec.kind:
            raise DataError(
                f"a release for query {r.get('query_id')!r} ({r.get('kind')}) does not answer "
                f"{spec.query_id!r} ({spec.kind})"
            )
    stats = [s for s in releases[0]["stats"] if all(s in r["stats"] for r in releases)]
    totals = {s: np.sum([np.asarray(r["stats"][s], dtype=float) for r in releases], axis=0) for s in stats}
    noises = {s: [_noise_of(r, s) for r in releases] for s in stats}
    result = QueryResult(
        spec,
        [r["partner"] for r in releases],
        [],
        refused,
        spend={r["partner"]: r.get("spend", {}) for r in releases},
        calibrated_with={r["partner"]: str(r["accountant"]) for r in releases if r.get("accountant")},
    )
    result.rows = _rows(spec, totals, noises)
    if spec.kind in ("sum", "mean", "histogram", "quantiles"):
        result.notes.append(CLAMP_NOTE)
    result.notes.append(NOISE_NOTE)
    if refused:
        result.notes.append(f"partners that refused are not included: {', '.join(sorted(refused))}")
    replayed = sorted(str(r["partner"]) for r in releases if r.get("already_paid"))
    if replayed:
        result.notes.append(
            f"query id {spec.query_id!r} was answered before by {', '.join(replayed)}: their earlier, already "
            "paid answer is returned again (no new charge, no new noise); give the query a new id to ask afresh"
        )
    if spec.kind == "quality":
        for r in releases:
            one = {s: np.asarray(r["stats"][s], dtype=float) for s in r["stats"]}
            result.partner_rows[r["partner"]] = _rows(spec, one, {s: [_noise_of(r, s)] for s in one})
    return result


def _rows(
    spec: QuerySpec, totals: dict[str, np.ndarray], noises: dict[str, list[Noise]]
) -> list[dict[str, Any]]:
    c = spec.confidence
    c_pair = 1 - (1 - c) / 2
    rows: list[dict[str, Any]] = []
    cells = spec.cells()

    def plain(
        group: dict[str, str],
        statistic: str,
        value: float,
        noise: Noise,
        label: str | None = None,
        floor: float | None = None,
    ) -> dict[str, Any]:
        hw = noise.halfwidth(c)
        lo, hi = value - hw, value + hw
        row = {
            "group": group,
            "statistic": statistic,
            "label": label,
            "estimate": float(value),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "noise_sd": noise.sd,
        }
        if floor is not None:  # counts cannot be negative: post-processing never hurts coverage
            row["ci_low"] = max(floor, row["ci_low"])
            row["ci_high"] = max(floor, row["ci_high"])
            # the estimate too, so it never sits outside its own interval (a count of -168.7 under
            # [0, 119.2]); the noisy value itself, unbiased, stays for whoever combines releases
            row["estimate"], row["noisy_estimate"] = max(floor, float(value)), float(value)
        return row

    def ratio(
        group: dict[str, str],
        statistic: str,
        num: float,
        num_noise: Noise,
        den: float,
        den_noise: Noise,
        lo: float,
        hi: float,
        label: str | None = None,
    ) -> dict[str, Any]:
        est, a, b = box_ratio(num, num_noise.halfwidth(c_pair), den, den_noise.halfwidth(c_pair), lo, hi)
        return {
            "group": group,
            "statistic": statistic,
            "label": label,
            "estimate": est,
            "ci_low": a,
            "ci_high": b,
            "noise_sd": None,
            "numerator": float(num),
            "denominator": float(den),
        }

    for i, cell in enumerate(cells):
        group = dict(zip(spec.group_by, cell))
        if spec.kind == "count":
            rows.append(plain(group, "count", totals["count"][i], _sum_noise(noises["count"]), floor=0.0))
        elif spec.kind == "sum":
            rows.append(plain(group, "sum", totals["sum"][i], _sum_noise(noises["sum"])))
        elif spec.kind == "mean":
            assert spec.bounds is not None
            row = ratio(
                group,
                "mean",
                totals["sum"][i],
                _sum_noise(noises["sum"]),
                totals["count"][i],
                _sum_noise(noises["count"]),
                spec.bounds[0],
                spec.bounds[1],
            )
            row["count"] = plain(group, "count", totals["count"][i], _sum_noise(noises["count"]), floor=0.0)
            row["sum"] = plain(group, "sum", totals["sum"][i], _sum_noise(noises["sum"]))
            rows.append(row)
        elif spec.kind == "histogram":
            for j, label in enumerate(spec.bin_labels()):
                rows.append(
                    plain(group, "count", totals["hist"][i][j], _sum_noise(noises["hist"]), label, floor=0.0)
                )
        elif spec.kind == "quantiles":
            rows += _quantile_rows(spec, group, np.asarray(totals["hist"][i]), noises["hist"])
        elif spec.kind == "funnel":
            h = np.asarray(totals["hist"][i])
            n = len(spec.steps)
            reached = [float(h[j:].sum()) for j in range(n)]  # reached step j = furthest step >= j
            reached_noise = [_sum_noise(noises["hist"], n - j) for j in range(n)]
            for j, step in enumerate(spec.steps):
                rows.append(plain(group, "reached", reached[j], reached_noise[j], step, floor=0.0))
            for j in range(n - 1):
                rows.append(
                    ratio(
                        group,
                        "conversion",
                        reached[j + 1],
                        reached_noise[j + 1],
                        reached[j],
                        reached_noise[j],
                        0.0,
                        1.0,
                        f"{spec.steps[j]}->{spec.steps[j + 1]}",
                    )
                )
            rows.append(
                ratio(
                    group,
                    "conversion",
                    reached[-1],
                    reached_noise[-1],
                    reached[0],
                    reached_noise[0],
                    0.0,
                    1.0,
                    f"{spec.steps[0]}->{spec.steps[-1]}",
                )
            )
        elif spec.kind == "quality":
            n_rows = totals["rows"][i]
            rows.append(plain(group, "rows", n_rows, _sum_noise(noises["rows"]), floor=0.0))
            for f in spec.fields:
                key = f"nonnull:{f}"
                rows.append(
                    ratio(
                        group,
                        "completeness",
                        totals[key][i],
                        _sum_noise(noises[key]),
                        n_rows,
                        _sum_noise(noises["rows"]),
                        0.0,
                        1.0,
                        f,
                    )
                )
            for key in ("duplicates", "invalid"):
                if key in totals:
                    rows.append(plain(group, key, totals[key][0], _sum_noise(noises[key]), floor=0.0))
    return rows


def _quantile_rows(
    spec: QuerySpec, group: dict[str, str], hist: np.ndarray, parts: list[Noise]
) -> list[dict[str, Any]]:
    edges = np.asarray(spec.bins, dtype=float)
    h = np.clip(hist, 0, None)  # post-processing: negative noisy counts carry no mass
    cum = np.cumsum(h)
    total = float(cum[-1])
    raw_cum = np.cumsum(hist)
    hws = [_sum_noise(parts, k + 1).halfwidth(spec.confidence) for k in range(len(hist))]
    rows = []
    for q in spec.quantiles:
        target = q * total
        if total <= 0:
            est, lo, hi = float((edges[0] + edges[-1]) / 2), float(edges[0]), float(edges[-1])
        else:
            k = int(np.searchsorted(cum, target, side="left"))
            k = min(k, len(h) - 1)
            before = cum[k - 1] if k > 0 else 0.0
            frac = (target - before) / h[k] if h[k] > 0 else 0.5
            est = float(edges[k] + frac * (edges[k + 1] - edges[k]))
            lo_k = next((j for j in range(len(h)) if raw_cum[j] + hws[j] >= target), len(h) - 1)
            hi_k = next((j for j in range(len(h)) if raw_cum[j] - hws[j] >= target), len(h) - 1)
            lo, hi = float(edges[lo_k]), float(edges[hi_k + 1])
        rows.append(
            {
                "group": group,
                "statistic": "quantile",
                "label": f"q{q:g}",
                "estimate": est,
                "ci_low": min(lo, est),
                "ci_high": max(hi, est),
                "noise_sd": None,
            }
        )
    return rows
