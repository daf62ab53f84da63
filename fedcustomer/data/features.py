"""Feature specifications: turn a partner's raw frame into model inputs without fitting anything.

Federated partners must encode their data identically, and any statistic fitted on a
partner's data (a mean, a min, a vocabulary) would itself be a release that DP-SGD does
not account for. So every feature is declared with *public* bounds or categories and the
transform is purely row-wise: clip to the declared bounds, scale to [0, 1], one-hot the
declared categories, and flag missing numeric values with an indicator column.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.data.schema import Schema, listed_names
from fedcustomer.data.validators import is_missing
from fedcustomer.errors import ConfigError, DataError, SchemaError

TASKS = ("repayment", "clv")
SPEC_FORMAT_VERSION = 1
# Schema types whose stored values read as numbers (booleans as 0/1): what a numeric feature
# or a label may be declared over.
NUMBER_TYPES = ("integer", "float", "boolean")


class DataDerivedBoundsWarning(UserWarning):
    """Bounds were read off the data, which weakens the DP guarantee until replaced by declared ones."""


@dataclass(frozen=True)
class NumericFeature:
    """A numeric column, clipped to declared public bounds and scaled to [0, 1].

    ``log`` applies ``sign(x) * log1p(|x|)`` first, for heavy-tailed amounts; the bounds
    are then in log space.
    """

    name: str
    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("a numeric feature needs a non-empty name")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or not self.lo < self.hi:
            raise SchemaError(
                f"numeric feature {self.name!r}: bounds must be finite with lo < hi, got lo={self.lo}, hi={self.hi}"
            )

    @property
    def midpoint(self) -> float:
        return (self.lo + self.hi) / 2.0

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Scale float values (NaN allowed) to [0, 1]; NaN stays NaN."""
        v = np.asarray(values, dtype=np.float64)
        if self.log:
            v = np.sign(v) * np.log1p(np.abs(v))
        v = np.clip(v, self.lo, self.hi)
        return (v - self.lo) / (self.hi - self.lo)


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical column one-hot encoded over declared public categories; unknown -> all zeros."""

    name: str
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise SchemaError("a categorical feature needs a non-empty name")
        cats = tuple(str(c) for c in self.categories)
        if not cats:
            raise SchemaError(f"categorical feature {self.name!r} declares no categories")
        if len(set(cats)) != len(cats):
            raise SchemaError(f"categorical feature {self.name!r} declares a category twice: {list(cats)}")
        object.__setattr__(self, "categories", cats)

    def encode(self, values: pd.Series) -> np.ndarray:
        """One-hot matrix (n, len(categories)); missing or undeclared values give an all-zero row."""
        out = np.zeros((len(values), len(self.categories)), dtype=np.float32)
        if values.dtype.kind in "iufb":  # numbers: one key per distinct value, not one call per row
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            column = {cat: j for j, cat in enumerate(self.categories)}  # -1: missing or undeclared
            where = np.array([column.get(category_key(u), -1) for u in uniques] + [-1], dtype=np.intp)[codes]
            rows = np.flatnonzero(where >= 0)
            out[rows, where[rows]] = 1.0
            return out
        keys = values.map(category_key)
        for j, cat in enumerate(self.categories):
            out[:, j] = (keys == cat).to_numpy(dtype=bool)
        return out


Feature = NumericFeature | CategoricalFeature


def category_key(value: Any) -> str | None:
    """Canonical text of a category value, so 2, 2.0 and "2" all match the declared "2"."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, (np.floating,)):
        return category_key(float(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


@dataclass
class FeatureSpec:
    """What a task reads from a partner's frame and how it becomes a float matrix.

    The layout of the encoded matrix is: each feature in declaration order (a numeric
    feature is one column, a categorical feature one column per category), then one
    missing-value indicator per numeric feature, in the same order.
    """

    task: str
    label: str | None  # None: a features-only spec (a vertical party that does not hold the label)
    id_column: str | None
    features: list[Feature] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if not self.features:
            raise SchemaError(f"feature spec for task {self.task!r} declares no features")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"feature spec declares feature(s) twice: {', '.join(dup)}")
        if self.label in names:
            raise SchemaError(
                f"label column {self.label!r} is also declared as a feature; remove it from features"
            )
        if self.id_column is not None and self.id_column in names:
            raise SchemaError(f"id column {self.id_column!r} must not be a feature")

    # ----------------------------------------------------------------- layout
    @property
    def numeric(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @property
    def input_dim(self) -> int:
        """Width of X: numeric columns + one-hot columns + one missing indicator per numeric feature."""
        width = 0
        for f in self.features:
            width += 1 if isinstance(f, NumericFeature) else len(f.categories)
        return width + len(self.numeric)

    def columns(self) -> list[str]:
        """Raw columns the transform needs: the features, then the label (if the spec names one)."""
        return [f.name for f in self.features] + ([self.label] if self.label is not None else [])

    def encoded_names(self) -> list[str]:
        """Names of X's columns, e.g. ``income``, ``region=north``, ``income__missing``."""
        names: list[str] = []
        for f in self.features:
            if isinstance(f, NumericFeature):
                names.append(f.name)
            else:
                names.extend(f"{f.name}={c}" for c in f.categories)
        names.extend(f"{f.name}__missing" for f in self.numeric)
        return names

    # ------------------------------------------------------- schema agreement
    def check_against(self, schema: Schema, partner: str | None = None, *, with_label: bool = True) -> None:
        """Refuse a spec that does not fit a partner's schema, before any row is read.

        Every column the spec reads must be a non-core field of the dataset; numeric
        features and the label must be number fields; a categorical feature over a number
        field must declare values of that type (integer codes), or no row could match one.
        ``with_label=False`` checks the features alone (a party that holds no label).
        Messages name fields and types only: never a value, never a file.
        """
        where = f"dataset {schema.dataset!r}" + (f" at partner {partner!r}" if partner else "")
        if with_label and self.label is None:
            raise DataError(
                f"the feature spec for {where} names no label (a features-only spec); the party that "
                "trains on the label needs a spec drafted with --label COLUMN"
            )
        read = self.columns() if with_label else [f.name for f in self.features]
        missing = [c for c in read if c not in schema.names]
        if missing:
            raise DataError(f"{where} has no field(s) {', '.join(missing)} that the feature spec reads")
        core = [c for c in read if schema.field(c).is_core]
        if core:
            raise DataError(
                f"the feature spec reads core-tier field(s) {', '.join(core)} of {where}; training never "
                "reads core fields: drop them from the spec"
            )
        problems = []
        label_type = schema.field(self.label).type if with_label and self.label else NUMBER_TYPES[0]
        if label_type not in NUMBER_TYPES:
            problems.append(
                f"label {self.label!r} is a {label_type} field, but a {self.task} label must be a number "
                f"({', '.join(NUMBER_TYPES)})"
            )
        for f in self.features:
            problem = _type_problem(f, schema.field(f.name).type)
            if problem:
                problems.append(problem)
        if problems:
            raise SchemaError(
                f"the feature spec does not match the schema of {where}: " + "; ".join(problems)
            )

    # -------------------------------------------------------------- transform
    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Encode features and label: X float32 (n, input_dim), y float32 (n,).

        Repayment y is the 0/1 default flag; CLV y is ``log1p(spend)``. Row-wise only, so
        identical at every partner and nothing about the data is learned or released.
        """
        if self.label is None:
            raise DataError("the feature spec names no label (features only); it cannot encode labels")
        missing = [c for c in [self.label] if c not in frame.columns]
        if missing:
            raise DataError(
                f"label column {self.label!r} is missing from the data (columns present: "
                f"{_list_columns(frame)}); pass the right label name or add the column"
            )
        x = self.transform_features(frame)
        y = self._encode_label(frame[self.label])
        return x, y

    def transform_features(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode the features only (for scoring customers whose label is unknown)."""
        absent = [f.name for f in self.features if f.name not in frame.columns]
        if absent:
            raise DataError(
                f"feature column(s) missing from the data: {', '.join(absent)}; the {self.task} spec needs "
                f"{', '.join(f.name for f in self.features)}"
            )
        if len(frame) == 0:
            raise DataError(f"the data for task {self.task!r} is empty (0 rows); nothing to encode")
        blocks: list[np.ndarray] = []
        indicators: list[np.ndarray] = []
        for f in self.features:
            if isinstance(f, NumericFeature):
                raw = _numeric_column(frame[f.name], f.name, "feature")
                scaled = f.encode(raw)
                is_missing = np.isnan(scaled)
                scaled[is_missing] = 0.5  # the midpoint of the declared bounds, after scaling
                blocks.append(scaled.astype(np.float32)[:, None])
                indicators.append(is_missing.astype(np.float32)[:, None])
            else:
                blocks.append(f.encode(frame[f.name]))
        return np.ascontiguousarray(np.hstack(blocks + indicators), dtype=np.float32)

    def _encode_label(self, series: pd.Series) -> np.ndarray:
        values = _numeric_column(series, str(self.label), "label")
        nan_rows = np.flatnonzero(np.isnan(values))
        if nan_rows.size:
            raise DataError(
                f"label column {self.label!r} has {nan_rows.size} missing value(s), e.g. at row {nan_rows[0] + 1}; "
                "drop unlabelled rows before training"
            )
        if self.task == "repayment":
            bad = np.flatnonzero((values != 0) & (values != 1))
            if bad.size:
                raise DataError(
                    f"label column {self.label!r} must be a 0/1 default flag for the repayment task; "
                    f"{bad.size} row(s) hold other values, e.g. row {bad[0] + 1}"
                )
            return values.astype(np.float32)
        bad = np.flatnonzero((values < 0) | ~np.isfinite(values))
        if bad.size:
            raise DataError(
                f"label column {self.label!r} must be a non-negative, finite future spend for the clv task; "
                f"{bad.size} row(s) are negative or infinite, e.g. row {bad[0] + 1}"
            )
        return np.log1p(values).astype(np.float32)

    # ---------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (written to a run's ``feature_spec.json``)."""
        feats: list[dict[str, Any]] = []
        for f in self.features:
            if isinstance(f, NumericFeature):
                feats.append({"type": "numeric", "name": f.name, "lo": f.lo, "hi": f.hi, "log": f.log})
            else:
                feats.append({"type": "categorical", "name": f.name, "categories": list(f.categories)})
        return {
            "version": SPEC_FORMAT_VERSION,
            "task": self.task,
            "label": self.label,
            "id_column": self.id_column,
            "features": feats,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; SchemaError naming the field that is wrong."""
        if not isinstance(d, dict):
            raise SchemaError(f"feature spec must be a mapping, got {type(d).__name__}")
        version = d.get("version", SPEC_FORMAT_VERSION)
        if version != SPEC_FORMAT_VERSION:
            raise SchemaError(
                f"feature spec version {version!r} is not supported (expected {SPEC_FORMAT_VERSION})"
            )
        for key in ("task", "label", "features"):  # label null: a features-only spec
            if key not in d:
                raise SchemaError(f"feature spec is missing field {key!r}")
        if not isinstance(d["features"], list):
            raise SchemaError("feature spec field 'features' must be a list")
        features: list[Feature] = []
        for i, item in enumerate(d["features"]):
            where = f"features[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise SchemaError(f"feature spec {where} must be a mapping with a 'name'")
            kind = item.get("type")
            try:
                if kind == "numeric":
                    features.append(
                        NumericFeature(
                            str(item["name"]),
                            float(item["lo"]),
                            float(item["hi"]),
                            bool(item.get("log", False)),
                        )
                    )
                elif kind == "categorical":
                    cats = item["categories"]
                    if not isinstance(cats, list):
                        raise SchemaError(f"feature spec {where}.categories must be a list")
                    features.append(CategoricalFeature(str(item["name"]), tuple(str(c) for c in cats)))
                else:
                    raise SchemaError(
                        f"feature spec {where}.type must be 'numeric' or 'categorical', got {kind!r}"
                    )
            except KeyError as exc:
                raise SchemaError(f"feature spec {where} is missing field {exc.args[0]!r}") from None
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"feature spec {where} has a malformed value: {exc}") from None
        id_column = d.get("id_column")
        label = d["label"]
        return cls(
            str(d["task"]),
            None if label is None else str(label),
            None if id_column is None else str(id_column),
            features,
        )

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """A feature spec JSON file (``features draft`` writes one); ConfigError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"feature spec file {path} not found; write one with `fedcustomer features draft`"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a feature spec JSON file ({exc})") from None
        try:
            return cls.from_dict(raw)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from None

    # -------------------------------------------------------------- inference
    @classmethod
    def infer_from_partners(
        cls, trains: list[pd.DataFrame], task: str, label: str, id_column: str | None
    ) -> tuple[FeatureSpec, list[str]]:
        """See :func:`infer_from_partners`."""
        return infer_from_partners(trains, task, label, id_column)

    @classmethod
    def infer(cls, frame: pd.DataFrame, task: str, label: str, id_column: str | None) -> FeatureSpec:
        """Spec for a user's own file: every non-label, non-id column as a numeric feature.

        Bounds are the data's min and max, which is a data-dependent release: a
        :class:`DataDerivedBoundsWarning` says to replace them with declared public bounds.
        """
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if label not in frame.columns:
            raise DataError(
                f"label column {label!r} is missing from the data (columns present: {_list_columns(frame)})"
            )
        if id_column is not None and id_column not in frame.columns:
            raise DataError(
                f"id column {id_column!r} is missing from the data (columns present: {_list_columns(frame)})"
            )
        if len(frame) == 0:
            raise DataError("cannot infer a feature spec from an empty file (0 rows)")
        features: list[Feature] = []
        for col in frame.columns:
            if col in (label, id_column):
                continue
            values = _numeric_column(
                frame[col],
                str(col),
                "feature",
                hint=f"; declare {col!r} as a categorical feature in a feature spec file (--feature-spec), or leave it "
                "out: remove the column from the file, or give a feature spec that does not list it",
            )
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                raise DataError(f"feature column {col!r} has no finite values; drop it or fill it in")
            lo, hi = float(finite.min()), float(finite.max())
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            features.append(NumericFeature(str(col), lo, hi))
        if not features:
            raise DataError(
                f"no feature columns besides the label {label!r} and the id column; nothing to learn from"
            )
        warnings.warn(
            f"feature bounds for {len(features)} column(s) were taken from the data itself (min/max); "
            "this is not covered by the DP guarantee. Replace them with declared public bounds "
            "(domain knowledge) in a feature spec file before a real deployment.",
            DataDerivedBoundsWarning,
            stacklevel=2,
        )
        return cls(task, label, id_column, features)


# A text column with more distinct values than this is not taken as a categorical feature.
MAX_CATEGORIES = 50


def infer_from_partners(
    trains: list[pd.DataFrame], task: str, label: str, id_column: str | None
) -> tuple[FeatureSpec, list[str]]:
    """Spec for a user's own file, fitted on each partner's *training* rows only.

    Numeric columns get bounds fitted at every partner on its training rows and combined
    (lowest minimum, highest maximum), as partners would share them; held-out rows and
    the pooled file are never looked at. Text columns become categorical features over
    the categories the partners' training rows hold. Both are read off the data, which
    the DP guarantee does not cover: the returned notices say so.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    trains = [t for t in trains if len(t)]
    if not trains:
        raise DataError("cannot infer a feature spec: no partner has training rows")
    first = trains[0]
    for name, role in ((label, "label"), (id_column, "id")):
        if name is not None and name not in first.columns:
            raise DataError(
                f"{role} column {name!r} is missing from the data (columns present: {_list_columns(first)})"
            )
    features: list[Feature] = []
    numeric, categorical = [], []
    for col in first.columns:
        if col in (label, id_column):
            continue
        name = str(col)
        columns = [t[col] for t in trains]
        if all(_is_numeric(c) for c in columns):
            los, his = [], []
            for c in columns:
                values = _numeric_column(c, name, "feature")
                finite = values[np.isfinite(values)]
                if finite.size:
                    los.append(float(finite.min()))
                    his.append(float(finite.max()))
            if not los:
                raise DataError(
                    f"feature column {name!r} has no finite values in the training rows; drop it or fill it in"
                )
            lo, hi = min(los), max(his)
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            features.append(NumericFeature(name, lo, hi))
            numeric.append(name)
        else:
            keys = sorted({k for c in columns for k in c.map(category_key).dropna().tolist()})
            if len(keys) > MAX_CATEGORIES:
                raise DataError(
                    f"feature column {name!r} holds {len(keys)} distinct text values, too many for a categorical "
                    f"feature (at most {MAX_CATEGORIES}); declare it in a feature spec (--feature-spec), or leave it out: "
                    "remove the column from the file, or give a feature spec that does not list it"
                )
            if not keys:
                raise DataError(
                    f"feature column {name!r} has no values in the training rows; drop it or fill it in"
                )
            features.append(CategoricalFeature(name, tuple(keys)))
            categorical.append(f"{name} ({len(keys)} categories)")
    if not features:
        raise DataError(
            f"no feature columns besides the label {label!r} and the id column; nothing to learn from"
        )
    notices = []
    if numeric:
        notices.append(
            f"bounds of {len(numeric)} numeric feature(s) were fitted on each partner's training rows (held-out rows "
            "never used) and combined (lowest minimum, highest maximum); they are written to feature_spec.json and "
            "are NOT covered by the DP guarantee. Replace them with declared public bounds before a real deployment: "
            "--feature-spec FILE (see `fedcustomer features draft`)"
        )
    if categorical:
        notices.append(
            f"text column(s) taken as categorical features over the categories found in the partners' training rows: "
            f"{', '.join(categorical)}; listed in feature_spec.json, NOT covered by the DP guarantee. "
            "Declare the categories in a feature spec (--feature-spec FILE) before a real deployment"
        )
    return FeatureSpec(task, label, id_column, features), notices


def _type_problem(feature: Feature, field_type: str) -> str | None:
    """Why ``feature`` cannot be read from a field of ``field_type``, or None when it can."""
    if isinstance(feature, NumericFeature):
        if field_type in NUMBER_TYPES:
            return None
        return (
            f"feature {feature.name!r} is declared numeric but is a {field_type} field; declare it "
            "categorical or drop it"
        )
    if field_type not in NUMBER_TYPES:
        return None
    if field_type == "boolean":
        fits = all(c in ("True", "False", "0", "1") for c in feature.categories)
    else:
        fits = all(_is_number_key(c, whole=field_type == "integer") for c in feature.categories)
    if fits:
        return None
    return (
        f"categorical feature {feature.name!r} declares categories that are not {field_type} values, but it "
        f"is a {field_type} field, so no row could match them; declare it numeric or use its {field_type} codes"
    )


def _is_number_key(category: str, whole: bool) -> bool:
    """True when ``category`` is the text :func:`category_key` gives some number (a whole one if asked)."""
    try:
        value = float(category)
    except ValueError:
        return False
    return category_key(value) == category and (value.is_integer() or not whole)


def _is_numeric(series: pd.Series) -> bool:
    """True when every present value reads as a number (booleans count as 0/1; blank and NA-like
    cells, e.g. ``" "`` or ``"N/A"``, are missing, as ingest counts them)."""
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return True
    present = _present(series)
    converted = pd.to_numeric(series.where(present), errors="coerce")
    return not bool((converted.isna() & present).any())


def _present(series: pd.Series) -> pd.Series:
    """Cells holding a value: not NA, not blank, not an NA token (:data:`MISSING_TOKENS`, as ingest)."""
    if series.dtype != object and not pd.api.types.is_string_dtype(series.dtype):
        return series.notna()
    return ~is_missing(series)


def _list_columns(frame: pd.DataFrame) -> str:
    return listed_names([str(c) for c in frame.columns])


def _numeric_column(series: pd.Series, name: str, role: str, hint: str = "") -> np.ndarray:
    """Float64 values of a column; DataError naming the column and a row number, never the value."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iuf":  # numbers already: no parsing
        return series.to_numpy(dtype=np.float64, copy=True)
    present = _present(series)
    converted = pd.to_numeric(series.where(present), errors="coerce")
    values = pd.Series(converted).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(values) & present.to_numpy(dtype=bool))
    if bad.size:
        raise DataError(
            f"{role} column {name!r} holds {bad.size} non-numeric value(s), first at row {bad[0] + 1} "
            f"(1-based position in the data){hint}"
        )
    return values
