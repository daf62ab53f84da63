"""Desensitising field values for readers whose view is ``masked``.

A schema gives each field a mask rule string; the store applies it when the access
policy answers ``masked``. Every rule keeps missing values missing and is one-way:

=============  =====================================================================
``redact``     every value becomes ``"***"``
``partial:N``  keep at most the last N characters (and never more than half of the
               value), the rest become ``*``; the length is kept
``bucket:W``   numbers become the lower bound of their width-W bucket
``round:D``    numbers rounded to D decimals (D < 0 rounds to tens, hundreds, ...)
``year``       dates become their calendar year
``hash``       keyed HMAC-SHA256 token (needs a key; never a plain unsalted hash)
``none``       unchanged (the schema author decided the field needs no masking)
=============  =====================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcustomer.errors import KeyMaterialError, SchemaError

KINDS = ("redact", "partial", "bucket", "round", "year", "hash", "none")
REDACTED = "***"
MIN_HASH_KEY_BYTES = 16
HASH_TOKEN_HEX = 32  # 128-bit tokens: collisions negligible for any customer base

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUMBER_RE = re.compile(r"^\d+(\.\d+)?([eE][+-]?\d+)?$")
_HASH_INFO = b"fedcustomer masking hash v1"


@dataclass(frozen=True)
class MaskRule:
    """A parsed mask rule; ``param`` is the int/float after the colon, if the kind takes one."""

    kind: str
    param: int | float | None = None

    def __str__(self) -> str:
        return self.kind if self.param is None else f"{self.kind}:{self.param}"

    def number(self) -> int | float:
        """The parameter of a kind that takes one (partial, bucket, round)."""
        if self.param is None:
            raise SchemaError(f"mask rule '{self.kind}' needs a parameter")
        return self.param


def _bad(rule: object, field: str | None, why: str) -> SchemaError:
    where = f"field '{field}': " if field else ""
    return SchemaError(
        f"{where}mask rule {rule!r} {why}; rules are redact, partial:<n>, bucket:<width>, round:<digits>, "
        "year, hash, none"
    )


def parse_mask_rule(rule: str | MaskRule, *, field: str | None = None) -> MaskRule:
    """Parse a schema's mask rule string; SchemaError (naming ``field``) if it is not one."""
    if isinstance(rule, MaskRule):
        return rule
    if not isinstance(rule, str):
        raise _bad(rule, field, "is not a string")
    text = rule.strip()
    kind, sep, arg = text.partition(":")
    if kind not in KINDS:
        raise _bad(rule, field, f"has unknown kind {kind!r}")
    takes_param = kind in ("partial", "bucket", "round")
    if not takes_param:
        if sep:
            raise _bad(rule, field, f"takes no parameter after '{kind}'")
        return MaskRule(kind)
    if not sep or not arg:
        example = {"partial": "partial:4", "bucket": "bucket:1000", "round": "round:-2"}[kind]
        raise _bad(rule, field, f"needs a parameter, e.g. {example}")
    if kind == "partial":
        if not arg.isdigit() or not arg.isascii():
            raise _bad(rule, field, "needs a non-negative whole number of characters to keep")
        n = int(arg)
        if n > 64:
            raise _bad(rule, field, "keeps more than 64 characters, which is no masking")
        return MaskRule(kind, n)
    if kind == "round":
        if not _INT_RE.match(arg):
            raise _bad(rule, field, "needs a whole number of decimals, e.g. round:-2 for hundreds")
        d = int(arg)
        if not -15 <= d <= 15:
            raise _bad(rule, field, "needs decimals between -15 and 15")
        return MaskRule(kind, d)
    # bucket
    if not _NUMBER_RE.match(arg):
        raise _bad(rule, field, "needs a positive bucket width, e.g. bucket:1000")
    width = float(arg)
    if not math.isfinite(width) or width <= 0:
        raise _bad(rule, field, "needs a positive, finite bucket width")
    return MaskRule(kind, int(width) if width.is_integer() and abs(width) < 2**53 else width)


_NUMERIC = {"int", "integer", "float", "double", "number", "numeric", "decimal", "money", "amount"}
_DATES = {"date", "datetime", "timestamp", "time"}


def default_rule_for(dtype: str) -> str:
    """A safe default mask for a schema or pandas dtype name: numbers rounded, dates to year, else redact."""
    name = str(dtype).strip().lower()
    base = re.sub(r"[\[(].*$", "", name).rstrip("0123456789")
    if name in ("bool", "boolean"):
        return "redact"
    if base in _NUMERIC or base in ("int", "uint", "float"):
        return "round:-2"
    if base in _DATES or base.startswith("datetime"):
        return "year"
    return "redact"


