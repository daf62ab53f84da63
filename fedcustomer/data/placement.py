"""Where each customer of a simulated federation lives, fixed when its homes are first provisioned.

A split is a property of the partners' data, not of a job's ``--seed``: once a customer
has been ingested at partner ``bank_2`` as a training row, every later job on the same
homes must find them there, as a training row, or held-out rows would have been trained
on and one person would sit at two partners (two budgets for one customer).

The registry (``placements.db`` beside the homes) records, for every customer and
partner holding them, a keyed token of the id (HMAC-SHA256 under a random key kept in
``placements.key``, mode 0600; never the raw id), the partner and the held-out flag.
Re-provisioning with another seed, split or file (a renamed or shuffled copy) places every
known customer where they were first placed; only customers never seen before take the
new assignment. Sources that give each partner its own customers (the generated
federation, a directory of per-partner files) may hold one person at several partners, as
real banks do; such rows stay at their partner and keep their held-out flag there. The
number of partners is part of the layout and cannot change on the same homes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.data.partition import PartnerDataset
from fedcustomer.errors import ConfigError, DataError

REGISTRY_NAME = "placements.db"
KEY_NAME = "placements.key"
_KEY_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layout (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS placements (
    token TEXT NOT NULL,
    partner TEXT NOT NULL,
    holdout INTEGER NOT NULL CHECK (holdout IN (0, 1)),
    PRIMARY KEY (token, partner)
);
"""


@dataclass
class PlacementResult:
    """The partners' rows after the registry was applied, and what the user should be told."""

    datasets: list[PartnerDataset]
    first: bool
    kept: int = 0
    moved: int = 0
    new: int = 0
    notices: list[str] = field(default_factory=list)


