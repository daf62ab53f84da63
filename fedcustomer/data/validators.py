"""Field checks for ingest: checksums, types, ranges, patterns.

Two layers:

- pure scalar checks (``prc_id_valid``, ``luhn_valid``, ``prc_id_check_char``) that
  property tests can hammer;
- ``validate_frame(schema, raw)``: vectorised validation of a chunk of raw text
  values, returning the parsed, typed values plus, for every bad row, a reason per
  bad field.

Reasons never quote the offending value: a bad national ID must not end up in a
quarantine reason, log line or report. They name the rule instead.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.data.schema import FieldSpec, Schema

# ISO 7064 MOD 11-2 as used by the 18-digit PRC resident identity number (GB 11643).
_PRC_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_PRC_CHECK = "10X98765432"
_PRC_RE = re.compile(r"^[0-9]{17}[0-9X]$")

MISSING_TOKENS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})

# Largest magnitude an integer field holds exactly (values are parsed as float64). Larger whole
# numbers (account numbers, big ids) belong in a string field.
MAX_EXACT_INTEGER = 2**53 - 1
INTEGER_REASON = f"not an integer within +/-{MAX_EXACT_INTEGER} (use type string for larger whole numbers)"
# Text such as "good" in an integer field is a different mistake from a 20-digit account number: saying
# so points the user at the file (or the field's type), not at the integer range.
NOT_A_NUMBER_REASON = "not a number"
FRACTION_REASON = "not a whole number (use type float for fractions)"


def prc_id_check_char(first17: str) -> str:
    """The MOD 11-2 check character for the first 17 digits of a PRC resident ID."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 ASCII digits")
    total = sum(int(d) * w for d, w in zip(first17, _PRC_WEIGHTS))
    return _PRC_CHECK[total % 11]


def prc_id_valid(value: Any) -> bool:
    """True for an 18-character PRC resident ID whose check character is right ('x' accepted as 'X')."""
    if not isinstance(value, str):
        return False
    s = value.strip().upper()
    if not _PRC_RE.match(s):
        return False
    return prc_id_check_char(s[:17]) == s[17]


def luhn_valid(value: Any, *, min_length: int = 12, max_length: int = 19) -> bool:
    """True for a card number passing the Luhn check (spaces and hyphens between digits allowed)."""
    if not isinstance(value, str):
        return False
    digits = value.strip().replace(" ", "").replace("-", "")
    if not (min_length <= len(digits) <= max_length) or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


CHECKSUM_FUNCS = {"prc_id": prc_id_valid, "luhn": luhn_valid}


@dataclass
class ValidationResult:
    """Outcome of validating one chunk.

    ``values`` holds the parsed value of every field (NaN/None/NaT where missing or
    invalid), aligned with the input rows; ``reasons`` maps the position of each
    invalid row to ``{field: reason}``.
    """

    values: pd.DataFrame
    reasons: dict[int, dict[str, str]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)  # empty cells per field (valid or not)

    @property
    def valid_mask(self) -> np.ndarray:
        mask = np.ones(len(self.values), dtype=bool)
        if self.reasons:
            mask[list(self.reasons)] = False
        return mask

    @property
    def invalid_count(self) -> int:
        return len(self.reasons)


def is_missing(raw: pd.Series) -> pd.Series:
    """Empty or NA-like cells of a raw text column."""
    stripped = raw.astype("string").str.strip()
    return stripped.isna() | stripped.isin(list(MISSING_TOKENS))


def validate_frame(schema: Schema, raw: pd.DataFrame) -> ValidationResult:
    """Parse and check every schema field of a chunk of raw (text) values."""
    raw = raw.reset_index(drop=True)
    values: dict[str, Any] = {}
    reasons: dict[int, dict[str, str]] = {}
    missing_counts: dict[str, int] = {}
    for spec in schema.fields:
        column = raw[spec.name] if spec.name in raw.columns else pd.Series([None] * len(raw), dtype="string")
        parsed, bad, missing = _check_column(spec, column)
        missing_counts[spec.name] = int(missing.sum())
        values[spec.name] = parsed
        for pos, reason in bad.items():
            reasons.setdefault(pos, {})[spec.name] = reason
    frame = pd.DataFrame(values, index=raw.index)
    return ValidationResult(values=frame, reasons=dict(sorted(reasons.items())), missing=missing_counts)


