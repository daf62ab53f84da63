"""Reading customer data: resolve -> decide -> fetch -> mask/decrypt -> audit once.

:func:`read_frame` is the body of :meth:`PartnerStore.read
<fedcustomer.data.store.PartnerStore.read>`, each step a small method of :class:`_Read`.
Every refusal is audited by the step that refuses, with the fields and tier known at
that point; a read that returns is audited once, as ``decrypt`` when it opened core
values in clear.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.data.schema import FieldSpec, Schema
from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_customers import DETAILS_KEY as CUSTOMERS_KEY
from fedcustomer.data.store_customers import record_customers
from fedcustomer.data.store_db import open_row_keys, open_sealed_rows, table_name
from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, SchemaError
from fedcustomer.partner.datasets import HOLDOUT, SPLITS, held_out_by_pseudonym
from fedcustomer.privacy.access.masking import default_rule_for, mask_series
from fedcustomer.privacy.access.policy import Actor, Approval, FieldDecision, FieldRef
from fedcustomer.privacy.audit.query import PSEUDONYMS_TRUNCATED
from fedcustomer.privacy.crypto.cipher import FieldCipher

_TIER_RANK = {"public": 0, "sensitive": 1, "core": 2}
TEXT_TYPES = frozenset({"string", "category"})  # --where on these ignores case
_MAX_AUDIT_PSEUDONYMS = 1000


def read_request_extra(where: Mapping[str, Any] | None, approval_id: str | None) -> dict[str, Any]:
    """What a signed read binds besides dataset, fields and purpose: the filter (as a digest,
    so the audit entry never holds a filter value) and the approval used."""
    canonical = json.dumps(where or {}, sort_keys=True, default=str).encode("utf-8")
    return {"where_sha256": hashlib.sha256(canonical).hexdigest(), "approval_id": approval_id}


def read_frame(
    store: StoreCore,
    actor: Credential,
    purpose: str,
    fields: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    *,
    dataset: str | None,
    approval_id: str | None,
    now: datetime | None,
    sign: bool = False,
    context: Mapping[str, Any] | None = None,
    split: str | None = None,
) -> pd.DataFrame:
    """Policy per field, masking, decryption, one audit entry (see :meth:`PartnerStore.read`)."""
    read, plan = start_read(
        store,
        actor,
        purpose,
        fields,
        where,
        dataset=dataset,
        approval_id=approval_id,
        now=now,
        context=context,
        split=split,
    )
    frame = read.fetch(plan)
    read.audit_success(plan, frame, sign=sign)
    return frame


# What a read's ``context`` may say about the job it serves (kept small: identifiers, not data).
CONTEXT_KEYS = frozenset({"run_id", "split", "round"})


def _checked_context(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """A read's job context, refused when it names anything but a job's identifiers."""
    out = dict(context or {})
    unknown = sorted(set(out) - CONTEXT_KEYS)
    if unknown:
        raise ConfigError(
            f"a read's context may name only {', '.join(sorted(CONTEXT_KEYS))}; got {', '.join(unknown)}"
        )
    bad = [k for k, v in out.items() if not isinstance(v, (str, int)) or isinstance(v, bool)]
    if bad:
        raise ConfigError(f"a read's context values must be text or whole numbers ({', '.join(sorted(bad))})")
    return out


def start_read(
    store: StoreCore,
    actor: Credential,
    purpose: str,
    fields: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    *,
    dataset: str | None,
    approval_id: str | None,
    now: datetime | None,
    context: Mapping[str, Any] | None = None,
    split: str | None = None,
) -> tuple[_Read, _Plan]:
    """Authenticate the reader, resolve the dataset and fields, decide per field; every refusal
    is raised (and logged) here, before a row is read, for whole and batched reads alike.

    ``split`` keeps one side of the evaluation split: by the public holdout marker (a filter like
    ``where``) where the dataset has one, else by pseudonym, before any row is opened."""
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    actor = store.principal(
        actor,
        action="read",
        audit_action="read",
        dataset=dataset,
        fields=list(fields or ()),
        purpose=purpose,
        extra=read_request_extra(where, approval_id),
        now=now,
    )
    read = _Read(store, actor, purpose, now, {"purpose": purpose}, _checked_context(context))
    schema, requested = read.resolve(dataset, fields, where)
    where = dict(where or {})
    by_pseudonym = None
    if split is not None and HOLDOUT in schema.names:
        where[HOLDOUT] = 1 if split == "test" else 0
    elif split is not None:
        by_pseudonym = split == "test"  # keep the customers whose pseudonym holds them out, or the others
    plan = read.decide(schema, requested, fields is not None, where, approval_id)
    return read, replace(plan, held_out=by_pseudonym)


@dataclass(frozen=True)
class _Plan:
    """What a read may return: the visible fields and their views, filters, approvals used."""

    schema: Schema
    visible: list[str]
    views: dict[str, str]
    where: dict[str, Any]
    omitted: list[str]
    approvals: list[str]
    held_out: bool | None = None  # a split by pseudonym: True keeps the held-out customers, False the others


@dataclass
class _Read:
    store: StoreCore
    actor: Actor
    purpose: str
    now: datetime | None
    audit_base: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)

    def deny(self, reason: str, fields: list[str], **more: Any) -> None:
        """Audit a refused read (the caller raises)."""
        if self.context:
            more["details"] = {**self.context, **(more.get("details") or {})}
        self.store.log(self.actor, "read", "denied", reason=reason, fields=fields, **more, **self.audit_base)

    # ---- resolve: which dataset, which fields ---------------------------------------------

    def resolve(
        self, dataset: str | None, fields: Sequence[str] | None, where: Mapping[str, Any] | None
    ) -> tuple[Schema, list[str]]:
        try:
            ds = self._dataset(dataset)
            self.audit_base["dataset"] = ds
            schema = self.store.schema(ds)
        except FedCustomerError as exc:
            self.deny(str(exc), list(fields or ()))
            raise
        requested = list(dict.fromkeys(fields)) if fields is not None else schema.names
        unknown = [n for n in requested if n not in schema.names] + [
            n for n in (where or {}) if n not in schema.names
        ]
        if unknown:
            message = f"dataset {ds!r} has no field(s) {', '.join(sorted(set(unknown)))}"
            self.deny(message, requested)
            raise SchemaError(message + f"; known fields: {', '.join(schema.names)}")
        return schema, requested

    def _dataset(self, dataset: str | None) -> str:
        if dataset is not None:
            self.store.schema(dataset)
            return dataset
        names = self.store.datasets()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ConfigError(
                f"the store {self.store.home.store_path} holds no dataset yet; ingest one first"
            )
        raise ConfigError(
            f"the store holds several datasets ({', '.join(names)}); name one with --dataset NAME"
        )

    # ---- decide: the policy's view of every field -------------------------------------------

    def decide(
        self,
        schema: Schema,
        requested: list[str],
        explicit: bool,
        where: dict[str, Any],
        approval_id: str | None,
    ) -> _Plan:
        """Views per field; refuses denied explicit fields, empty results and filters on hidden fields."""
        actor, purpose = self.actor, self.purpose
        try:
            if not self.store.policy.may(actor, "read"):
                raise AccessDenied(
                    f"actor '{actor.name}' with role '{actor.role}' may not read customer data (no 'read' action)"
                )
            if approval_id is not None and not self.store.approvals.exists(approval_id):
                raise AccessDenied(
                    f"approval {approval_id!r}: no approval request with that id exists in this home "
                    f"({self.store.home.root}); `fedcustomer approvals list` shows the requests still waiting "
                    "for approvers, and `approvals request` prints a new request's id"
                )
            decisions, approvals = self._decisions(schema, requested, approval_id)
        except FedCustomerError as exc:
            self.deny(str(exc), requested, tier=_top_tier(schema, requested))
            raise
        denied = {n: d for n, d in decisions.items() if d.view == "denied"}
        if explicit and denied:
            reason = "; ".join(f"{n}: {d.reason}" for n, d in denied.items())
            self.deny(
                reason, requested, tier=_top_tier(schema, list(denied)), details={"denied": sorted(denied)}
            )
            raise AccessDenied(
                f"actor '{actor.name}' ({actor.role}) may not read {', '.join(denied)} of dataset "
                f"{schema.dataset!r} for purpose '{purpose}': {reason}"
            )
        visible = [n for n in requested if n not in denied]
        bad_where = [
            k
            for k in where
            if schema.field(k).tier != "public"
            or (decisions[k].view if k in decisions else self._view_of(schema.field(k))) == "denied"
        ]
        if not visible or bad_where:
            common = {d.reason for d in denied.values()}  # one reason for every field: say it
            reason = (
                f"filters allowed on public fields the actor may see only (not {', '.join(bad_where)})"
                if bad_where
                else f"role '{actor.role}' may see no field of dataset {schema.dataset!r} for purpose '{purpose}'"
                + (f": {common.pop()}" if len(common) == 1 else "")
            )
            self.deny(reason, requested, tier=_top_tier(schema, requested))
            raise AccessDenied(f"actor '{actor.name}': {reason}")
        used = sorted(
            {a.approval_id for n, a in approvals.items() if a is not None and decisions[n].view == "clear"}
        )
        views = {n: decisions[n].view for n in visible}
        return _Plan(schema, visible, views, where, sorted(denied), used)

    def _decisions(
        self, schema: Schema, names: Sequence[str], approval_id: str | None
    ) -> tuple[dict[str, Any], dict[str, Approval | None]]:
        """One policy decision per field; core fields are checked against active approvals."""
        decisions: dict[str, Any] = {}
        approvals: dict[str, Approval | None] = {}
        for name in names:
            spec = schema.field(name)
            ref = FieldRef(spec.name, spec.tier, spec.role)
            approval = None
            if spec.is_core:
                approval = self.store.approvals.active_for(
                    self.actor, schema.dataset, [name], self.purpose, now=self.now, request_id=approval_id
                )
            decision = self.store.policy.decide(
                self.actor, self.purpose, ref, approval=approval, now=self.now
            )
            if spec.is_core and approval is None and approval_id is not None and decision.view == "denied":
                why = self.store.approvals.why_not(
                    approval_id, self.actor, schema.dataset, name, self.purpose, now=self.now
                )
                if why is not None:
                    decision = FieldDecision(name, "denied", f"{decision.reason} ({why})")
            decisions[name] = decision
            approvals[name] = approval
        return decisions, approvals

    def _view_of(self, spec: FieldSpec) -> str:
        ref = FieldRef(spec.name, spec.tier, spec.role)
        view: str = self.store.policy.decide(self.actor, self.purpose, ref, now=self.now).view
        return view

    # ---- fetch, then mask -----------------------------------------------------------------

    def fetch(self, plan: _Plan, page: tuple[str | None, int] | None = None) -> pd.DataFrame:
        """The visible fields of every matching row, decrypted or masked per view; with ``page``
        (after, limit), only the next ``limit`` rows whose pseudonym sorts after ``after``."""
        try:
            with _collector_paused():
                if page is None:
                    index, columns = _fetch_columns(self.store, plan)
                else:
                    index, columns = _fetch_page(self.store, plan, *page)
                return _to_frame(plan, index, columns, self.store.mask_key)
        except FedCustomerError as exc:
            self.deny(f"read failed: {exc}", plan.visible, tier=_top_tier(plan.schema, plan.visible))
            raise

    # ---- audit ------------------------------------------------------------------------

    def audit_success(self, plan: _Plan, frame: pd.DataFrame, *, sign: bool = False) -> None:
        """The one entry of a read that returned: ``decrypt`` when core values came back in clear;
        ``sign`` signs a checkpoint over it at once (see :meth:`PartnerStore.read`)."""
        index = frame.index if frame.index.is_monotonic_increasing else frame.index.sort_values()
        customers = record_customers(self.store.backend, plan.schema.dataset, index)
        self.audit_rows(plan, len(frame), frame.index[:_MAX_AUDIT_PSEUDONYMS].tolist(), customers, sign=sign)

    def audit_rows(
        self,
        plan: _Plan,
        row_count: int,
        first: list[str],
        customers: dict[str, Any],
        *,
        sign: bool = False,
    ) -> None:
        """The entry itself, from the row count, the first pseudonyms of the rows returned and the
        citation of their whole set (:mod:`fedcustomer.data.store_customers`; a batched read writes
        it before its first batch, :mod:`fedcustomer.data.store_batches`)."""
        schema, visible = plan.schema, plan.visible
        decrypted = decrypted_fields(plan)
        details: dict[str, Any] = {**self.context, "views": dict(plan.views), CUSTOMERS_KEY: customers}
        if plan.where:
            details["where"] = {k: (list(v) if _is_seq(v) else v) for k, v in plan.where.items()}
        if plan.omitted:
            details["omitted"] = plan.omitted
        pseudonyms: list[str] = []
        if decrypted:
            pseudonyms = first[:_MAX_AUDIT_PSEUDONYMS]
            if row_count > _MAX_AUDIT_PSEUDONYMS:
                details[PSEUDONYMS_TRUNCATED] = row_count  # `audit query --pseudonym` still finds it
        self.store.log(
            self.actor,
            "decrypt" if decrypted else "read",
            fields=visible,
            tier=_top_tier(schema, visible),
            approvals=plan.approvals,
            row_count=row_count,
            pseudonyms=pseudonyms,
            details=details,
            sign=sign,
            **self.audit_base,
        )


def _fetch_columns(store: StoreCore, plan: _Plan) -> tuple[list[str], dict[str, list[Any] | np.ndarray]]:
    """Open each customer's sealed row with their data key; filter; decrypt core fields asked for.

    Rows are opened in chunks (:data:`_CHUNK`), each with one call per step (unwrap the keys,
    open the sealed rows, open each core field): the same keys, AEAD and checks as one value at
    a time, without paying Python's call overhead per value. A chunk bounds what is held in
    clear beyond the columns being built.
    """
    chunk = _chunk_for(store, plan)
    rows = _in_split(store.backend.fetchall(_select(store, plan), [plan.schema.dataset]), plan)
    for start in range(0, len(rows), _CHUNK):
        chunk.open(rows[start : start + _CHUNK])
    return chunk.index, chunk.finished()


def _fetch_page(
    store: StoreCore, plan: _Plan, after: str | None, limit: int
) -> tuple[list[str], dict[str, list[Any] | np.ndarray]]:
    """:func:`_fetch_columns` for the next ``limit`` stored rows whose pseudonym sorts after ``after``
    (keyset paging on the primary key: each page is one short query, no cursor held between pages)."""
    chunk = _chunk_for(store, plan)
    params: list[Any] = [plan.schema.dataset] + ([] if after is None else [after])
    rows = _in_split(
        store.backend.fetchall(_select(store, plan, paged=after is not None, limit=limit), params), plan
    )
    for start in range(0, len(rows), _CHUNK):
        chunk.open(rows[start : start + _CHUNK])
    return chunk.index, chunk.finished()


def _in_split(rows: list[Any], plan: _Plan) -> list[Any]:
    """The fetched rows of the plan's split by pseudonym (all of them without one), before any is opened."""
    if plan.held_out is None:
        return rows
    return [r for r in rows if held_out_by_pseudonym(r[0]) is plan.held_out]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while a read builds its columns, and resumed if it was on.

    A read makes a few containers per row (the SQL row, its parsed JSON, a block row), none
    in a reference cycle: reference counting frees them, but the collector would walk them
    after every 700 new containers (about 200 passes for the ten reads of the grid benchmark,
    tens of ms). A cycle made elsewhere meanwhile is collected at the first pass after the read.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def decrypted_fields(plan: _Plan) -> list[str]:
    """The core fields a read opens in clear (its audit action is then ``decrypt``)."""
    return [n for n in plan.visible if plan.schema.field(n).is_core and plan.views[n] == "clear"]


