"""The declarative query spec: what to release, over which declared groups, at what cost.

A spec is a small mapping (YAML or JSON)::

    id: spend-by-region            # optional; the ledger's query id (generated if absent)
    dataset: retailer              # the store dataset (= the ledger's dataset)
    kind: mean                     # count | sum | mean | histogram | quantiles | funnel | quality
    field: monetary_12m            # value field (not for count of rows or quality)
    bounds: [0, 2000]              # declared clamp for sum / mean
    bins: [0, 100, 200, 500]       # declared edges for histogram / quantiles
    quantiles: [0.5, 0.9]
    steps: [visit, cart, checkout] # funnel: declared ordered steps held in `field`
    fields: [age, avg_basket]      # quality: fields whose completeness is reported
    group_by: [region, age_band]
    groups: {region: [north, south, east, west, central]}
    bands: {age: [18, 30, 45, 60, 120]}   # derives group field age_band
    rfm: synthetic                 # preset or mapping; derives group field `segment`
    where: {loyalty_member: [1]}   # filters on public fields
    epsilon: 1.0
    delta: 0                       # 0 for laplace; > 0 for gaussian
    mechanism: laplace             # laplace | gaussian
    confidence: 0.95

Group domains are declared, never read from the data, so the set of released cells
leaks nothing: a cell is released (noisy) even when nobody falls in it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import yaml

from fedcustomer.analytics.mechanisms import LAPLACE, MECHANISMS
from fedcustomer.analytics.rfm import SEGMENT_FIELD, SEGMENTS, RFMConfig
from fedcustomer.errors import ConfigError
from fedcustomer.partner.ledger_keys import query_key

KINDS = ("count", "sum", "mean", "histogram", "quantiles", "funnel", "quality")
BAND_SUFFIX = "_band"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_KEYS = {
    "id",
    "dataset",
    "kind",
    "field",
    "bounds",
    "bins",
    "quantiles",
    "steps",
    "fields",
    "group_by",
    "groups",
    "bands",
    "rfm",
    "where",
    "epsilon",
    "delta",
    "mechanism",
    "confidence",
    "requested_by",
}


def new_query_id() -> str:
    return "q-" + secrets.token_hex(8)


@dataclass(frozen=True)
class QuerySpec:
    """One analytics query; see the module docstring for the fields."""

    dataset: str
    kind: str
    field: str | None = None
    bounds: tuple[float, float] | None = None
    bins: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    steps: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = dc_field(default_factory=dict)
    bands: Mapping[str, tuple[float, ...]] = dc_field(default_factory=dict)
    rfm: RFMConfig | None = None
    where: Mapping[str, tuple[Any, ...]] = dc_field(default_factory=dict)
    epsilon: float = 1.0
    delta: float = 0.0
    mechanism: str = LAPLACE
    confidence: float = 0.95
    query_id: str = dc_field(default_factory=new_query_id)
    requested_by: str = "analyst"

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived facts --------------------------------------------------------
    @property
    def charge_key(self) -> str:
        return query_key(self.query_id)

    def domain(self, group: str) -> tuple[str, ...]:
        """The declared values of one group field."""
        if group in self.groups:
            return tuple(self.groups[group])
        if group == SEGMENT_FIELD and self.rfm is not None:
            return SEGMENTS
        if group.endswith(BAND_SUFFIX) and group[: -len(BAND_SUFFIX)] in self.bands:
            return band_labels(self.bands[group[: -len(BAND_SUFFIX)]])
        raise ConfigError(
            f"query {self.query_id}: group field {group!r} has no declared values; list them under groups: "
            f"{{{group}: [...]}} (group keys must be public and declared, never read from the data)"
        )

    def cells(self) -> list[tuple[str, ...]]:
        """Every released cell: the product of the declared group domains (one cell if ungrouped)."""
        return list(itertools.product(*(self.domain(g) for g in self.group_by)))

    def bin_labels(self) -> list[str]:
        if self.kind == "funnel":
            return list(self.steps)
        return [
            f"[{_num(a)}, {_num(b)}{']' if i == len(self.bins) - 2 else ')'}"
            for i, (a, b) in enumerate(zip(self.bins, self.bins[1:]))
        ]

    def source_fields(self) -> list[str]:
        """The stored fields the partner must read to answer."""
        names: list[str] = []
        if self.field:
            names.append(self.field)
        names += list(self.fields)
        for g in self.group_by:
            if g == SEGMENT_FIELD and self.rfm is not None and g not in self.groups:
                names += self.rfm.fields
            elif g.endswith(BAND_SUFFIX) and g[: -len(BAND_SUFFIX)] in self.bands and g not in self.groups:
                names.append(g[: -len(BAND_SUFFIX)])
            else:
                names.append(g)
        names += list(self.where)
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.query_id, "dataset": self.dataset, "kind": self.kind}
        if self.field:
            d["field"] = self.field
        if self.bounds is not None:
            d["bounds"] = list(self.bounds)
        for key in ("bins", "quantiles", "steps", "fields", "group_by"):
            if getattr(self, key):
                d[key] = list(getattr(self, key))
        if self.groups:
            d["groups"] = {k: list(v) for k, v in self.groups.items()}
        if self.bands:
            d["bands"] = {k: list(v) for k, v in self.bands.items()}
        if self.rfm is not None:
            d["rfm"] = self.rfm.to_dict()
        if self.where:
            d["where"] = {k: list(v) for k, v in self.where.items()}
        d.update(
            epsilon=self.epsilon,
            delta=self.delta,
            mechanism=self.mechanism,
            confidence=self.confidence,
            requested_by=self.requested_by,
        )
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_id(self, query_id: str) -> QuerySpec:
        return replace(self, query_id=query_id)


def band_labels(edges: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(f"{_num(a)}-{_num(b)}" for a, b in zip(edges, edges[1:]))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _validate(s: QuerySpec) -> None:
    where = f"query {s.query_id!r}"
    if not isinstance(s.query_id, str) or not _ID_RE.match(s.query_id):
        raise ConfigError(f"query id {s.query_id!r} must be 1-128 letters, digits, '_', '.', ':' or '-'")
    if s.kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {s.kind!r}")
    if not s.dataset or not isinstance(s.dataset, str):
        raise ConfigError(f"{where}: 'dataset' (the store dataset to query) is required")
    if s.mechanism not in MECHANISMS:
        raise ConfigError(f"{where}: mechanism must be one of {', '.join(MECHANISMS)}, got {s.mechanism!r}")
    if not (isinstance(s.epsilon, (int, float)) and math.isfinite(s.epsilon) and s.epsilon > 0):
        raise ConfigError(f"{where}: epsilon must be a positive number, got {s.epsilon!r}")
    if s.mechanism == LAPLACE and s.delta != 0:
        raise ConfigError(
            f"{where}: the laplace mechanism takes delta: 0 (got {s.delta}); use gaussian for delta > 0"
        )
    if s.mechanism != LAPLACE and not (0 < s.delta < 1):
        raise ConfigError(f"{where}: the gaussian mechanism needs 0 < delta < 1, got {s.delta}")
    if not (0.5 <= s.confidence < 1):
        raise ConfigError(f"{where}: confidence must be in [0.5, 1), got {s.confidence}")
    needs_field = s.kind in ("sum", "mean", "histogram", "quantiles", "funnel")
    if needs_field and not s.field:
        raise ConfigError(f"{where}: kind {s.kind!r} needs 'field'")
    if s.kind in ("sum", "mean") and (
        s.bounds is None
        or len(s.bounds) != 2
        or not all(math.isfinite(b) for b in s.bounds)
        or not s.bounds[0] < s.bounds[1]
    ):
        raise ConfigError(
            f"{where}: kind {s.kind!r} needs declared 'bounds: [lower, upper]' with lower < upper "
            f"(values are clamped to them), got {s.bounds!r}"
        )
    if s.kind in ("histogram", "quantiles") and (
        len(s.bins) < 2
        or any(b <= a for a, b in zip(s.bins, s.bins[1:]))
        or not all(map(math.isfinite, s.bins))
    ):
        raise ConfigError(
            f"{where}: kind {s.kind!r} needs declared 'bins': at least 2 increasing finite edges"
        )
    if s.kind == "quantiles" and (not s.quantiles or not all(0 < q < 1 for q in s.quantiles)):
        raise ConfigError(f"{where}: kind 'quantiles' needs 'quantiles' strictly between 0 and 1")
    if s.kind == "funnel" and (len(s.steps) < 2 or len(set(s.steps)) != len(s.steps)):
        raise ConfigError(f"{where}: kind 'funnel' needs at least 2 distinct 'steps' in order")
    if s.kind == "quality" and not s.fields:
        raise ConfigError(f"{where}: kind 'quality' needs 'fields' whose completeness to report")
    if len(set(s.group_by)) != len(s.group_by):
        raise ConfigError(f"{where}: group_by repeats a field")
    for src, edges in s.bands.items():
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"{where}: bands.{src} must be at least 2 increasing edges")
    for g in s.group_by:
        dom = s.domain(g)  # raises when undeclared
        if not dom or len(set(dom)) != len(dom):
            raise ConfigError(f"{where}: groups.{g} must list distinct values")
    if len(s.cells()) * max(1, len(s.bins) - 1, len(s.steps)) > 100_000:
        raise ConfigError(f"{where}: more than 100,000 released cells; declare fewer groups or bins")


def spec_from_dict(raw: Mapping[str, Any], source: str = "query spec") -> QuerySpec:
    """Build a spec from a parsed mapping; ConfigError naming the source and key when wrong."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of query settings")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_KEYS))}"
        )
    try:
        kw: dict[str, Any] = {"dataset": str(raw.get("dataset") or ""), "kind": str(raw.get("kind") or "")}
        if raw.get("id") is not None:
            kw["query_id"] = str(raw["id"])
        if raw.get("field") is not None:
            kw["field"] = str(raw["field"])
        if raw.get("bounds") is not None:
            kw["bounds"] = tuple(float(v) for v in _seq(raw["bounds"], "bounds"))
        for key in ("bins", "quantiles"):
            if raw.get(key) is not None:
                kw[key] = tuple(float(v) for v in _seq(raw[key], key))
        for key in ("steps", "fields", "group_by"):
            if raw.get(key) is not None:
                kw[key] = tuple(str(v) for v in _seq(raw[key], key))
        if raw.get("groups") is not None:
            kw["groups"] = {
                str(k): tuple(str(v) for v in _seq(vs, f"groups.{k}"))
                for k, vs in _map(raw["groups"], "groups").items()
            }
        if raw.get("bands") is not None:
            kw["bands"] = {
                str(k): tuple(float(v) for v in _seq(vs, f"bands.{k}"))
                for k, vs in _map(raw["bands"], "bands").items()
            }
        if raw.get("where") is not None:
            kw["where"] = {
                str(k): tuple(vs if isinstance(vs, (list, tuple)) else [vs])
                for k, vs in _map(raw["where"], "where").items()
            }
        if raw.get("rfm") is not None:
            kw["rfm"] = RFMConfig.from_dict(raw["rfm"], f"{source}: rfm")
        for key in ("epsilon", "delta", "confidence"):
            if raw.get(key) is not None:
                kw[key] = float(raw[key])
        if raw.get("mechanism") is not None:
            kw["mechanism"] = str(raw["mechanism"])
        if raw.get("requested_by") is not None:
            kw["requested_by"] = str(raw["requested_by"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return QuerySpec(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_spec(path: str | Path) -> QuerySpec:
    """Read a spec file (.json, .yaml or .yml)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"query spec {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    if isinstance(raw, dict) and "requested_by" in raw:
        raise ConfigError(
            f"{path}: 'requested_by' is not a query file key: who asks is the person whose identity key signs "
            "the query (query --identity FILE), checked by every partner; remove the line"
        )
    return spec_from_dict(raw, str(path))


def spec_from_json(text: str) -> QuerySpec:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"query spec is not valid JSON: {exc}") from None
    return spec_from_dict(raw, "query spec")


def _seq(value: Any, key: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{key}' must be a list")
    return list(value)


def _map(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"'{key}' must be a mapping")
    return value