def validate_row(schema: Schema, row: Mapping[str, Any]) -> dict[str, str]:
    """Reasons per bad field for one record ({} when the record is valid)."""
    frame = pd.DataFrame([{name: row.get(name) for name in schema.names}], dtype="string")
    return validate_frame(schema, frame).reasons.get(0, {})


def validate_column(spec: FieldSpec, raw: pd.Series) -> tuple[pd.Series, dict[int, str]]:
    """Parse one raw column; returns parsed values and {row position: reason} for bad cells."""
    parsed, bad, _ = _check_column(spec, raw)
    return parsed, bad


def _check_column(spec: FieldSpec, raw: pd.Series) -> tuple[pd.Series, dict[int, str], np.ndarray]:
    """:func:`validate_column` and the column's missing cells (what :func:`is_missing` says), found once."""
    raw = raw.reset_index(drop=True)
    text = raw.astype("string").str.strip()
    missing = (text.isna() | text.isin(list(MISSING_TOKENS))).to_numpy(dtype=bool)
    text = text.mask(pd.Series(missing), None)
    reasons = np.full(len(raw), None, dtype=object)
    if not spec.nullable:
        reasons[missing] = "missing required value"

    parsed, type_bad, type_reason = _parse(spec, text, missing)
    unset = type_bad & (reasons == None)
    reasons[unset] = type_reason[unset] if isinstance(type_reason, np.ndarray) else type_reason
    ok = ~missing & ~type_bad
    rules = spec.validation

    def flag(mask: np.ndarray, reason: str) -> None:
        target = mask & ok & (reasons == None)
        reasons[target] = reason

    if rules.max_length is not None:
        flag(
            text.str.len().fillna(0).to_numpy() > rules.max_length,
            f"longer than {rules.max_length} characters",
        )
    if rules.regex is not None:
        matched = text.str.fullmatch(rules.regex).fillna(False).to_numpy(dtype=bool)
        flag(~matched, "does not match the required pattern")
    if rules.checksum is not None:
        check = CHECKSUM_FUNCS[rules.checksum]
        good = np.array([bool(v) and check(v) for v in text.fillna("").tolist()], dtype=bool)
        flag(~good, f"fails the {rules.checksum} checksum")
    if rules.allowed is not None:
        allowed = set(rules.allowed)
        if spec.type == "boolean":
            canon = pd.Series(parsed).map(lambda b: "true" if b is True else "false" if b is False else None)
        elif spec.type in ("integer", "float"):
            canon = pd.Series(parsed).map(lambda v: _number_str(v))
            allowed = {_number_str(_to_float(a)) for a in allowed}
        else:  # text and categories: matched ignoring case and width, kept as the schema spells them
            canon = allowed_spelling(text, rules.allowed)
            parsed = canon.astype(object).where(~pd.Series(missing), None)
        flag(~canon.isin(list(allowed)).to_numpy(dtype=bool), "not one of the allowed values")
    if rules.min is not None or rules.max is not None:
        if spec.type in ("integer", "float"):
            num = pd.Series(parsed, dtype="float64").to_numpy()
            if rules.min is not None:
                flag(num < float(rules.min), f"below minimum {rules.min}")
            if rules.max is not None:
                flag(num > float(rules.max), f"above maximum {rules.max}")
        else:
            stamps = pd.Series(parsed)
            if spec.type == "date":
                stamps = pd.to_datetime(stamps).dt.tz_localize("UTC")
            if rules.min is not None:
                flag((stamps < _stamp(rules.min)).fillna(False).to_numpy(dtype=bool), f"before {rules.min}")
            if rules.max is not None:
                flag((stamps > _stamp(rules.max)).fillna(False).to_numpy(dtype=bool), f"after {rules.max}")
    bad = {int(i): str(reasons[i]) for i in np.flatnonzero(reasons != None)}
    return parsed, bad, missing


