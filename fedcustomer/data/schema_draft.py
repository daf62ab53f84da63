"""Draft a schema from a sample of the partner's file: field names, types and tiers guessed, for a person to review.

Names that look like identifiers are core-tier, others sensitive unless clearly public; the draft is YAML
for the partner admin to correct before the first ingest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.data.ingest import file_kind, read_sample
from fedcustomer.data.schema import (
    OBSERVED,
    ROW_ID_FIELD,
    FieldSpec,
    Schema,
    Validation,
    field_name_for,
    field_names,
    listed_names,
)
from fedcustomer.data.source_lines import row_locations
from fedcustomer.data.validators import luhn_valid, prc_id_valid
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.privacy.access.masking import default_rule_for

_CORE_HINTS = (
    "id",
    "name",
    "phone",
    "mobile",
    "national",
    "passport",
    "card",
    "email",
    "ssn",
    "address",
    "iban",
)


_SENSITIVE_HINTS = (
    "amount",
    "amt",
    "balance",
    "bal",
    "spend",
    "income",
    "salary",
    "limit",
    "monetary",
    "debt",
    "payment",
    "pay",
    "bill",
    "loan",
    "credit",
    "utilis",
    "utiliz",
    "value",
    "revenue",
    "default",
    "late",
)


_PUBLIC_HINTS = ("region", "industry", "segment", "city", "province", "country", "sector", "channel")


# Special categories of personal data (GDPR art. 9): never drafted public, and core by default.
_SPECIAL_CATEGORY_HINTS = (
    "ethnic",
    "race",
    "racial",
    "religion",
    "religious",
    "health",
    "disability",
    "sexual",
    "orientation",
    "political",
    "union",
    "biometric",
    "genetic",
)


_TIME_HINTS = ("updated", "timestamp", "modified", "as_of", "asof", "created")


_ID_NAMES = ("customer_id", "client_id", "cust_id", "id", "user_id", "member_id")
_ID_COMPACT = frozenset(n.replace("_", "") for n in _ID_NAMES)


def is_customer_id_name(name: str) -> bool:
    """A column named like a customer id: ``customer_id``, ``customerID``, ``CustID``, ``id``, ...

    Compared as a valid field name without underscores, so the CamelCase spellings exported by
    many systems (``customerID`` in the Telco churn file) count as well.
    """
    return field_name_for(name).replace("_", "") in _ID_COMPACT


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


def _has_hint(name: str, hints: Iterable[str]) -> bool:
    tokens = _tokens(name)
    lowered = name.lower()
    return any(hint in tokens or len(hint) > 3 and hint in lowered for hint in hints)


def _is_count_of(name: str, hints: Iterable[str]) -> bool:
    """``cards``, ``num_phones``: a count of things a hint names, not the identifier itself."""
    tokens = _tokens(name)
    return any(f"{hint}s" in tokens for hint in hints) and not any(hint in tokens for hint in hints)


def guess_tier(name: str) -> str:
    """Name heuristics: identifiers and special categories -> core, money -> sensitive, geography/segment -> public.

    Public needs a whole word (``home_city``, not ``ethnicity``): a wrong "public" shows a field
    to every role, so every doubt falls to a stricter tier.
    """
    if _has_hint(name, _SPECIAL_CATEGORY_HINTS):
        return "core"
    if _has_hint(name, _CORE_HINTS) and not _is_count_of(name, _CORE_HINTS):
        return "core"
    if any(hint in _tokens(name) for hint in _PUBLIC_HINTS):
        return "public"
    return "sensitive"


def draft_schema(
    path: str | Path,
    *,
    dataset: str | None = None,
    sample_rows: int = 10_000,
    id_from_row: bool = False,
    id_column: str | None = None,
    notes: list[str] | None = None,
) -> Schema:
    """Guess a schema from the first rows of a CSV or Parquet file, for the user to review and edit.

    Tiers are guessed from column names, types from the values. The result is a
    starting point: an admin must check every tier before ingesting real data.
    A column whose name is not a valid field name gets one by :func:`field_name_for`.
    Without an id column (``customer_id``, ``id``, ... or a name ending in ``_id``) the
    draft is refused unless ``id_from_row``: then it adds a ``row_id`` field that
    ``ingest --id-from-row`` fills with a keyed digest of each row (each row one customer).
    ``notes``, when given, receives advice on guesses a person should check (a column of numbers
    typed as text because a few values are not numbers), naming lines, never values.
    """

    path = Path(path)
    frame = read_sample(path, sample_rows)
    if frame.empty and not len(frame.columns):
        raise DataError(f"{path}: no columns found; is it a CSV with a header row or a Parquet file?")
    name = dataset or re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "dataset"
    if not name[0].isalpha():
        name = "d_" + name
    columns = [str(c) for c in frame.columns]
    names = field_names(columns, str(path))
    if id_column is not None:
        id_col = next((c for c in columns if id_column in (c, names[c])), None)
        if id_col is None:
            raise DataError(
                f"{path}: no column {id_column!r} to take as the customer id (columns: {listed_names(columns)})"
            )
    else:
        id_col = next((c for c in columns if names[c] in _ID_NAMES), None)
        id_col = id_col or next((c for c in columns if is_customer_id_name(c)), None)
        id_col = id_col or next((c for c in columns if names[c].endswith("_id")), None)
    fields: list[FieldSpec] = []
    if id_from_row:
        if id_col is not None:
            raise DataError(
                f"{path}: column {id_col!r} looks like the customer id; drop --id-from-row to use it "
                "(or rename it if it is not an id)"
            )
        if ROW_ID_FIELD in names.values():
            raise DataError(
                f"{path}: the file already has a column named {ROW_ID_FIELD!r}; drop --id-from-row "
                "and use it as the id, or rename it"
            )
        fields.append(
            FieldSpec(
                name=ROW_ID_FIELD,
                type="string",
                tier="core",
                role="id",
                description="generated by ingest --id-from-row: a keyed digest of the row's values",
            )
        )
    elif id_col is None:
        raise DataError(
            f"{path}: no customer id column (looked for {', '.join(_ID_NAMES)}, the same without '_' in any "
            "case, or a name ending in '_id'); the store keys customers by id. Name the column with --id-column, "
            "or pass --id-from-row to give each row an id of its own (each row is then one distinct customer)"
        )
    has_stamp = False
    for col in columns:
        series = frame[col]
        ftype = _guess_type(series)
        field_name = names[col]
        if col == id_col:
            role, tier = "id", "core"
            ftype = "string"
        elif ftype in ("date", "datetime") and not has_stamp and _has_hint(field_name, _TIME_HINTS):
            role, tier = "timestamp", "public"
            has_stamp = True
        else:
            tier = guess_tier(field_name)
            role = "feature"
        if tier == "core" and ftype == "category":
            ftype = "string"  # never list core values as 'allowed' in a schema file
        validation = Validation()
        values = series.dropna().astype(str).str.strip()
        values = values[values != ""]
        if tier == "core" and ftype == "string" and len(values):
            if values.map(prc_id_valid).all():
                validation = Validation(checksum="prc_id")
            elif values.str.len().ge(12).all() and values.map(luhn_valid).all():
                validation = Validation(checksum="luhn")
        elif ftype == "category":
            # observed in this one file, not declared: marked so, until a person confirms the list
            validation = Validation(allowed=tuple(sorted(values.unique().tolist())), allowed_from=OBSERVED)
            if notes is not None:
                notes.append(observed_note(field_name, values))
        nullable = bool(series.isna().any() or (series.astype(str).str.strip() == "").any()) and role != "id"
        masking = None
        if tier == "sensitive":
            masking = (
                numeric_mask(values, integer=ftype == "integer")
                if ftype in ("integer", "float")
                else default_rule_for(ftype)  # dates to their year, the rest redacted
            )
        elif tier == "core" and role != "id":
            masking = "redact"
        description = f"file column {col!r}" if field_name != col else None
        if notes is not None and tier != "core" and role == "feature" and ftype in ("string", "category"):
            note = _mostly_numbers(path, field_name, values)
            if note:
                notes.append(note)
        fields.append(
            FieldSpec(
                name=field_name,
                type=ftype,
                tier=tier,
                role=role,
                nullable=nullable,
                validation=validation,
                masking=masking,
                description=description,
            )
        )
    return Schema(
        dataset=name, fields=tuple(fields), description=f"Drafted from {path.name}; review every tier"
    )


# A category seen fewer times than this in the sampled rows is rare: it may single out people.
RARE_COUNT = 10


def numeric_mask(values: Any, *, integer: bool = False) -> str:
    """A draft mask for a sensitive number: about ten buckets over its observed range, of a width
    1, 2 or 5 times a power of ten (age 19-83: ``bucket:10``), so a masked reader sees its
    magnitude, not its value. A field of at most two values (a flag), or whole numbers too close
    together for buckets of 2 or more to hide anything, is redacted.

    A fixed rule did not fit: ``round:-2`` made every age 0 or 100 and every flag 0 (found by a
    new-user trial). The width says how widely the drafting file's values spread, to within a
    factor of about two; the admin reviews it like every drafted rule.
    """
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    numbers = numbers[np.isfinite(numbers.astype("float64"))]
    if numbers.nunique() <= 2:
        return "redact"
    target = float(numbers.max() - numbers.min()) / BUCKETS
    power = 10.0 ** math.floor(math.log10(target))
    width = next(m * power for m in (1, 2, 5, 10) if m * power >= target * (1 - 1e-9))
    if integer and width < 2:
        return "redact"
    text = f"{width:.12g}"
    return f"bucket:{text}"


BUCKETS = 10  # about this many buckets over a drafted number's observed range


def observed_note(field_name: str, values: Any) -> str:
    """Advice on a category list read off the data: how many categories are rare (never which)."""
    counts = values.value_counts()
    rare = int((counts < RARE_COUNT).sum())
    text = (
        f"{field_name}: its {len(counts)} categories were observed in this file (allowed_from: observed), "
        "not declared; `features draft` refuses them until you confirm the list "
        f"(`fedcustomer schema confirm --schema FILE --field {field_name}`)"
    )
    if rare:
        text += (
            f"; {rare} of them appear fewer than {RARE_COUNT} times in the sampled rows: rare values can "
            "identify people, so merge or drop them before confirming"
        )
    return text


def confirm_categories(schema: Schema, names: Iterable[str]) -> Schema:
    """``schema`` with the observed category lists of ``names`` confirmed (declared from now on).

    Refuses a field the schema lacks and one whose list is not an observed one, naming it."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        raise ConfigError("name the field(s) whose categories you confirm: --field NAME (repeatable)")
    unknown = [n for n in wanted if n not in schema.names]
    if unknown:
        raise ConfigError(
            f"dataset {schema.dataset!r} has no field(s) {', '.join(unknown)} (fields: {', '.join(schema.names)})"
        )
    not_observed = [n for n in wanted if not schema.field(n).validation.observed_categories]
    if not_observed:
        raise ConfigError(
            f"field(s) {', '.join(not_observed)} have no observed category list to confirm "
            "(no 'allowed_from: observed' in their validation)"
        )
    fields = tuple(
        replace(f, validation=replace(f.validation, allowed_from=None)) if f.name in wanted else f
        for f in schema.fields
    )
    return replace(schema, fields=fields)