def _select(store: StoreCore, plan: _Plan, *, paged: bool = False, limit: int | None = None) -> str:
    schema, q = plan.schema, store.backend.quote
    core = [n for n in plan.visible if schema.field(n).is_core]
    return (
        f"SELECT t.pseudonym, t.sealed, k.kek_version, k.blob{''.join(f', t.{q(n)}' for n in core)} "
        f"FROM {q(table_name(schema.dataset))} t LEFT JOIN data_keys k ON k.dataset = ? "
        f"AND k.pseudonym = t.pseudonym {'WHERE t.pseudonym > ? ' if paged else ''}ORDER BY t.pseudonym"
        + ("" if limit is None else f" LIMIT {int(limit)}")
    )


def _chunk_for(store: StoreCore, plan: _Plan) -> _Chunk:
    """The row opener of a read: its cipher, the fields it opens and its filter values."""
    schema, names = plan.schema, plan.visible
    dataset = schema.dataset
    core = [n for n in names if schema.field(n).is_core]
    plain = [n for n in names if not schema.field(n).is_core]
    # Text equality ignores case (region=north finds "North"): a filter names a category, not a spelling.
    text_keys = {k for k in plan.where if schema.field(k).type in TEXT_TYPES}
    wanted: dict[str, set[Any]] = {}
    for name, value in plan.where.items():
        stored = {_where_value(schema.field(name), v) for v in (list(value) if _is_seq(value) else [value])}
        wanted[name] = {_fold(v) for v in stored} if name in text_keys else stored
    whole = [n for n in plain if schema.field(n).type in WHOLE_TYPES]
    return _Chunk(store, FieldCipher(dataset), plain, core, wanted, text_keys, whole)