# --------------------------------------------------------------------------- applying


def _as_numeric(series: pd.Series, rule: MaskRule) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype):
        raise SchemaError(f"mask rule '{rule}' needs numbers, column '{series.name}' is boolean; use redact")
    if pd.api.types.is_datetime64_any_dtype(series.dtype) or isinstance(series.dtype, pd.PeriodDtype):
        # as a number a date is its epoch count: rounding that keeps the exact day
        raise SchemaError(
            f"mask rule '{rule}' needs numbers, column '{series.name}' holds dates (rounded as numbers "
            "they would still show the exact date); use year or redact"
        )
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series
    try:
        return pd.to_numeric(series, errors="raise")
    except (ValueError, TypeError):
        raise SchemaError(
            f"mask rule '{rule}' needs numbers, column '{series.name}' holds non-numeric values; "
            "fix the schema's mask rule or the data type"
        ) from None


def _bucket(series: pd.Series, rule: MaskRule) -> pd.Series:
    values = _as_numeric(series, rule)
    width = rule.number()
    if pd.api.types.is_integer_dtype(values.dtype) and isinstance(width, int):
        return (values // width) * width  # exact integer arithmetic, also for nullable Int64
    x = values.astype("float64").to_numpy()
    w = float(width)
    with np.errstate(invalid="ignore", over="ignore"):
        low = np.floor(x / w) * w
        # Division rounding can put the bound one bucket off; nudge so low <= x < low + w.
        low = np.where(low > x, low - w, low)
        low = np.where(low + w <= x, low + w, low)
    return pd.Series(low, index=series.index, name=series.name)


def _round(series: pd.Series, rule: MaskRule) -> pd.Series:
    values = _as_numeric(series, rule)
    digits = int(rule.number())
    if pd.api.types.is_integer_dtype(values.dtype):
        if digits >= 0:
            return values.copy()
        step = 10 ** (-digits)
        rounded: pd.Series = ((values + step // 2) // step) * step  # half up, exact for integers
        return rounded
    return values.astype("float64").round(digits)


def _year(series: pd.Series, rule: MaskRule) -> pd.Series:
    dates: pd.Series | None = None
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        dates = series
    else:
        for utc in (False, True):  # local calendar year first; mixed offsets only parse as UTC
            try:
                dates = pd.to_datetime(series, errors="raise", utc=utc, format="mixed")
                break
            except (ValueError, TypeError, OverflowError):
                continue
        if dates is None or not pd.api.types.is_datetime64_any_dtype(dates.dtype):
            raise SchemaError(
                f"mask rule 'year' needs dates, column '{series.name}' holds values that are not dates"
            )
    years: pd.Series = dates.dt.year.astype("Int64")
    return years


def _text_map(series: pd.Series, fn: Callable[[object], str]) -> pd.Series:
    out = series.astype(object).copy()
    present = series.notna().to_numpy()
    out[present] = [fn(v) for v in series[present]]
    return out


def _partial(value: object, keep: int) -> str:
    text = str(value)
    shown = min(keep, len(text) // 2)
    return "*" * (len(text) - shown) + (text[len(text) - shown :] if shown else "")


def _hash_key(key: bytes | None) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_HASH_KEY_BYTES:
        raise KeyMaterialError(
            f"mask rule 'hash' needs a secret key of at least {MIN_HASH_KEY_BYTES} bytes; "
            "pass the partner's masking key (keys/ in the partner home)"
        )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HASH_INFO)
    return hkdf.derive(bytes(key))


def _token(subkey: bytes, value: object) -> str:
    mac = hmac.HMAC(subkey, hashes.SHA256())
    mac.update(str(value).encode("utf-8"))
    return mac.finalize().hex()[:HASH_TOKEN_HEX]


def mask_series(series: pd.Series, rule: str | MaskRule, *, key: bytes | None = None) -> pd.Series:
    """Apply ``rule`` to every present value of ``series``; missing values stay missing, index kept."""
    parsed = parse_mask_rule(rule, field=str(series.name) if series.name is not None else None)
    if parsed.kind == "none":
        return series.copy()
    if parsed.kind == "redact":
        return _text_map(series, lambda _v: REDACTED)
    if parsed.kind == "partial":
        keep = int(parsed.number())
        return _text_map(series, lambda v: _partial(v, keep))
    if parsed.kind == "hash":
        subkey = _hash_key(key)
        return _text_map(series, lambda v: _token(subkey, v))
    if parsed.kind == "bucket":
        return _bucket(series, parsed)
    if parsed.kind == "round":
        return _round(series, parsed)
    return _year(series, parsed)