def _mostly_numbers(path: Path, field_name: str, values: Any) -> str | None:
    """Advice for a text column whose values are mostly numbers: where the others are, not what."""
    import pandas as pd

    if values.empty:
        return None
    bad = values[pd.to_numeric(values, errors="coerce").isna()]
    if bad.empty or len(bad) * 2 > len(values):
        return None
    first = row_locations(path, file_kind(path), [int(bad.index[0])])[int(bad.index[0])]
    return (
        f"{field_name}: typed string because {len(bad)} of {len(values)} values "
        f"{'is not a number' if len(bad) == 1 else 'are not numbers'} (first on {first}); if it is a number, fix those values or set `type: float` (ingest then quarantines them)"
    )


def _guess_type(series: Any) -> str:
    import pandas as pd

    values = series.dropna().astype(str).str.strip()
    values = values[values != ""]
    if values.empty:
        return "string"
    lowered = values.str.lower()
    if lowered.isin(["true", "false"]).all():
        return "boolean"
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        if (numeric == numeric.round()).all() and not values.str.contains(r"[.eE]").any():
            # Long digit strings are identifiers or codes, not quantities.
            long_digits = values.str.lstrip("+-").str.len().max() >= 12
            leading_zero = (values.str.startswith("0") & (values.str.len() > 1)).any()
            if long_digits or leading_zero:
                return "string"
            return "integer"
        return "float"
    if values.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all():
        if pd.to_datetime(values, format="%Y-%m-%d", errors="coerce").notna().all():
            return "date"
    if values.str.match(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}").all():
        if pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True).notna().all():
            return "datetime"
    distinct = values.nunique()
    if distinct <= 20 and distinct * 2 <= len(values):
        return "category"
    return "string"
