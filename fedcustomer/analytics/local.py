"""True (not yet noised) partial aggregates of one partner, laid out over declared cells.

This never leaves the partner: :mod:`fedcustomer.analytics.partner` noises it first.
One row of the input frame is one customer (the store holds one row per pseudonym),
which is what the per-customer sensitivities below assume.

Clamping: sums, means, histograms and quantiles clamp each value to the declared
bounds (or the outer bin edges) before aggregating. That bounds the sensitivity and
biases the answer toward the interval when real values lie outside it: too low an
upper bound under-states large spends. Missing values are left out of sums and means
(the mean is over customers with a value) and out of histograms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.analytics import rfm as rfm_mod
from fedcustomer.analytics.spec import BAND_SUFFIX, QuerySpec, band_labels
from fedcustomer.errors import ConfigError, DataError

QUALITY_EXTRAS = ("duplicates", "invalid")


@dataclass
class Partials:
    """Per-statistic arrays over the spec's cells (and bins), with per-customer weights."""

    stats: dict[str, np.ndarray]
    weights: dict[str, float]
    rows: int = 0  # rows read (kept at the partner; never released)
    clamped: int = 0  # values moved by clamping (kept at the partner; audit detail only)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def statistics(self) -> int:
        """m: statistics one customer can touch (one element each)."""
        return len(self.stats)


def key_of(value: Any) -> str | None:
    """Normalise a group value to its declared string form (None for missing)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return str(value)


def derive_columns(frame: pd.DataFrame, spec: QuerySpec) -> pd.DataFrame:
    """Add declared derived group fields: RFM ``segment`` and ``<field>_band``."""
    out = frame.copy()
    for g in spec.group_by:
        if g in out.columns or g in spec.groups:
            continue
        if g == rfm_mod.SEGMENT_FIELD and spec.rfm is not None:
            out[g] = rfm_mod.segment(out, spec.rfm)
        elif g.endswith(BAND_SUFFIX) and g[: -len(BAND_SUFFIX)] in spec.bands:
            src = g[: -len(BAND_SUFFIX)]
            edges = np.asarray(spec.bands[src], dtype=float)
            values = pd.to_numeric(out[src], errors="coerce").to_numpy(dtype=float)
            idx = np.searchsorted(edges, values, side="right") - 1
            idx[values == edges[-1]] = len(edges) - 2  # last band includes its upper edge
            labels = np.array(band_labels(tuple(edges)), dtype=object)
            ok = (idx >= 0) & (idx < len(labels)) & ~np.isnan(values)
            out[g] = np.where(ok, labels[np.clip(idx, 0, len(labels) - 1)], None)
    return out


def cell_index(frame: pd.DataFrame, spec: QuerySpec) -> np.ndarray:
    """Each row's cell number, or -1 when a group value is outside its declared domain."""
    n = len(frame)
    idx = np.zeros(n, dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    for g in spec.group_by:
        dom = spec.domain(g)
        pos = {v: i for i, v in enumerate(dom)}
        codes = np.array([pos.get(key_of(v), -1) for v in frame[g].tolist()], dtype=np.int64)
        valid &= codes >= 0
        idx = idx * len(dom) + np.maximum(codes, 0)
    return np.where(valid, idx, -1)


def apply_where(frame: pd.DataFrame, where: Mapping[str, tuple[Any, ...]]) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for name, values in where.items():
        allowed = {key_of(v) for v in values}
        keep &= np.array([key_of(v) in allowed for v in frame[name].tolist()], dtype=bool)
    return frame[keep]


def compute_partials(
    frame: pd.DataFrame, spec: QuerySpec, extras: Mapping[str, int] | None = None
) -> Partials:
    """True aggregates of ``frame`` for ``spec`` (one row per customer)."""
    missing = [c for c in spec.source_fields() if c not in frame.columns]
    if missing:
        raise DataError(f"query {spec.query_id}: the partner's data lacks field(s) {', '.join(missing)}")
    if frame.index.has_duplicates and frame.index.name == "pseudonym":
        raise DataError(f"query {spec.query_id}: a customer appears twice; one row per customer is required")
    data = derive_columns(apply_where(frame, spec.where), spec)
    cells = cell_index(data, spec)
    n_cells = len(spec.cells())
    in_cell = cells >= 0
    stats: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    clamped = 0
    values = None
    if spec.field and spec.kind != "funnel":
        values = pd.to_numeric(data[spec.field], errors="coerce").to_numpy(dtype=float)
        if spec.kind != "count" and np.all(np.isnan(values)) and data[spec.field].notna().any():
            raise DataError(f"query {spec.query_id}: field {spec.field!r} is not numeric")

    if spec.kind == "count":
        ok = in_cell & (~np.isnan(values) if values is not None else True)
        stats["count"] = np.bincount(cells[ok], minlength=n_cells).astype(float)
        weights["count"] = 1.0
    elif spec.kind in ("sum", "mean"):
        assert values is not None and spec.bounds is not None
        lo, hi = spec.bounds
        ok = in_cell & ~np.isnan(values)
        clipped = np.clip(values[ok], lo, hi)
        clamped = int(np.sum(clipped != values[ok]))
        if spec.kind == "mean":
            stats["count"] = np.bincount(cells[ok], minlength=n_cells).astype(float)
            weights["count"] = 1.0
        stats["sum"] = np.bincount(cells[ok], weights=clipped, minlength=n_cells).astype(float)
        weights["sum"] = max(abs(lo), abs(hi))
    elif spec.kind in ("histogram", "quantiles"):
        assert values is not None
        edges = np.asarray(spec.bins, dtype=float)
        ok = in_cell & ~np.isnan(values)
        v = values[ok]
        clipped = np.clip(v, edges[0], edges[-1])
        clamped = int(np.sum(clipped != v))
        b = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, len(edges) - 2)
        n_bins = len(edges) - 1
        flat = np.bincount(cells[ok] * n_bins + b, minlength=n_cells * n_bins).astype(float)
        stats["hist"] = flat.reshape(n_cells, n_bins)
        weights["hist"] = 1.0
    elif spec.kind == "funnel":
        pos = {s: i for i, s in enumerate(spec.steps)}
        step = np.array([pos.get(key_of(v), -1) for v in data[spec.field].tolist()], dtype=np.int64)
        ok = in_cell & (step >= 0)
        n_bins = len(spec.steps)
        flat = np.bincount(cells[ok] * n_bins + step[ok], minlength=n_cells * n_bins).astype(float)
        stats["hist"] = flat.reshape(n_cells, n_bins)
        weights["hist"] = 1.0
    elif spec.kind == "quality":
        stats["rows"] = np.bincount(cells[in_cell], minlength=n_cells).astype(float)
        weights["rows"] = 1.0
        for f in spec.fields:
            ok = in_cell & data[f].notna().to_numpy()
            stats[f"nonnull:{f}"] = np.bincount(cells[ok], minlength=n_cells).astype(float)
            weights[f"nonnull:{f}"] = 1.0
        for key in QUALITY_EXTRAS:
            if extras is not None and key in extras:
                if spec.group_by:
                    raise ConfigError(f"query {spec.query_id}: {key} counts cannot be grouped; drop group_by")
                stats[key] = np.array([float(extras[key])])
                weights[key] = 1.0
    else:  # pragma: no cover - kinds are validated
        raise ConfigError(f"unknown kind {spec.kind!r}")
    return Partials(stats, weights, rows=len(frame), clamped=clamped)