def allowed_spelling(text: pd.Series, allowed: Sequence[str]) -> pd.Series:
    """Each value as ``allowed`` spells it, when it equals one allowed value ignoring case and width.

    Why: "north", "NORTH" and a full-width "Ｎｏｒｔｈ" all mean the schema's "North", and a
    category stored in one spelling is what the feature spec's one-hot columns expect. An
    exact match wins; a value that matches two allowed values only ignoring case (a schema
    that allows both "a" and "A") is left as it is, so it must match exactly.
    """
    by_key: dict[str, str | None] = {}
    for value in allowed:
        key = _fold(value)
        by_key[key] = value if by_key.get(key, value) == value else None
    exact = set(allowed)
    respelled = {v: by_key.get(_fold(v)) or v for v in text.dropna().unique().tolist() if v not in exact}
    return text.replace(respelled) if respelled else text


def _fold(value: str) -> str:
    return unicodedata.normalize("NFKC", value).casefold()


def _stamp(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(str(value))
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _number_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(f)


def _parse(
    spec: FieldSpec, text: pd.Series, missing: np.ndarray
) -> tuple[pd.Series, np.ndarray, str | np.ndarray]:
    """Typed values, the mask of present-but-unparseable cells and the reason (one, or one per cell)."""
    n = len(text)
    t = spec.type
    if t in ("string", "category"):
        return text.astype(object).where(~pd.Series(missing), None), np.zeros(n, dtype=bool), ""
    if t in ("integer", "float"):
        num = pd.to_numeric(text, errors="coerce").astype("float64")
        arr = num.to_numpy()
        bad = ~missing & ~np.isfinite(arr)
        if t == "integer":
            with np.errstate(invalid="ignore"):
                frac = np.isfinite(arr) & (np.floor(arr) != arr)
                # Parsed through float64: beyond 2^53 a value would be stored rounded (and beyond
                # 2^63 not at all), so such a row is invalid rather than silently changed.
                huge = np.isfinite(arr) & (np.abs(arr) > MAX_EXACT_INTEGER)
            bad |= ~missing & (frac | huge)
            if not bad.any():  # the usual case: no per-cell reasons to build
                return num, bad, INTEGER_REASON
            why = np.full(n, INTEGER_REASON, dtype=object)
            why[~np.isfinite(arr)] = NOT_A_NUMBER_REASON
            why[frac] = FRACTION_REASON
            return num.where(~pd.Series(bad), np.nan), bad, why
        return num.where(~pd.Series(bad), np.nan), bad, NOT_A_NUMBER_REASON
    if t == "boolean":
        lowered = text.str.lower()
        is_true = lowered.isin(list(_TRUE)).to_numpy(dtype=bool)
        is_false = lowered.isin(list(_FALSE)).to_numpy(dtype=bool)
        bad = ~missing & ~is_true & ~is_false
        out = pd.Series(np.where(is_true, True, np.where(is_false, False, None)), dtype=object)
        return out, bad, "not a boolean (true/false, 1/0, yes/no)"
    if t == "date":
        dates = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
        bad = ~missing & dates.isna().to_numpy(dtype=bool)
        return dates, bad, "not a date (YYYY-MM-DD)"
    if t == "datetime":
        stamps = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        bad = ~missing & stamps.isna().to_numpy(dtype=bool)
        return stamps, bad, "not an ISO 8601 date-time"
    raise AssertionError(f"unhandled type {t}")  # schema checks types on load


def canonical_text(spec: FieldSpec, values: pd.Series) -> list[str | None]:
    """Canonical text of parsed values: what core fields encrypt and what row digests hash."""
    t = spec.type
    if t in ("string", "category"):
        return [None if v is None or v is pd.NA else str(v) for v in values.tolist()]
    if t == "integer":
        return [None if v != v else str(int(v)) for v in values.tolist()]
    if t == "float":
        return [None if v != v else repr(float(v)) for v in values.tolist()]
    if t == "boolean":
        return [None if v is None else ("true" if v else "false") for v in values.tolist()]
    if t == "date":
        out = values.dt.strftime("%Y-%m-%d")
        return [None if isinstance(v, float) or v is None or v is pd.NA else v for v in out.tolist()]
    if t == "datetime":
        out = values.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return [None if isinstance(v, float) or v is None or v is pd.NA else v for v in out.tolist()]
    raise AssertionError(f"unhandled type {t}")