_CHUNK = 4096
WHOLE_TYPES = frozenset({"integer", "boolean"})  # stored as Python ints: read into int64 blocks
_EXACT_INT = 2**53  # beyond it the general path's float round trip rounds; the block path must agree


class _Chunk:
    """Opens the rows of a read a chunk at a time and appends them to its columns."""

    def __init__(
        self,
        store: StoreCore,
        cipher: FieldCipher,
        plain: list[str],
        core: list[str],
        wanted: dict[str, set[Any]],
        text_keys: set[str],
        whole: list[str] | None = None,
    ) -> None:
        self.store, self.cipher, self.plain, self.core = store, cipher, plain, core
        self.wanted, self.text_keys = wanted, text_keys
        self.whole = list(whole or [])  # plain integer and boolean fields, taken a block at a time
        self.listed = [n for n in plain if n not in set(self.whole)]
        self.index: list[str] = []
        self.columns: dict[str, list[Any]] = {n: [] for n in self.listed + core}
        self.pieces: dict[str, list[np.ndarray | list[Any]]] = {n: [] for n in self.whole}

    def open(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if self.plain or self.wanted:
            keys, docs = open_sealed_rows(self.store.keyring, self.cipher, rows)
            values = [doc["values"] for doc in docs]
            if self.wanted:
                kept = self._kept(values)
                if len(kept) != len(rows):
                    values = [values[i] for i in kept]
                    rows = [rows[i] for i in kept]
                    keys = keys.select(kept)
            for n in self.listed:
                self.columns[n].extend([v.get(n) for v in values])
            if self.whole:
                block = _whole_block(values, self.whole)
                for j, n in enumerate(self.whole):
                    self.pieces[n].append(block[:, j] if block is not None else [v.get(n) for v in values])
        else:
            keys = open_row_keys(self.store.keyring, self.cipher, [(r[0], r[2], r[3]) for r in rows])
        self.index.extend(r[0] for r in rows)
        for offset, n in enumerate(self.core, start=4):
            tokens = [r[offset] for r in rows]
            present = [i for i, t in enumerate(tokens) if t is not None]
            column: list[Any] = [None] * len(tokens)
            if present:
                some = keys if len(present) == len(tokens) else keys.select(present)
                for i, value in zip(present, some.open_field(n, [bytes(tokens[i]) for i in present])):
                    column[i] = value
            self.columns[n].extend(column)

    def finished(self) -> dict[str, list[Any] | np.ndarray]:
        """Every column read: an int64 array where every chunk of it came as a block, else a list."""
        out: dict[str, list[Any] | np.ndarray] = dict(self.columns)
        for n, pieces in self.pieces.items():
            if pieces and all(isinstance(p, np.ndarray) for p in pieces):
                out[n] = np.concatenate(pieces)
            else:
                out[n] = [v for p in pieces for v in (p.tolist() if isinstance(p, np.ndarray) else p)]
        return out

    def _kept(self, values: Sequence[Mapping[str, Any]]) -> list[int]:
        """Positions of the rows the filter keeps; one field compared as stored (a split's holdout
        marker, say) takes one comparison per row instead of a generator over the filter."""
        if len(self.wanted) == 1 and not self.text_keys:
            ((name, allowed),) = self.wanted.items()
            return [i for i, v in enumerate(values) if v.get(name) in allowed]
        return [i for i, v in enumerate(values) if self._matches(v)]

    def _matches(self, values: Mapping[str, Any]) -> bool:
        return all(
            (_fold(values.get(k)) if k in self.text_keys else values.get(k)) in allowed
            for k, allowed in self.wanted.items()
        )


def _whole_block(values: Sequence[Mapping[str, Any]], names: list[str]) -> np.ndarray | None:
    """The ``names`` fields of every row as one (rows, fields) int64 block, or None.

    Only when every row has every field and every value is an int (or bool) within +-2**53, where
    the general path (:func:`_to_series`) would give the same int64 column; a missing field or
    cell, a float, a text or a larger number sends the chunk down the general path. The values
    are checked by their sum (ints and bools sum to an int; one float makes it a float; a None,
    text or list raises) and then copied into the block in one pass, without numpy's type
    discovery over nested rows.
    """
    if not values or not names:
        return None
    get = itemgetter(*names)
    try:
        flat = list(map(get, values)) if len(names) == 1 else list(chain.from_iterable(map(get, values)))
        if type(sum(flat)) is not int:
            return None
        block = np.fromiter(flat, dtype=np.int64, count=len(flat))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    block = block.reshape(len(values), len(names))
    if not (int(block.min()) >= -_EXACT_INT and int(block.max()) <= _EXACT_INT):
        return None
    return block


def _to_frame(
    plan: _Plan, index: list[str], columns: Mapping[str, list[Any] | np.ndarray], mask_key: bytes
) -> pd.DataFrame:
    """Typed columns indexed by pseudonym, masked where the view is ``masked``."""
    idx = pd.Index(index, name="pseudonym", dtype=object)
    data: dict[str, Any] = {}
    for name in plan.visible:
        spec = plan.schema.field(name)
        series = _to_series(spec, columns[name], idx)
        if plan.views[name] == "masked":
            series = mask_series(
                series.rename(name), spec.masking or default_rule_for(spec.type), key=mask_key
            )
            series.index = idx
        data[name] = series
    return pd.DataFrame(data, index=idx)


def _fold(value: Any) -> Any:
    """Text compared without case (Unicode case folding); other values as they are."""
    return value.casefold() if isinstance(value, str) else value


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def _top_tier(schema: Schema, names: Sequence[str]) -> str | None:
    tiers = [schema.field(n).tier for n in names if n in schema.names]
    return max(tiers, key=_TIER_RANK.__getitem__) if tiers else None


def _where_value(spec: FieldSpec, value: Any) -> Any:
    """A filter value in the stored representation of the field."""
    from fedcustomer.data.validators import canonical_text, validate_column

    parsed, bad = validate_column(spec, pd.Series([None if value is None else str(value)], dtype="string"))
    if bad and parsed.isna().all() and value is not None:
        raise SchemaError(f"filter value for field {spec.name!r} is not a valid {spec.type}")
    if spec.type == "integer":
        return None if parsed.isna().all() else int(parsed.iloc[0])
    if spec.type == "float":
        return None if parsed.isna().all() else float(parsed.iloc[0])
    if spec.type == "boolean":
        v = parsed.iloc[0]
        return None if v is None else int(bool(v))
    return canonical_text(spec, parsed)[0]


def _to_series(spec: FieldSpec, values: list[Any] | np.ndarray, index: pd.Index) -> pd.Series:
    """Stored values -> a column with a numeric dtype for numbers (vectorised, no per-row Python)."""
    t = spec.type
    if isinstance(values, np.ndarray):  # an int64 block (:func:`_whole_block`): already the column
        return pd.Series(values.astype(bool) if t == "boolean" else values, index=index, name=spec.name)
    if t in ("integer", "boolean"):
        arr = pd.array(values, dtype="Float64") if values else pd.array([], dtype="Float64")
        if arr.isna().any():
            return pd.Series(arr.to_numpy(dtype="float64", na_value=np.nan), index=index, name=spec.name)
        out = arr.to_numpy(dtype="int64") if len(arr) else np.array([], dtype="int64")
        return pd.Series(out.astype(bool) if t == "boolean" else out, index=index, name=spec.name)
    if t == "float":
        return pd.Series(
            np.array(values, dtype="float64") if values else np.array([], dtype="float64"),
            index=index,
            name=spec.name,
        )
    if t in ("date", "datetime"):
        text = pd.Series(values, index=index, name=spec.name, dtype=object)
        if t == "date":
            return pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
        return pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    return pd.Series(values, index=index, name=spec.name, dtype=object)
