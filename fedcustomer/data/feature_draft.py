"""A training feature spec drafted from a dataset's schema: declared, never read off the data.

The coordinator must not learn bounds or categories from partner data (each would be a
release that DP-SGD does not account for), so everything in the drafted spec comes from
the schema the partner admin reviewed: ``validation: {min, max}`` (or a numeric
``allowed`` list) gives a numeric field its public bounds, ``allowed`` gives a category
its categories. What the schema does not declare is refused with what to add, or can be
given on the command line (``--bound FIELD=LO:HI``) or left out (``--drop FIELD``). A
heavy-tailed amount can be put on a signed log scale (``--log FIELD``): its declared bounds,
in the field's own units, are mapped onto that scale so the spec stays consistent.

A category list that ``schema draft`` read off one partner's file (``allowed_from: observed``) is
not declared: it is refused, naming the field, until the partner admin confirms it
(``fedcustomer schema confirm``), since sharing it would release that partner's values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedcustomer.data.features import TASKS, CategoricalFeature, Feature, FeatureSpec, NumericFeature
from fedcustomer.data.schema import NUMERIC_TYPES, FieldSpec, Schema, field_name_for
from fedcustomer.errors import ConfigError, SchemaError
from fedcustomer.partner.datasets import HOLDOUT


def parse_bound(text: str) -> tuple[str, tuple[float, float]]:
    """``FIELD=LO:HI`` -> (field, (lo, hi)); ConfigError saying the expected form."""
    name, sep, rest = text.partition("=")
    lo_text, colon, hi_text = rest.partition(":")
    try:
        if not (sep and colon and name.strip()):
            raise ValueError
        return name.strip(), (float(lo_text), float(hi_text))
    except ValueError:
        raise ConfigError(f"--bound {text!r}: expected FIELD=LO:HI, e.g. age=18:100") from None


def spec_from_schema(
    schema: Schema,
    *,
    task: str,
    label: str | None,
    bounds: dict[str, tuple[float, float]] | None = None,
    drop: Iterable[str] = (),
    log: Iterable[str] = (),
) -> tuple[FeatureSpec, list[str]]:
    """The feature spec for training on ``schema``'s dataset, and notes on what was left out and why."""
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    names = set(schema.names)

    def named(name: str) -> str:  # a file's column spelling (TotalCharges) names its field (totalcharges)
        return name if name in names or field_name_for(name) not in names else field_name_for(name)

    bounds = {named(n): b for n, b in (bounds or {}).items()}
    drop = {named(n) for n in drop}
    log = {named(n) for n in log}
    label = None if label is None else named(label)
    unknown = sorted((set(bounds) | drop | log) - names)
    if unknown:
        raise ConfigError(
            f"dataset {schema.dataset!r} has no field(s) {', '.join(unknown)} "
            f"(fields: {', '.join(schema.names)})"
        )
    if label is not None and label not in names:
        raise ConfigError(
            f"--label {label!r} is not a field of dataset {schema.dataset!r} "
            f"(fields: {', '.join(schema.names)})"
        )
    if label is not None:  # None: features only (a vertical party that does not hold the label)
        _check_label(schema.field(label))
    not_numeric = sorted(n for n in log if schema.field(n).type not in NUMERIC_TYPES)
    if not_numeric:
        raise ConfigError(f"--log applies to integer or float fields; {', '.join(not_numeric)} is not one")
    notes: list[str] = []
    features: list[Feature] = []
    unbounded: list[str] = []
    uncategorised: list[str] = []
    observed: list[str] = []
    for f in schema.fields:
        if f.name in (label, HOLDOUT) or f.role in ("id", "timestamp") or f.name in drop:
            continue
        if f.validation.observed_categories and not f.is_core and f.name not in bounds:
            observed.append(f.name)
            continue
        if f.is_core:
            notes.append(f"{f.name}: left out (core tier: the training pipeline never reads it)")
        elif f.type in ("date", "datetime"):
            notes.append(f"{f.name}: left out ({f.type} fields are not model inputs)")
        elif f.type == "boolean":
            features.append(NumericFeature(f.name, 0.0, 1.0))
        elif f.type in NUMERIC_TYPES:
            declared = bounds.get(f.name) or _declared_bounds(f)
            if declared is None:
                unbounded.append(f.name)
            else:
                lo, hi = declared
                if not lo < hi:
                    raise SchemaError(
                        f"field {f.name!r}: declared bounds need min < max, got {lo:g} and {hi:g}"
                    )
                if f.name in log:
                    features.append(NumericFeature(f.name, _signed_log(lo), _signed_log(hi), log=True))
                else:
                    features.append(NumericFeature(f.name, float(lo), float(hi)))
        elif f.validation.allowed:
            features.append(CategoricalFeature(f.name, tuple(f.validation.allowed)))
        else:
            uncategorised.append(f.name)
    problems = []
    if unbounded:
        problems.append(
            f"numeric field(s) without declared bounds: {', '.join(unbounded)}. Declare public bounds (domain "
            "knowledge, not the data's own min/max): add 'validation: {min: LO, max: HI}' to the schema before "
            "ingest, or pass --bound FIELD=LO:HI"
        )
    if uncategorised:
        problems.append(
            f"text field(s) without declared categories: {', '.join(uncategorised)}. Add "
            "'validation: {allowed: [...]}' to the schema before ingest"
        )
    if observed:
        problems.append(
            f"field(s) {', '.join(observed)}: the category list was observed in one partner's data by "
            "`schema draft` (validation 'allowed_from: observed'), not declared; a spec shares it with the "
            "federation with no epsilon, and a rare value can identify a person. Review each list (drop or "
            "merge rare or identifying values), then confirm it as the partner admin: `fedcustomer schema "
            f"confirm --schema FILE --field {observed[0]}` (or delete 'allowed_from: observed'), and draft the "
            "spec from that file (--schema FILE) or ingest the next file under it"
        )
    if problems:
        raise SchemaError("; ".join(problems) + "; or leave a field out with --drop FIELD")
    if not features:
        raise SchemaError(
            f"dataset {schema.dataset!r} has no field the training pipeline can use as a feature"
        )
    return FeatureSpec(task, label, None, features), notes


def _signed_log(value: float) -> float:
    """Where a declared bound lies on the spec's log scale (``sign(x) * log1p(|x|)``, as the encoder)."""
    return math.copysign(math.log1p(abs(value)), value)


def _check_label(f: FieldSpec) -> None:
    if f.role == "id" or f.is_core:
        raise SchemaError(f"label {f.name!r} is the id or a core-tier field; training never reads those")
    if f.type not in ("integer", "float", "boolean"):
        raise SchemaError(
            f"label {f.name!r} has type {f.type}; the label must be a number (0/1 for repayment, "
            "a spend for clv)"
        )


def _declared_bounds(f: FieldSpec) -> tuple[float, float] | None:
    v = f.validation
    if isinstance(v.min, (int, float)) and isinstance(v.max, (int, float)):
        return float(v.min), float(v.max)
    if v.allowed:
        try:
            values = [float(a) for a in v.allowed]
        except ValueError:
            return None
        return min(values), max(values)
    return None