class PlacementRegistry:
    """The customer -> (partner, held-out) map of one directory of simulated homes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / REGISTRY_NAME
        self.key_path = self.root / KEY_NAME

    def apply(
        self, datasets: Sequence[PartnerDataset], id_column: str | None, layout: dict[str, str]
    ) -> PlacementResult:
        """Place every customer where the registry says; record customers seen for the first time.

        ``layout`` describes the job's split (partners, split, seed, source) and is kept from
        the first provisioning so later differences can be named in the notice.
        """
        if id_column is None:
            raise DataError(
                "the data has no customer id column; the store and the split registry key customers by id"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        key = self._key()
        names = [ds.name for ds in datasets]
        rows = []
        for ds in datasets:
            for holdout, frame in ((0, ds.train), (1, ds.test)):
                if id_column not in frame.columns:
                    raise DataError(f"partner {ds.name!r}: data has no customer id column {id_column!r}")
                tokens = [_token(key, v) for v in frame[id_column].astype(str)]
                rows.append(frame.assign(_partner=ds.name, _holdout=holdout, _token=tokens))
        pooled = pd.concat(rows, ignore_index=True)
        dupes = pooled.duplicated(["_token", "_partner"])
        if dupes.any():
            raise DataError(
                f"{int(dupes.sum())} rows repeat a customer id at the same partner; each customer must "
                "appear once per partner"
            )
        with self._connect() as conn:
            first_layout = dict(conn.execute("SELECT key, value FROM layout").fetchall())
            first = not first_layout
            if first:
                conn.executemany(
                    "INSERT INTO layout (key, value) VALUES (?, ?)",
                    [(k, str(v)) for k, v in {**layout, "partner_names": ",".join(names)}.items()],
                )
            else:
                recorded = first_layout.get("partner_names", "").split(",")
                if recorded != names:
                    raise ConfigError(
                        f"the partner homes in {self.root} were provisioned for {len(recorded)} partners "
                        f"({', '.join(recorded)}); a job on them must use the same partners. Use the same "
                        "--partners, or a new --homes directory for another layout"
                    )
            known = _lookup(conn, list(pooled["_token"].unique()))
            once = ~pooled["_token"].duplicated(
                keep=False
            )  # a pooled split: this input holds them at one partner
            targets = [
                _target(known.get(t, {}), p, h, single)
                for t, p, h, single in zip(pooled["_token"], pooled["_partner"], pooled["_holdout"], once)
            ]
            is_known = pd.Series([t is not None for t in targets], index=pooled.index)
            placed = [
                t if t is not None else (p, h)
                for t, p, h in zip(targets, pooled["_partner"], pooled["_holdout"])
            ]
            new_partner = pd.Series([x[0] for x in placed], index=pooled.index)
            new_holdout = pd.Series([int(x[1]) for x in placed], index=pooled.index)
            moved = (new_partner != pooled["_partner"]) | (new_holdout != pooled["_holdout"])
            pooled["_partner"], pooled["_holdout"] = new_partner, new_holdout
            fresh = pooled.loc[~is_known, ["_token", "_partner", "_holdout"]]
            conn.executemany(
                "INSERT OR IGNORE INTO placements (token, partner, holdout) VALUES (?, ?, ?)",
                [(t, p, int(h)) for t, p, h in fresh.itertuples(index=False)],
            )
        result = PlacementResult(
            _regroup(pooled, datasets),
            first=first,
            kept=int(is_known.sum()),
            moved=int(moved.sum()),
            new=int((~is_known).sum()),
        )
        if not first:
            changed = [
                f"{k} {first_layout.get(k)!r} -> {v!r}"
                for k, v in layout.items()
                if k in first_layout and first_layout[k] != str(v)
            ]
            if changed or result.moved:
                result.notices.append(
                    f"the partner homes in {self.root} keep the split fixed when they were first provisioned "
                    f"({'; '.join(changed) or 'same options'}): {result.kept} known customers stay at their partner "
                    f"and in their train/held-out part ({result.moved} of them would have moved under the new options), "
                    f"{result.new} new customers were placed by the new options"
                )
        return result

    def with_row_ids(self, datasets: Sequence[PartnerDataset]) -> list[PartnerDataset]:
        """Partners' rows with a generated ``row_id``, for data that has no customer id column.

        The id is a keyed digest (this registry's key) of the row's values plus its copy
        number among identical rows: stable when the file is reordered or renamed, never
        the values themselves.
        """
        from collections import Counter

        from fedcustomer.data.schema import ROW_ID_FIELD

        self.root.mkdir(parents=True, exist_ok=True)
        key = self._key()
        copies: Counter = Counter()
        out = []
        for ds in datasets:
            parts = []
            for frame in (ds.train, ds.test):
                if ROW_ID_FIELD in frame.columns:
                    raise DataError(
                        f"the data already has a column {ROW_ID_FIELD!r}; name it as the id column"
                    )
                columns = sorted(str(c) for c in frame.columns)
                ids = []
                for values in frame[columns].itertuples(index=False, name=None):
                    digest = _token(key, "rowid:" + repr([None if pd.isna(v) else str(v) for v in values]))
                    copies[digest] += 1
                    ids.append(f"r{digest}-{copies[digest]}")
                parts.append(frame.assign(**{ROW_ID_FIELD: ids}))
            out.append(replace(ds, train=parts[0], test=parts[1]))
        return out

    # --- internals -------------------------------------------------------------
    def _key(self) -> bytes:
        if self.key_path.exists():
            key = self.key_path.read_bytes()
            if len(key) != _KEY_BYTES:
                raise ConfigError(f"{self.key_path} is damaged ({len(key)} bytes, expected {_KEY_BYTES})")
            return key
        key = secrets.token_bytes(_KEY_BYTES)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.path, timeout=60)
        try:
            conn.executescript(_SCHEMA)
            with transaction(conn):
                yield conn
        finally:
            conn.close()


def _token(key: bytes, customer_id: str) -> str:
    return hmac.new(key, customer_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _lookup(conn: sqlite3.Connection, tokens: list[str]) -> dict[str, dict[str, int]]:
    """token -> {partner: held-out flag} for every partner that first held the customer."""
    found: dict[str, dict[str, int]] = {}
    for i in range(0, len(tokens), 900):
        chunk = tokens[i : i + 900]
        marks = ",".join("?" * len(chunk))
        for token, partner, holdout in conn.execute(
            f"SELECT token, partner, holdout FROM placements WHERE token IN ({marks}) ORDER BY rowid", chunk
        ):
            found.setdefault(token, {})[partner] = int(holdout)
    return found


def _target(recorded: dict[str, int], partner: str, holdout: int, single: bool) -> tuple[str, int] | None:
    """Where a row goes: its recorded place, or None for a customer this partner never held before."""
    if partner in recorded:
        return partner, recorded[partner]
    if recorded and single:  # a re-split moved them: back to where they were first placed
        first = next(iter(recorded))
        return first, recorded[first]
    return None


def _regroup(pooled: pd.DataFrame, datasets: Sequence[PartnerDataset]) -> list[PartnerDataset]:
    out = []
    columns = [c for c in pooled.columns if c not in ("_partner", "_holdout", "_token")]
    for ds in datasets:
        mine = pooled[pooled["_partner"] == ds.name]
        train = mine[mine["_holdout"] == 0][columns].reset_index(drop=True)
        test = mine[mine["_holdout"] == 1][columns].reset_index(drop=True)
        out.append(
            replace(
                ds, train=train.astype(ds.train.dtypes.to_dict()), test=test.astype(ds.test.dtypes.to_dict())
            )
        )
    return out
