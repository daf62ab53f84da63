"""Dataset schemas: what each customer field is, how it is protected, how it is checked.

A partner describes each dataset in one YAML file. Every field carries a *type*
(how raw text is parsed), a *tier* (``core`` fields are encrypted at rest and
read in clear only with approvals; ``sensitive`` fields are stored as values and
masked for most readers; ``public`` fields are open), a *role* in modelling
(``id``, ``feature``, ``label``, ``timestamp``), validation rules and a masking
rule. Core-tier fields are never given to the training pipeline whatever their role:
the access policy denies the core tier to it.

Example::

    dataset: bank
    description: Retail-bank customers
    fields:
      - name: customer_id
        type: string
        tier: core
        role: id
        validation: {regex: "^C[0-9]{8}$"}
      - name: national_id
        type: string
        tier: core
        role: feature
        validation: {checksum: prc_id}
      - name: income
        type: float
        tier: sensitive
        nullable: true
        validation: {min: 0}
        masking: "bucket:10000"

``Schema.load`` reports every problem as a ``SchemaError`` naming the file, the
line and the field, so an admin can fix a schema without reading code.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fedcustomer.errors import DataError, SchemaError

TYPES = ("string", "integer", "float", "boolean", "date", "datetime", "category")
TIERS = ("core", "sensitive", "public")
ROLES = ("id", "feature", "label", "timestamp")
CHECKSUMS = ("prc_id", "luhn")
NUMERIC_TYPES = ("integer", "float")
ORDERED_TYPES = ("integer", "float", "date", "datetime")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Columns the store adds to every dataset table; a field of the same name would collide.
RESERVED_NAMES = ("pseudonym", "ingest_id", "row_ts", "row_digest")
# Most fields a schema (and columns a data file) may have: well inside SQLite's 2,000-column
# table limit, and it keeps drafting and ingesting a file fast. Split wider data by topic.
MAX_COLUMNS = 1000
_FIELD_KEYS = {"name", "type", "tier", "role", "nullable", "validation", "masking", "description"}
_VALIDATION_KEYS = {"regex", "min", "max", "allowed", "allowed_from", "checksum", "max_length"}
# ``allowed_from: observed``: the list was read off one partner's file (``schema draft``), not declared.
OBSERVED = "observed"
_TOP_KEYS = {"dataset", "description", "fields", "version"}


@dataclass(frozen=True)
class Validation:
    """Checks applied to a field's parsed value (all optional)."""

    regex: str | None = None
    min: float | str | None = None
    max: float | str | None = None
    allowed: tuple[str, ...] | None = None
    checksum: str | None = None
    max_length: int | None = None
    allowed_from: str | None = None  # "observed" until a person confirms the list (then None: declared)

    @property
    def observed_categories(self) -> bool:
        """Whether ``allowed`` was read off a partner's data and not yet confirmed by a person."""
        return self.allowed is not None and self.allowed_from == OBSERVED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("regex", "min", "max", "checksum", "max_length"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
            if self.allowed_from is not None:
                out["allowed_from"] = self.allowed_from
        return out


@dataclass(frozen=True)
class FieldSpec:
    """One column of a dataset."""

    name: str
    type: str = "string"
    tier: str = "sensitive"
    role: str = "feature"
    nullable: bool = False
    validation: Validation = field(default_factory=Validation)
    masking: str | None = None
    description: str | None = None

    @property
    def is_core(self) -> bool:
        return self.tier == "core"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "tier": self.tier, "role": self.role}
        out["nullable"] = self.nullable
        validation = self.validation.to_dict()
        if validation:
            out["validation"] = validation
        if self.masking is not None:
            out["masking"] = self.masking
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Schema:
    """A partner dataset: its name and its fields, exactly one of which is the id."""

    dataset: str
    fields: tuple[FieldSpec, ...]
    description: str | None = None
    source: str | None = None  # file it was loaded from, for error messages

    def __post_init__(self) -> None:
        problems = _check_schema(self)
        if problems:
            where = self.source or f"schema {self.dataset!r}"
            raise SchemaError(f"{where}: " + "; ".join(problems))

    # --- lookups -------------------------------------------------------------
    @property
    def id_field(self) -> FieldSpec:
        return next(f for f in self.fields if f.role == "id")

    @property
    def timestamp_field(self) -> FieldSpec | None:
        return next((f for f in self.fields if f.role == "timestamp"), None)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(
            f"dataset {self.dataset!r} has no field {name!r}; known fields: {', '.join(self.names)}"
        )

    def by_tier(self, tier: str) -> list[FieldSpec]:
        return [f for f in self.fields if f.tier == tier]

    def structure(self) -> tuple[tuple[str, str, str, str], ...]:
        """What the store's table layout depends on (name, type, tier, role)."""
        return tuple((f.name, f.type, f.tier, f.role) for f in self.fields)

    # --- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset}
        if self.description:
            out["description"] = self.description
        out["fields"] = [f.to_dict() for f in self.fields]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<schema>") -> Schema:
        return _parse(text, source)

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read and check a schema file; SchemaError names file, line and field on any problem."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(
                f"schema file {path} not found; create one with `fedcustomer schema draft`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"schema file {path} cannot be read: {exc}") from None
        return _parse(text, str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


# --- parsing ------------------------------------------------------------------

# libyaml's safe loader when PyYAML was built with it (its wheels are): the same documents and
# line marks as the pure-Python loader, about eight times faster, which a node pays in its first
# read. A text it refuses is parsed again by the pure-Python loader, whose messages say more.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(text: str, source: str) -> Schema:
    try:
        raw, root_node = _documents(text, source, _FAST_LOADER)
    except yaml.YAMLError:
        try:
            raw, root_node = _documents(text, source, yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise SchemaError(f"{source}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SchemaError(f"{source}: expected a mapping with 'dataset' and 'fields' at the top level")
    lines = _field_lines(root_node)
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"unknown top-level key {key!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not _NAME_RE.match(dataset):
        problems.append("'dataset' must be a lower-case name of letters, digits and '_' (e.g. bank)")
    items = raw.get("fields")
    if not isinstance(items, list) or not items:
        problems.append("'fields' must be a non-empty list of field entries")
        items = []
    fields: list[FieldSpec] = []
    for i, item in enumerate(items):
        where = f"line {lines[i]}" if i < len(lines) else f"fields[{i}]"
        try:
            fields.append(_parse_field(item, i))
        except _FieldProblem as exc:
            problems.append(f"{where}: field {exc.field_name!r}: {exc}")
    if problems:
        raise SchemaError(f"{source}: " + "; ".join(problems))
    description = raw.get("description")
    try:
        return Schema(
            dataset=dataset,  # type: ignore[arg-type]
            fields=tuple(fields),
            description=str(description) if description is not None else None,
            source=source,
        )
    except SchemaError as exc:
        # Re-point whole-schema problems at the offending line where we can.
        message = str(exc)
        for i, f in enumerate(fields):
            if i < len(lines):
                message = message.replace(f"field {f.name!r}:", f"line {lines[i]}: field {f.name!r}:", 1)
        raise SchemaError(message) from None


def _documents(text: str, source: str, loader: Any) -> tuple[Any, Any]:
    """The schema text's data and its node tree (for line numbers); too many fields are refused first."""
    raw = yaml.load(text, Loader=loader)  # both loaders are safe ones
    items = raw.get("fields") if isinstance(raw, dict) else None
    if isinstance(items, list) and len(items) > MAX_COLUMNS:  # refuse before the slower line mapping
        raise SchemaError(
            f"{source}: {len(items)} fields, more than the maximum of {MAX_COLUMNS}; "
            "split the dataset into narrower ones"
        )
    return raw, yaml.compose(io.StringIO(text), Loader=loader)


def _field_lines(root: Any) -> list[int]:
    """1-based line of each entry in the top-level 'fields' list (for error messages)."""
    if not isinstance(root, yaml.MappingNode):
        return []
    for key_node, value_node in root.value:
        if getattr(key_node, "value", None) == "fields" and isinstance(value_node, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value_node.value]
    return []


class _FieldProblem(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


def _parse_field(item: Any, index: int) -> FieldSpec:
    if not isinstance(item, dict):
        raise _FieldProblem(f"#{index}", "each field must be a mapping with at least 'name' and 'type'")
    name = item.get("name")
    label = name if isinstance(name, str) else f"#{index}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _FieldProblem(
            label, "'name' must be lower-case letters, digits and '_' (max 63), starting with a letter"
        )
    unknown = set(item) - _FIELD_KEYS
    if unknown:
        raise _FieldProblem(
            name, f"unknown key(s) {sorted(unknown)} (allowed: {', '.join(sorted(_FIELD_KEYS))})"
        )
    ftype = item.get("type", "string")
    if ftype not in TYPES:
        raise _FieldProblem(name, f"type {ftype!r} is not one of {', '.join(TYPES)}")
    tier = item.get("tier")
    if tier not in TIERS:
        raise _FieldProblem(name, f"tier {tier!r} is not one of {', '.join(TIERS)}")
    role = item.get("role", "feature")
    if role not in ROLES:
        raise _FieldProblem(name, f"role {role!r} is not one of {', '.join(ROLES)}")
    nullable = item.get("nullable", False)
    if not isinstance(nullable, bool):
        raise _FieldProblem(name, "'nullable' must be true or false")
    validation = _parse_validation(name, ftype, item.get("validation"))
    masking = item.get("masking")
    if masking is not None:
        if not isinstance(masking, str) or not masking.strip():
            raise _FieldProblem(
                name, "'masking' must be a rule string such as redact, partial:4, bucket:1000"
            )
        _check_mask_rule(name, masking)
    description = item.get("description")
    return FieldSpec(
        name=name,
        type=ftype,
        tier=tier,
        role=role,
        nullable=nullable,
        validation=validation,
        masking=masking,
        description=str(description) if description is not None else None,
    )


def _check_mask_rule(name: str, rule: str) -> None:
    """Ask the masking module whether it understands the rule (when it is installed)."""
    try:
        from fedcustomer.privacy.access.masking import parse_mask_rule
    except ImportError:  # pragma: no cover - masking module not present in a partial install
        return
    try:
        parse_mask_rule(rule)
    except SchemaError as exc:
        raise _FieldProblem(name, f"masking rule {rule!r}: {exc}") from None


def _parse_validation(name: str, ftype: str, raw: Any) -> Validation:
    if raw is None:
        return Validation()
    if not isinstance(raw, dict):
        raise _FieldProblem(
            name, "'validation' must be a mapping (regex, min, max, allowed, checksum, max_length)"
        )
    unknown = set(raw) - _VALIDATION_KEYS
    if unknown:
        raise _FieldProblem(
            name,
            f"unknown validation key(s) {sorted(unknown)} (allowed: {', '.join(sorted(_VALIDATION_KEYS))})",
        )
    regex = raw.get("regex")
    if regex is not None:
        if not isinstance(regex, str):
            raise _FieldProblem(name, "'regex' must be a string")
        try:
            re.compile(regex)
        except re.error as exc:
            raise _FieldProblem(name, f"'regex' does not compile: {exc}") from None
    bounds: dict[str, Any] = {}
    for key in ("min", "max"):
        value = raw.get(key)
        if value is None:
            continue
        if ftype in NUMERIC_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _FieldProblem(name, f"'{key}' must be a number for a {ftype} field")
        elif ftype in ("date", "datetime"):
            value = str(value)
            if _parse_bound_time(value) is None:
                raise _FieldProblem(name, f"'{key}' must be an ISO 8601 date for a {ftype} field")
        else:
            raise _FieldProblem(name, f"'{key}' applies only to integer, float, date and datetime fields")
        bounds[key] = value
    if "min" in bounds and "max" in bounds:
        lo, hi = bounds["min"], bounds["max"]
        if ftype in ("date", "datetime"):
            lo, hi = _parse_bound_time(lo), _parse_bound_time(hi)
        if lo > hi:
            raise _FieldProblem(name, "'min' is greater than 'max'")
    allowed = raw.get("allowed")
    if allowed is not None:
        if not isinstance(allowed, list) or not allowed:
            raise _FieldProblem(name, "'allowed' must be a non-empty list of values")
        allowed = tuple(_allowed_str(v) for v in allowed)
    allowed_from = raw.get("allowed_from")
    if allowed_from is not None and allowed_from != OBSERVED:
        raise _FieldProblem(
            name,
            f"'allowed_from' may only be '{OBSERVED}' (categories read off data by `schema draft`); "
            "delete the key to declare the list",
        )
    if allowed_from is not None and allowed is None:
        raise _FieldProblem(name, "'allowed_from' describes an 'allowed' list, and there is none")
    checksum = raw.get("checksum")
    if checksum is not None:
        if checksum not in CHECKSUMS:
            raise _FieldProblem(name, f"checksum {checksum!r} is not one of {', '.join(CHECKSUMS)}")
        if ftype != "string":
            raise _FieldProblem(name, "a checksum applies only to string fields")
    max_length = raw.get("max_length")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise _FieldProblem(name, "'max_length' must be a positive integer")
    return Validation(
        regex=regex,
        min=bounds.get("min"),
        max=bounds.get("max"),
        allowed=allowed,
        checksum=checksum,
        max_length=max_length,
        allowed_from=allowed_from,
    )


def _allowed_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_bound_time(value: str) -> Any:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _check_schema(schema: Schema) -> list[str]:
    problems: list[str] = []
    if len(schema.fields) > MAX_COLUMNS:
        problems.append(
            f"{len(schema.fields)} fields, more than the maximum of {MAX_COLUMNS}; "
            "split the dataset into narrower ones"
        )
        return problems  # listing a problem per field of a huge schema helps nobody
    if not isinstance(schema.dataset, str) or not _NAME_RE.match(schema.dataset):
        problems.append("'dataset' must be a lower-case name of letters, digits and '_'")
    seen: set[str] = set()
    for f in schema.fields:
        if f.name in seen:
            problems.append(f"field {f.name!r}: defined twice")
        seen.add(f.name)
        if f.name in RESERVED_NAMES:
            problems.append(
                f"field {f.name!r}: name is reserved for the store's own columns "
                f"({', '.join(RESERVED_NAMES)}); rename the field"
            )
    ids = [f for f in schema.fields if f.role == "id"]
    if len(ids) != 1:
        problems.append(f"exactly one field must have role 'id' (found {len(ids)})")
    for f in ids:
        if f.tier != "core":
            problems.append(
                f"field {f.name!r}: the id field must be tier 'core' (raw ids are never stored in clear)"
            )
        if f.nullable:
            problems.append(f"field {f.name!r}: the id field cannot be nullable")
    stamps = [f for f in schema.fields if f.role == "timestamp"]
    if len(stamps) > 1:
        problems.append(f"at most one field may have role 'timestamp' (found {len(stamps)})")
    for f in stamps:
        if f.type not in ("date", "datetime"):
            problems.append(f"field {f.name!r}: a timestamp field must have type date or datetime")
    for f in schema.fields:
        if f.role == "label" and f.tier == "core":
            problems.append(
                f"field {f.name!r}: a label cannot be core-tier (training never sees core fields)"
            )
    return problems


ROW_ID_FIELD = "row_id"


def listed_names(names: Sequence[str], limit: int = 12) -> str:
    """Column or field names for a message: the first ``limit``, then how many in all ("none" if empty)."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def field_name_for(column: str) -> str:
    """The field a file column is stored as: the column's own name when it is a valid field name,
    else its lower-case spelling with every other character run turned into '_' (``emp.var.rate`` ->
    ``emp_var_rate``, ``checking_status_A11`` -> ``checking_status_a11``). Ingest maps the file's
    columns the same way, so a drafted schema ingests the file it was drafted from."""
    if _NAME_RE.match(column):
        return column
    name = re.sub(r"[^a-z0-9_]+", "_", column.lower()).strip("_") or "column"
    if not name[0].isalpha():
        name = "f_" + name
    return name[:63]


def field_names(columns: Iterable[str], source: str) -> dict[str, str]:
    """Column -> field name for a file's header; DataError when two columns would share a field."""
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for col in columns:
        name = field_name_for(str(col))
        if name in taken:
            raise DataError(
                f"{source}: columns {taken[name]!r} and {col!r} would both be stored as field "
                f"{name!r}; rename one of them"
            )
        taken[name] = str(col)
        out[str(col)] = name
    return out


def replace_field(schema: Schema, name: str, **changes: Any) -> Schema:
    """A copy of ``schema`` with one field changed (handy in tests and scripts)."""
    schema.field(name)
    new_fields = tuple(replace(f, **changes) if f.name == name else f for f in schema.fields)
    return replace(schema, fields=new_fields)


def require_columns(schema: Schema, columns: Iterable[str], source: str) -> list[str]:
    """SchemaError if the file lacks a schema field; returns the file's extra (ignored) columns."""
    present = [str(c) for c in columns]
    missing = [n for n in schema.names if n not in present]
    if missing:
        raise SchemaError(
            f"{source}: column(s) {', '.join(missing)} required by schema {schema.dataset!r} are missing "
            f"(file has: {', '.join(present) or 'no columns'})"
        )
    return [c for c in present if c not in schema.names]


def load_bundled(name: str) -> Schema:
    """One of the example schemas shipped with the package: 'bank' or 'retailer'."""
    path = Path(__file__).with_name("schemas") / f"{name}.yaml"
    if not path.exists():
        raise SchemaError(f"no bundled schema {name!r}; available: bank, retailer")
    return Schema.load(path)
