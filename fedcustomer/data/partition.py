"""Split one pooled data set into simulated partners, IID or deliberately non-IID.

Real federations are non-IID (a rural bank's customers differ from a city bank's), and
federated algorithms behave very differently on such data, so experiments need both a
uniform split and skewed ones: by a column's groups (feature skew) or by a Dirichlet draw
over label classes (label skew). Every partner also keeps a held-out test split for
federated evaluation. All splits are seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcustomer.errors import ConfigError, DataError

MAX_SIZE_RATIO = 3.0  # partition_by_column keeps the largest partner within this factor of the smallest


@dataclass
class PartnerDataset:
    """One partner's rows: a training split and a held-out test split for federated evaluation."""

    name: str
    kind: str
    train: pd.DataFrame
    test: pd.DataFrame

    @property
    def size(self) -> int:
        return len(self.train) + len(self.test)


def split_train_test(
    frame: pd.DataFrame, test_fraction: float, seed: int, stratify: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded random split; with ``stratify`` every value of that column keeps its share in both parts."""
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    n = len(frame)
    if stratify is None:
        order = rng.permutation(n)
        n_test = int(round(test_fraction * n))
        if n_test >= n and n > 0:
            n_test = n - 1
        test_pos, train_pos = order[:n_test], order[n_test:]
    else:
        if stratify not in frame.columns:
            raise DataError(f"cannot stratify on column {stratify!r}: it is not in the data")
        keys = frame[stratify].astype("string").fillna("<missing>").to_numpy()
        test_parts, train_parts = [], []
        for value in sorted(set(keys)):
            pos = np.flatnonzero(keys == value)
            pos = pos[rng.permutation(pos.size)]
            k = int(round(test_fraction * pos.size))
            test_parts.append(pos[:k])
            train_parts.append(pos[k:])
        test_pos = np.concatenate(test_parts) if test_parts else np.array([], dtype=int)
        train_pos = np.concatenate(train_parts) if train_parts else np.array([], dtype=int)
        test_pos, train_pos = np.sort(test_pos), np.sort(train_pos)
    train = frame.iloc[np.sort(train_pos)].reset_index(drop=True)
    test = frame.iloc[np.sort(test_pos)].reset_index(drop=True)
    return train, test


def partition_iid(
    frame: pd.DataFrame,
    n: int,
    seed: int,
    *,
    kind: str = "partner",
    prefix: str = "partner",
    test_fraction: float = 0.2,
    stratify: str | None = None,
) -> list[PartnerDataset]:
    """Shuffle and deal rows into ``n`` partners of (almost) equal size."""
    _check_n(frame, n)
    order = np.random.default_rng(seed).permutation(len(frame))
    parts = np.array_split(order, n)
    return _build(
        frame, parts, seed, kind=kind, prefix=prefix, test_fraction=test_fraction, stratify=stratify
    )


def partition_by_column(
    frame: pd.DataFrame,
    n: int,
    column: str,
    seed: int,
    *,
    kind: str = "partner",
    prefix: str = "partner",
    test_fraction: float = 0.2,
    stratify: str | None = None,
) -> list[PartnerDataset]:
    """Feature-skewed split: whole groups of ``column``'s values go to one partner where possible.

    A numeric column with many distinct values is cut into ``n`` contiguous bands (age
    bands, income bands). A categorical one has its groups dealt largest-first to the
    smallest partner; a group too big for that is cut into chunks, so partner sizes stay
    within about ``MAX_SIZE_RATIO`` of each other.
    """
    _check_n(frame, n)
    if column not in frame.columns:
        raise DataError(f"cannot partition by column {column!r}: it is not in the data")
    rng = np.random.default_rng(seed)
    values = frame[column]
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    if numeric and values.nunique(dropna=True) > max(2 * n, 10):
        parts = _contiguous_bands(values.to_numpy(dtype=float, na_value=np.nan), n, rng)
    else:
        parts = _deal_groups(values.astype("string").fillna("<missing>").to_numpy(), n, rng)
    return _build(
        frame, parts, seed, kind=kind, prefix=prefix, test_fraction=test_fraction, stratify=stratify
    )


def partition_dirichlet(
    frame: pd.DataFrame,
    n: int,
    label: str,
    alpha: float,
    seed: int,
    *,
    kind: str = "partner",
    prefix: str = "partner",
    test_fraction: float = 0.2,
    stratify: str | None = None,
    min_fraction: float = 0.25,
    max_tries: int = 200,
) -> list[PartnerDataset]:
    """Label-skewed split: each label class is spread over partners by a Dirichlet(alpha) draw.

    Small ``alpha`` gives strong skew. A continuous label (future spend) is first cut into
    quantile classes. Draws leaving a partner below ``min_fraction`` of the fair share are
    redrawn; if that keeps failing, ConfigError asks for a larger alpha.
    """
    _check_n(frame, n)
    if label not in frame.columns:
        raise DataError(f"cannot partition by label {label!r}: it is not in the data")
    if not alpha > 0:
        raise ConfigError(f"Dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = _label_classes(frame[label])
    fair = len(frame) / n
    floor = max(1, int(min_fraction * fair))
    for _ in range(max_tries):
        buckets: list[list[np.ndarray]] = [[] for _ in range(n)]
        for value in np.unique(classes):
            pos = np.flatnonzero(classes == value)
            pos = pos[rng.permutation(pos.size)]
            share = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(share)[:-1] * pos.size).round().astype(int)
            for i, chunk in enumerate(np.split(pos, cuts)):
                buckets[i].append(chunk)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if min(p.size for p in parts) >= floor:
            return _build(
                frame, parts, seed, kind=kind, prefix=prefix, test_fraction=test_fraction, stratify=stratify
            )
    raise ConfigError(
        f"Dirichlet split with alpha={alpha} kept leaving a partner with fewer than {floor} rows "
        f"after {max_tries} draws; use a larger alpha or fewer partners"
    )


# --------------------------------------------------------------------------- helpers
def _check_n(frame: pd.DataFrame, n: int) -> None:
    if n < 1:
        raise ConfigError(f"number of partners must be at least 1, got {n}")
    if len(frame) < n:
        raise DataError(f"cannot split {len(frame)} row(s) into {n} partners: some partner would be empty")


def _build(
    frame: pd.DataFrame,
    parts: list[np.ndarray],
    seed: int,
    *,
    kind: str,
    prefix: str,
    test_fraction: float,
    stratify: str | None,
) -> list[PartnerDataset]:
    out: list[PartnerDataset] = []
    for i, pos in enumerate(parts):
        name = f"{prefix}_{i + 1}"
        if len(pos) == 0:
            raise DataError(f"partner {name!r} received no rows; use fewer partners or another split")
        rows = frame.iloc[np.sort(pos)].reset_index(drop=True)
        train, test = split_train_test(rows, test_fraction, seed + 1000 * (i + 1), stratify)
        out.append(PartnerDataset(name=name, kind=kind, train=train, test=test))
    return out


def _contiguous_bands(values: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cut rows ordered by value into n equal-count bands; ties broken randomly, missing values last."""
    jitter = rng.random(values.size)
    order = np.lexsort((jitter, np.where(np.isnan(values), np.inf, values)))
    return [np.sort(p) for p in np.array_split(order, n)]


def _deal_groups(keys: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Largest-first assignment of (possibly chunked) groups to the currently smallest partner."""
    groups = []
    for value in sorted(set(keys)):
        pos = np.flatnonzero(keys == value)
        groups.append(pos[rng.permutation(pos.size)])
    total = len(keys)
    chunk_cap = int(np.ceil(total / n))
    while True:
        chunks = []
        for pos in groups:
            pieces = int(np.ceil(pos.size / chunk_cap))
            chunks.extend(np.array_split(pos, pieces))
        chunks.sort(key=lambda c: (-c.size, rng.random()))
        loads = np.zeros(n, dtype=int)
        assigned: list[list[np.ndarray]] = [[] for _ in range(n)]
        for chunk in chunks:
            smallest = np.flatnonzero(loads == loads.min())
            target = int(rng.choice(smallest))
            assigned[target].append(chunk)
            loads[target] += chunk.size
        if loads.min() > 0 and loads.max() <= MAX_SIZE_RATIO * loads.min() or chunk_cap == 1:
            break
        chunk_cap = max(1, chunk_cap // 2)
    return [np.sort(np.concatenate(a)) if a else np.array([], dtype=int) for a in assigned]


def _label_classes(series: pd.Series, max_classes: int = 4) -> np.ndarray:
    """Class per row: the value itself for a discrete label, a quantile bin for a continuous one."""
    if pd.api.types.is_numeric_dtype(series.dtype) and series.nunique(dropna=True) > 10:
        values = series.to_numpy(dtype=float, na_value=np.nan)
        zero = values == 0
        bins = np.full(values.size, -1, dtype=int)
        positive = ~zero & ~np.isnan(values)
        if positive.any():
            ranks = pd.Series(values[positive]).rank(method="first").to_numpy()
            k = max_classes - 1 if zero.any() else max_classes
            bins[positive] = np.minimum((ranks - 1) * k // positive.sum(), k - 1).astype(int)
        bins[np.isnan(values)] = -2
        return bins
    return series.astype("string").fillna("<missing>").to_numpy()
