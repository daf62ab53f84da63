"""The governed customer store of one partner node: the only way to customer data.

Layout (one SQLite file, ``store.db`` in the partner home):

- one table per dataset, ``c_<dataset>``, keyed by the customer's keyed pseudonym
  (HMAC; raw ids are never stored in clear). Every value is AES-GCM ciphertext under a
  per-customer data key, with AAD binding dataset, field and pseudonym: core fields (the
  id itself, national ID, name, phone, card number...) one token each, decrypted only
  for a clear view; public and sensitive fields, the record timestamp and the row digest
  together in one ``sealed`` token. Clear columns: the pseudonym and the ingest number;
- ``data_keys``: each customer's data key wrapped by the keyring's KEK (envelope
  encryption), so key rotation re-wraps small keys, and erasure deletes one of them;
- ``quarantine``: rows that failed validation, the raw row encrypted like core fields,
  with a reason per field (reasons never quote values);
- ``merges``: which duplicates were merged (newest wins), by pseudonym, the two
  timestamps sealed under the customer's data key;
- ``ingests``: file name, sha256, row counts, time of every ingest;
- ``erasures``: pseudonyms of erased customers, so a later file cannot bring them back;
- ``keycheck``: a wrapped sentinel key and a sentinel pseudonym, so opening a store with
  another partner's keyring or pseudonym key fails at once, before anything is written;
- ``audit_reach``: how far the audit log is known to reach (newest entry and checkpoint),
  so a deleted or rolled-back log is caught (:mod:`fedcustomer.privacy.audit.reach`).

Every read goes through :meth:`PartnerStore.read`, which asks the access policy about
every field, masks or decrypts accordingly and writes one audit entry per call.
Admin actions (ingest, key rotation, erasure, approvals) are checked against the policy
and audit-logged, allowed or denied.

Erasure is crypto-shredding: the customer's wrapped data key, row, quarantined rows
and merge records are deleted with SQLite ``secure_delete`` on (freed pages are zeroed).
Copies outside the database file (backups, filesystem remnants of the rollback
journal) hold the customer's values only as ciphertext under their data key, and that
key only wrapped by a KEK; rotating the KEK and retiring the old version afterwards
makes those copies unreadable. What such a copy still shows in clear: the customer's
pseudonym (which whoever holds the pseudonym key can compute from the raw id, so it
shows that the customer was in the store), the ingest number of their row, merge
outcomes, and for quarantined rows the row number and the reasons (which never quote
values); the ``erasures`` table keeps the pseudonym by design.

SQL lives behind :class:`SqliteBackend` (connection, transactions, column types), so
another engine (e.g. PostgreSQL) can be added by implementing the same small interface.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.data.ingest import (
    ColumnMapper,
    IngestReport,
    PreparedChunk,
    check_columns,
    file_sha256,
    prepare_chunk,
    read_chunks,
    utc_now,
)
from fedcustomer.data.schema import FieldSpec, Schema
from fedcustomer.errors import (
    AccessDenied,
    ConfigError,
    DataError,
    FedCustomerError,
    IntegrityError,
    KeyMaterialError,
    SchemaError,
)
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.masking import default_rule_for, mask_series
from fedcustomer.privacy.access.policy import AccessPolicy, Actor, Approval, FieldRef
from fedcustomer.privacy.crypto.keyring import (
    FieldCipher,
    FileKeyRing,
    KeyRing,
    Pseudonymizer,
    WrappedKey,
    data_key_context,
    new_data_key,
    rewrap,
)

STORE_FORMAT = "fedcustomer.store/2"
_OLD_FORMATS = ("fedcustomer.store/1",)  # kept public and sensitive values in clear
APPROVALS_DB = "approvals.db"
QUARANTINE_FIELD = "__quarantined_row__"
ROW_FIELD = "__sealed_row__"  # AAD field name of a row's sealed non-core values, timestamp and digest
MERGE_FIELD = "__sealed_merge__"  # AAD field name of a merge record's sealed timestamps
_KEYCHECK_DATASET = "__store__"
_KEYCHECK_LABEL = "__keycheck__"
_PSEUDONYM_CHECK = "__fedcustomer_store_keycheck__"
_MASK_KEY_LABEL = "__fedcustomer_mask_key_v1__"
_TIER_RANK = {"public": 0, "sensitive": 1, "core": 2}
_IN_BATCH = 500
_MAX_AUDIT_PSEUDONYMS = 1000

_BASE_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keycheck (
    id INTEGER PRIMARY KEY CHECK (id = 1), kek_version INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, table_name TEXT NOT NULL UNIQUE, schema_yaml TEXT NOT NULL,
    registered_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS data_keys (
    dataset TEXT NOT NULL, pseudonym TEXT NOT NULL, kek_version INTEGER NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (dataset, pseudonym)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_keys_version ON data_keys (kek_version);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, ingest_id INTEGER NOT NULL,
    source_row INTEGER NOT NULL, pseudonym TEXT, key_label TEXT NOT NULL, row_digest TEXT NOT NULL,
    reasons TEXT NOT NULL, kek_version INTEGER NOT NULL, wrapped_key BLOB NOT NULL, payload BLOB NOT NULL,
    quarantined_at TEXT NOT NULL, UNIQUE (dataset, row_digest));
CREATE INDEX IF NOT EXISTS quarantine_pseudonym ON quarantine (pseudonym);
CREATE TABLE IF NOT EXISTS merges (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, ingest_id INTEGER NOT NULL,
    pseudonym TEXT NOT NULL, outcome TEXT NOT NULL, sealed BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS merges_pseudonym ON merges (pseudonym);
CREATE TABLE IF NOT EXISTS ingests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL, actor TEXT NOT NULL, rows_read INTEGER NOT NULL, inserted INTEGER NOT NULL,
    updated INTEGER NOT NULL, unchanged INTEGER NOT NULL, stale INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    invalid INTEGER NOT NULL, suppressed INTEGER NOT NULL, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    UNIQUE (dataset, sha256));
CREATE TABLE IF NOT EXISTS erasures (pseudonym TEXT PRIMARY KEY, erased_at TEXT NOT NULL) WITHOUT ROWID;
"""


# --- SQL backend --------------------------------------------------------------------------------


class SqliteBackend:
    """The store's only contact with SQL: a connection, transactions and column types.

    Statements use ``?`` placeholders and standard SQL; a PostgreSQL backend would map
    placeholders and the types in :meth:`column_type` (BLOB -> BYTEA) and keep the rest.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        mode = "rwc" if create else "rw"
        try:
            self._con = sqlite3.connect(
                f"file:{self.path}?mode={mode}",
                uri=True,
                isolation_level=None,
                timeout=30,
                check_same_thread=False,
            )
            # Zero freed pages so erased ciphertext and wrapped keys do not linger in the file.
            self._con.execute("PRAGMA secure_delete = ON")
            self._con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise ConfigError(f"store database {self.path} cannot be opened: {exc}") from None
        self._depth = 0

    @staticmethod
    def column_type(spec: FieldSpec) -> str:
        if spec.is_core:
            return "BLOB"
        return {"integer": "INTEGER", "float": "REAL", "boolean": "INTEGER"}.get(spec.type, "TEXT")

    @staticmethod
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit of work; nested calls join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._call(self._con.execute, "BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._con.execute("ROLLBACK")
            raise
        self._depth = 0
        self._call(self._con.execute, "COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._call(self._con.execute, sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._call(self._con.executemany, sql, rows)

    def executescript(self, sql: str) -> None:
        self._call(self._con.executescript, sql)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.execute(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else row[0]

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise ConfigError(
                    f"store database {self.path} is busy (locked by another process); retry"
                ) from None
            if isinstance(exc, (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
                raise
            raise IntegrityError(f"store database {self.path} is corrupt or was altered: {exc}") from None

    def close(self) -> None:
        self._con.close()


# --- the store --------------------------------------------------------------------------------


class PartnerStore:
    """A partner's governed customer store (see the module docstring)."""

    def __init__(
        self,
        home: PartnerHome,
        backend: SqliteBackend,
        keyring: KeyRing,
        pseudonymizer: Pseudonymizer,
        audit: Any,
        policy: AccessPolicy,
    ) -> None:
        """Use :meth:`init` or :meth:`open`."""
        self.home = home
        self.backend = backend
        self.keyring = keyring
        self.pseudonymizer = pseudonymizer
        self.audit = audit
        self.policy = policy
        self._approvals: ApprovalBook | None = None
        self._schemas: dict[str, Schema] = {}
        self._closed = False
        self._mask_key = bytes.fromhex(pseudonymizer.pseudonym(_MASK_KEY_LABEL))

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(cls, home: PartnerHome, name: str, *, actor: Actor | None = None) -> PartnerStore:
        """Create keys, audit log and an empty store.db in ``home`` (a new or existing partner home)."""
        home = home if isinstance(home, PartnerHome) else PartnerHome(home)
        if home.store_path.exists():
            raise ConfigError(
                f"{home.store_path} already exists: this partner home is initialised; use it as is"
            )
        if actor is not None:
            cls._load_policy(home).require(actor, "keys")
        keyring_file = home.keys_dir / "keyring.json"
        if keyring_file.exists():
            raise ConfigError(
                f"{home.keys_dir} already holds a keyring but there is no store.db; refusing to guess. Restore "
                f"store.db from backup, or move the keys directory away to start a new, empty store"
            )
        if not home.config_path.exists():
            PartnerHome.create(home.root, name)
        else:
            home.config()  # fail early on a broken partner.toml
            for sub in (home.keys_dir, home.audit_dir, home.state_dir):
                sub.mkdir(parents=True, exist_ok=True)
        keyring = FileKeyRing.create(home.keys_dir)
        pseudonymizer = Pseudonymizer.create(home.keys_dir)
        tmp = home.store_path.with_name(home.store_path.name + ".init")
        if tmp.exists():
            tmp.unlink()
        backend = SqliteBackend(tmp, create=True)
        try:
            backend.executescript(_BASE_TABLES)
            with backend.transaction():
                now = utc_now()
                for key, value in (("format", STORE_FORMAT), ("name", name), ("created_at", now)):
                    backend.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                backend.execute(
                    "INSERT INTO meta VALUES (?, ?)",
                    ("pseudonym_check", pseudonymizer.pseudonym(_PSEUDONYM_CHECK)),
                )
                wrapped = keyring.wrap(new_data_key(), data_key_context(_KEYCHECK_DATASET, _KEYCHECK_LABEL))
                backend.execute("INSERT INTO keycheck VALUES (1, ?, ?)", (wrapped.kek_version, wrapped.blob))
        finally:
            backend.close()
        os.chmod(tmp, 0o600)
        os.replace(tmp, home.store_path)
        store = cls.open(home)
        who = actor or Actor("system", "partner_admin")
        store._audit(who, "key_create", details={"kek_version": keyring.active_version(), "store": name})
        return store

    @classmethod
    def open(cls, home: PartnerHome) -> PartnerStore:
        """Open an initialised home; KeyMaterialError (nothing written) if its keys are missing or wrong."""
        home = home if isinstance(home, PartnerHome) else PartnerHome(home)
        if not home.store_path.exists():
            raise ConfigError(
                f"no store at {home.store_path}; create one with `fedcustomer init --home {home.root} --name NAME`"
            )
        keyring = FileKeyRing.open(home.keys_dir)
        pseudonymizer = Pseudonymizer.open(home.keys_dir)
        backend = SqliteBackend(home.store_path)
        try:
            cls._check_keys(backend, keyring, pseudonymizer)
            policy = cls._load_policy(home)
            audit = cls._open_audit(home, backend)
            store = cls(home, backend, keyring, pseudonymizer, audit, policy)
            store._note_policy()
        except BaseException:
            backend.close()
            raise
        return store

    @staticmethod
    def _open_audit(home: PartnerHome, backend: SqliteBackend) -> Any:
        """The home's audit log with its reach kept in this database; checked before any action."""
        from fedcustomer.privacy.audit.reach import SqlReach
        from fedcustomer.privacy.audit.writer import AuditLog

        reach = SqlReach(backend.execute, backend.transaction, source=home.store_path.name)
        audit = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir, reach=reach)
        reach.ensure(*audit.reach_now())
        audit.check_before_acting()
        return audit

    def _note_policy(self) -> None:
        """A policy_change entry when the policy in force differs from the one last seen."""
        from fedcustomer.data.policy_record import policy_change

        previous = self.backend.scalar("SELECT value FROM meta WHERE key = 'policy_lines'")
        stored, details = policy_change(json.loads(previous) if previous else None, self.policy)
        if previous is not None and details is None:
            return
        with self.backend.transaction():
            self.backend.execute("INSERT OR REPLACE INTO meta VALUES ('policy_lines', ?)", (stored,))
            if details is not None:
                self._audit(
                    Actor("system", "system"),
                    "policy_change",
                    reason="the access policy in force changed "
                    "since this store was last opened (the file's editor is not known to the node)",
                    details=details,
                )

    @staticmethod
    def _check_keys(backend: SqliteBackend, keyring: KeyRing, pseudonymizer: Pseudonymizer) -> None:
        try:
            fmt = backend.scalar("SELECT value FROM meta WHERE key = 'format'")
            check = backend.fetchone("SELECT kek_version, blob FROM keycheck WHERE id = 1")
            expected = backend.scalar("SELECT value FROM meta WHERE key = 'pseudonym_check'")
        except sqlite3.Error as exc:
            raise IntegrityError(f"{backend.path} is not a fedcustomer store: {exc}") from None
        if fmt in _OLD_FORMATS:
            raise ConfigError(
                f"{backend.path} is a {fmt} store, written by an older version that kept public and sensitive "
                f"values in clear (so erasure did not reach backups); export its data and ingest it into a new home"
            )
        if fmt != STORE_FORMAT or check is None or expected is None:
            raise IntegrityError(f"{backend.path} is not a {STORE_FORMAT} store (format {fmt!r})")
        try:
            keyring.unwrap(
                WrappedKey(int(check[0]), bytes(check[1])),
                data_key_context(_KEYCHECK_DATASET, _KEYCHECK_LABEL),
            )
        except KeyMaterialError as exc:
            raise KeyMaterialError(
                f"the keyring in {getattr(keyring, 'path', 'the keys directory')} does not belong to the store "
                f"{backend.path} (its KEK cannot unwrap the store's key check: {exc}); restore this partner's own "
                f"keys/keyring.json from backup"
            ) from None
        if pseudonymizer.pseudonym(_PSEUDONYM_CHECK) != expected:
            raise KeyMaterialError(
                f"the pseudonym key {pseudonymizer.path} does not belong to the store {backend.path}: customer "
                f"pseudonyms would not match; restore this partner's own keys/pseudonym.key from backup"
            )

    @staticmethod
    def _load_policy(home: PartnerHome) -> AccessPolicy:
        policy_file = None
        if home.config_path.exists():
            policy_file = home.config().policy_file
        if not policy_file:
            return AccessPolicy.default()
        path = Path(policy_file)
        return AccessPolicy.load(path if path.is_absolute() else home.root / path)

    def close(self) -> None:
        """Close the database and the audit log (which writes a final signed checkpoint); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.audit.close()
        finally:
            self.backend.close()

    def __enter__(self) -> PartnerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return str(self.backend.scalar("SELECT value FROM meta WHERE key = 'name'"))

    @property
    def approvals(self) -> ApprovalBook:
        if self._approvals is None:
            self._approvals = ApprovalBook(self.home.root / APPROVALS_DB, self.policy)
        return self._approvals

    # ---- audit helpers -----------------------------------------------------------------

    def _audit(self, actor: Actor, action: str, decision: str = "allowed", **fields: Any) -> None:
        self.audit.append(actor=actor.name, role=actor.role, action=action, decision=decision, **fields)

    def _require(self, actor: Actor, action: str, audit_action: str, **fields: Any) -> None:
        """Policy check for an admin action; a refusal is audit-logged before it is raised.

        The audit log is checked first: an action that could not be logged is not taken.
        """
        self.audit.check_before_acting()
        try:
            self.policy.require(actor, action)
        except AccessDenied as exc:
            self._audit(actor, audit_action, "denied", reason=str(exc), **fields)
            raise
        except FedCustomerError as exc:  # e.g. an unknown role
            self._audit(actor, audit_action, "denied", reason=str(exc), **fields)
            raise

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """A store transaction that wraps new data keys under the KEK version active *now*.

        The keyring is re-read after the database write lock is taken: a retirement runs
        its usage check and its key destruction under that same lock (:meth:`retire_key`),
        so a handle opened before another process rotated and retired can never wrap a
        key under a version that is (or is about to be) destroyed.
        """
        with self.backend.transaction():
            refresh = getattr(self.keyring, "refresh", None)
            if refresh is not None:
                refresh()
            yield

    # ---- schemas -----------------------------------------------------------------------

    def datasets(self) -> list[str]:
        return [r[0] for r in self.backend.fetchall("SELECT name FROM datasets ORDER BY name")]

    def schema(self, dataset: str) -> Schema:
        cached = self._schemas.get(dataset)
        if cached is not None:
            return cached
        text = self.backend.scalar("SELECT schema_yaml FROM datasets WHERE name = ?", (dataset,))
        if text is None:
            known = ", ".join(self.datasets()) or "none yet"
            raise ConfigError(
                f"no dataset {dataset!r} in {self.home.store_path} (datasets: {known}); ingest it first"
            )
        schema = Schema.from_yaml(text, source=f"{self.home.store_path}:{dataset}")
        self._schemas[dataset] = schema
        return schema

    def register_schema(self, schema: Schema) -> None:
        """Create the dataset's table, or accept a compatible update (same fields, types, tiers, roles)."""
        with self.backend.transaction():
            self._register(schema)

    def _register(self, schema: Schema) -> None:
        row = self.backend.fetchone("SELECT schema_yaml FROM datasets WHERE name = ?", (schema.dataset,))
        now = utc_now()
        if row is not None:
            stored = Schema.from_yaml(row[0], source=f"stored schema {schema.dataset!r}")
            if stored.structure() != schema.structure():
                raise SchemaError(
                    f"{schema.source or 'schema'}: dataset {schema.dataset!r} is already stored with different "
                    f"fields/types/tiers/roles ({_describe_change(stored, schema)}); a structural change needs a new "
                    f"dataset name"
                )
            self.backend.execute(
                "UPDATE datasets SET schema_yaml = ?, updated_at = ? WHERE name = ?",
                (schema.to_yaml(), now, schema.dataset),
            )
            self._schemas.pop(schema.dataset, None)
            return
        q = self.backend.quote
        # Every value is sealed under the customer's data key: core fields one token each
        # (decrypted only for a clear view), all other fields with the row's timestamp and
        # digest in one token. Destroying the data key (erasure) leaves nothing readable.
        core = "".join(f", {q(f.name)} BLOB" for f in schema.fields if f.is_core)
        table = _table(schema.dataset)
        self.backend.execute(
            f"CREATE TABLE {q(table)} (pseudonym TEXT PRIMARY KEY, ingest_id INTEGER NOT NULL, "
            f"sealed BLOB NOT NULL{core}) WITHOUT ROWID"
        )
        self.backend.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?)", (schema.dataset, table, schema.to_yaml(), now, now)
        )

    def count(self, dataset: str) -> int:
        self.schema(dataset)
        return int(self.backend.scalar(f"SELECT COUNT(*) FROM {self.backend.quote(_table(dataset))}"))

    def ingest_history(self, dataset: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM ingests" + (" WHERE dataset = ?" if dataset else "") + " ORDER BY id"
        cur = self.backend.execute(sql, (dataset,) if dataset else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def quarantine_summary(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Quarantined rows without their (encrypted) content: row number, pseudonym, reasons."""
        sql = "SELECT id, dataset, ingest_id, source_row, pseudonym, reasons, quarantined_at FROM quarantine"
        params: tuple = ()
        if dataset:
            sql += " WHERE dataset = ?"
            params = (dataset,)
        rows = self.backend.fetchall(sql + " ORDER BY id", params)
        return [
            {
                "id": r[0],
                "dataset": r[1],
                "ingest_id": r[2],
                "row": r[3],
                "pseudonym": r[4],
                "reasons": json.loads(r[5]),
                "quarantined_at": r[6],
            }
            for r in rows
        ]

    def merges(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Merge records; their timestamps are sealed under the customer's data key and opened here."""
        sql = (
            "SELECT m.dataset, m.ingest_id, m.pseudonym, m.outcome, m.sealed, k.kek_version, k.blob FROM merges m "
            "LEFT JOIN data_keys k ON k.dataset = m.dataset AND k.pseudonym = m.pseudonym"
        )
        params: tuple = ()
        if dataset:
            sql += " WHERE m.dataset = ?"
            params = (dataset,)
        out: list[dict[str, Any]] = []
        for ds, ingest_id, p, outcome, sealed, version, blob in self.backend.fetchall(
            sql + " ORDER BY m.id", params
        ):
            if blob is None:
                raise IntegrityError(
                    f"merge record of customer {p} in dataset {ds!r} has no data key; the store was altered"
                )
            key = self.keyring.unwrap(WrappedKey(int(version), bytes(blob)), data_key_context(ds, p))
            kept, dropped = json.loads(FieldCipher(ds).decrypt(key, MERGE_FIELD, p, bytes(sealed)))
            out.append(
                {
                    "dataset": ds,
                    "ingest_id": ingest_id,
                    "pseudonym": p,
                    "outcome": outcome,
                    "kept_timestamp": kept,
                    "dropped_timestamp": dropped,
                }
            )
        return out

    # ---- ingest -------------------------------------------------------------------------

    def ingest(
        self, actor: Actor, schema: Schema, path: Path, *, chunk_rows: int = 50_000, id_from_row: bool = False
    ) -> IngestReport:
        """Validate, de-duplicate, encrypt and store a CSV/Parquet file in ONE transaction.

        Re-ingesting a file already ingested (same sha256) adds nothing; rows already
        stored with the same content are counted ``unchanged``. Invalid rows go to the
        encrypted quarantine with reasons. If anything fails, the store is left as it was.
        """
        path = Path(path)
        self._require(actor, "ingest", "ingest", dataset=schema.dataset, details={"file": path.name})
        try:
            return self._ingest(actor, schema, path, chunk_rows, id_from_row)
        except Exception as exc:  # a failed ingest is audited too; the store is unchanged
            reason = str(exc) if isinstance(exc, FedCustomerError) else f"unexpected {type(exc).__name__}"
            try:
                self._audit(
                    actor,
                    "ingest",
                    "denied",
                    dataset=schema.dataset,
                    reason=f"ingest failed: {reason}",
                    details={"file": path.name, "outcome": "failed"},
                )
            except FedCustomerError:
                pass  # the log refused the entry; the next action's log check reports why
            raise

    def _ingest(
        self, actor: Actor, schema: Schema, path: Path, chunk_rows: int, id_from_row: bool
    ) -> IngestReport:
        sha = file_sha256(path)
        report = IngestReport(
            dataset=schema.dataset,
            file=path.name,
            sha256=sha,
            field_tiers={f.name: f.tier for f in schema.fields},
        )
        prior = self.backend.fetchone(
            "SELECT id FROM ingests WHERE dataset = ? AND sha256 = ?", (schema.dataset, sha)
        )
        if prior is not None:
            report.skipped_file = True
            report.ingest_id = int(prior[0])
            report.finished_at = utc_now()
            self._audit(
                actor,
                "ingest",
                dataset=schema.dataset,
                row_count=0,
                details={"file": path.name, "sha256": sha, "skipped": "already ingested"},
            )
            return report
        with self._write_transaction():
            self._register(schema)
            ingest_id = int(self.backend.scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM ingests"))
            report.ingest_id = ingest_id
            cipher = FieldCipher(schema.dataset)
            first = True
            columns = ColumnMapper(schema, str(path), self.pseudonymizer, id_from_row)
            for chunk in read_chunks(path, chunk_rows):
                chunk = columns(chunk)
                if first:
                    report.ignored_columns = check_columns(schema, chunk, str(path))
                    first = False
                prepared, stats = prepare_chunk(schema, chunk, self.pseudonymizer)
                report.add(stats)
                self._write_chunk(schema, cipher, prepared, ingest_id, report)
            if first:
                raise SchemaError(
                    f"{path}: the file has no header row; expected columns {', '.join(schema.names)}"
                )
            report.finished_at = utc_now()
            self.backend.execute(
                "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ingest_id,
                    schema.dataset,
                    path.name,
                    sha,
                    actor.name,
                    report.read,
                    report.inserted,
                    report.updated,
                    report.unchanged,
                    report.stale,
                    report.duplicates,
                    report.invalid,
                    report.suppressed,
                    report.started_at,
                    report.finished_at,
                ),
            )
        self._audit(
            actor,
            "ingest",
            dataset=schema.dataset,
            fields=schema.names,
            row_count=report.read,
            details={
                "file": path.name,
                "sha256": sha,
                "ingest_id": ingest_id,
                "rows": report.to_dict()["rows"],
            },
        )
        return report

    def _write_chunk(
        self, schema: Schema, cipher: FieldCipher, chunk: PreparedChunk, ingest_id: int, report: IngestReport
    ) -> None:
        """Upsert one prepared chunk: newest timestamp wins against what is stored.

        Every value, the row's timestamp and digest included, is sealed under the
        customer's data key; stored rows are opened with their own key to compare.
        """
        dataset = schema.dataset
        q = self.backend.quote
        table = q(_table(dataset))
        keyring = self.keyring
        now = utc_now()
        self._quarantine(schema, cipher, chunk, ingest_id, now)
        if not len(chunk):
            self._write_merges(cipher, dataset, ingest_id, chunk.duplicates, {}, set())
            return
        existing: dict[str, tuple[int, str, str]] = {}
        keys: dict[str, bytes] = {}
        erased: set[str] = set()
        for batch in _batches(chunk.pseudonyms):
            marks = ",".join("?" * len(batch))
            for p, ing, sealed, version, blob in self.backend.fetchall(
                f"SELECT t.pseudonym, t.ingest_id, t.sealed, k.kek_version, k.blob FROM {table} t "
                f"LEFT JOIN data_keys k ON k.dataset = ? AND k.pseudonym = t.pseudonym "
                f"WHERE t.pseudonym IN ({marks})",
                [dataset, *batch],
            ):
                keys[p] = self._unwrap_row_key(dataset, p, version, blob)
                row = _open_row(cipher, keys[p], p, sealed)
                existing[p] = (ing, row["ts"], row["digest"])
            erased.update(
                r[0]
                for r in self.backend.fetchall(
                    f"SELECT pseudonym FROM erasures WHERE pseudonym IN ({marks})", batch
                )
            )
        has_stamp = schema.timestamp_field is not None
        core_names = [f.name for f in schema.fields if f.is_core]
        plain_names = [f.name for f in schema.fields if not f.is_core]
        inserts: list[tuple] = []
        updates: list[tuple] = []
        new_keys: list[tuple] = []
        merges: list[tuple[str, str, str, str]] = []  # (pseudonym, outcome, kept ts, dropped ts)
        for i, p in enumerate(chunk.pseudonyms):
            if p in erased:
                report.suppressed += 1
                continue
            ts, digest = chunk.timestamps[i], chunk.digests[i]
            old = existing.get(p)
            if old is not None:
                old_ingest, old_ts, old_digest = old
                same_file = old_ingest == ingest_id
                if digest == old_digest:
                    if same_file:
                        report.duplicates += 1
                        merges.append((p, "duplicate_in_file", old_ts, ts))
                    else:
                        report.unchanged += 1
                    continue
                newer = (ts, digest) > (old_ts, old_digest) if has_stamp else True
                if not newer:
                    if same_file:
                        report.duplicates += 1
                    else:
                        report.stale += 1
                    merges.append((p, "duplicate_in_file" if same_file else "kept_stored", old_ts, ts))
                    continue
            values = {n: chunk.core[n][i] for n in core_names}
            present = {n: v for n, v in values.items() if v is not None}
            if old is None:
                data_key = keys[p] = new_data_key()
                wrapped = keyring.wrap(data_key, data_key_context(dataset, p))
                new_keys.append((dataset, p, wrapped.kek_version, wrapped.blob))
            else:
                data_key = keys[p]
            tokens = cipher.encrypt_record(data_key, p, present)
            plain = {n: chunk.plain[n][i] for n in plain_names}
            row = [ingest_id, _seal_row(cipher, data_key, p, ts, digest, plain)]
            row += [tokens.get(n) for n in core_names]
            if old is None:
                inserts.append((p, *row))
                report.inserted += 1
            else:
                updates.append((*row, p))
                if old[0] == ingest_id:
                    report.duplicates += 1
                    merges.append((p, "duplicate_in_file", ts, old[1]))
                else:
                    report.updated += 1
                    merges.append((p, "replaced_stored", ts, old[1]))
            existing[p] = (ingest_id, ts, digest)
        cols = ["ingest_id", "sealed", *core_names]
        self.backend.executemany("INSERT INTO data_keys VALUES (?, ?, ?, ?)", new_keys)
        self.backend.executemany(
            f"INSERT INTO {table} (pseudonym, {', '.join(q(c) for c in cols)}) VALUES ({','.join('?' * (len(cols) + 1))})",
            inserts,
        )
        self.backend.executemany(
            f"UPDATE {table} SET {', '.join(q(c) + ' = ?' for c in cols)} WHERE pseudonym = ?", updates
        )
        in_file = [(p, "duplicate_in_file", kept, dropped) for p, kept, dropped in chunk.duplicates]
        self._write_merges(cipher, dataset, ingest_id, in_file + merges, keys, erased)

    def _write_merges(
        self,
        cipher: FieldCipher,
        dataset: str,
        ingest_id: int,
        merges: Sequence[tuple[str, str, str, str]],
        keys: dict[str, bytes],
        erased: set[str],
    ) -> None:
        """Record merges with their timestamps sealed under the customer's data key.

        An erased customer's duplicates are not recorded at all: nothing about them is
        written again after the erasure.
        """
        rows = []
        for p, outcome, kept, dropped in merges:
            if p in erased:
                continue
            key = keys.get(p)
            if key is None:
                key = keys[p] = self._data_key(dataset, p)
            sealed = cipher.encrypt(key, MERGE_FIELD, p, json.dumps([kept, dropped]))
            rows.append((dataset, ingest_id, p, outcome, sealed))
        self.backend.executemany("INSERT INTO merges VALUES (NULL, ?, ?, ?, ?, ?)", rows)

    def _unwrap_row_key(self, dataset: str, pseudonym: str, version: Any, blob: Any) -> bytes:
        if blob is None:
            raise IntegrityError(
                f"customer {pseudonym} of dataset {dataset!r} has no data key; the store was altered"
            )
        return self.keyring.unwrap(
            WrappedKey(int(version), bytes(blob)), data_key_context(dataset, pseudonym)
        )

    def _quarantine(
        self, schema: Schema, cipher: FieldCipher, chunk: PreparedChunk, ingest_id: int, now: str
    ) -> None:
        """Store invalid rows encrypted (they may hold core values) under their own data key."""
        rows: list[tuple] = []
        for bad in chunk.invalid:
            payload_text = json.dumps(bad.raw, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            digest = self.pseudonymizer.pseudonym("quarantine:" + payload_text.encode("utf-8").hex())
            pseudonym = self.pseudonymizer.pseudonym(bad.id_value) if bad.id_value else None
            label = pseudonym or f"row:{digest}"
            data_key = new_data_key()
            wrapped = self.keyring.wrap(data_key, data_key_context(schema.dataset, label))
            payload = cipher.encrypt(data_key, QUARANTINE_FIELD, label, payload_text)
            rows.append(
                (
                    schema.dataset,
                    ingest_id,
                    bad.row,
                    pseudonym,
                    label,
                    digest,
                    json.dumps(bad.reasons),
                    wrapped.kek_version,
                    wrapped.blob,
                    payload,
                    now,
                )
            )
        self.backend.executemany(
            "INSERT OR IGNORE INTO quarantine (dataset, ingest_id, source_row, pseudonym, key_label, row_digest, "
            "reasons, kek_version, wrapped_key, payload, quarantined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _data_key(self, dataset: str, pseudonym: str) -> bytes:
        row = self.backend.fetchone(
            "SELECT kek_version, blob FROM data_keys WHERE dataset = ? AND pseudonym = ?",
            (dataset, pseudonym),
        )
        if row is None:
            raise IntegrityError(
                f"customer {pseudonym} of dataset {dataset!r} has stored fields but no data key; the store was altered"
            )
        return self.keyring.unwrap(
            WrappedKey(int(row[0]), bytes(row[1])), data_key_context(dataset, pseudonym)
        )

    # ---- reading ----------------------------------------------------------------------

    def read(
        self,
        actor: Actor,
        purpose: str,
        fields: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        dataset: str | None = None,
        approval_id: str | None = None,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        """THE way to customer data: policy per field, masking, decryption, one audit entry.

        Returns a frame indexed by pseudonym. Explicitly requested fields that the policy
        denies raise AccessDenied (logged); with ``fields=None`` the frame holds just the
        fields the actor may see. Core fields are decrypted only when the view is
        ``clear`` (for a risk officer: with an active two-person approval). ``where``
        filters on public fields the actor may see, ``{field: value}`` or
        ``{field: [values]}``. Integer fields come back int64 (float64 with NaN if any
        value is missing), floats float64, booleans bool (float64 with NaN if missing),
        dates and date-times datetime64 (UTC), text as object.
        """
        audit_base: dict[str, Any] = {"purpose": purpose}
        try:
            ds = self._resolve_dataset(dataset)
            audit_base["dataset"] = ds
            schema = self.schema(ds)
        except FedCustomerError as exc:
            self._audit(actor, "read", "denied", reason=str(exc), fields=list(fields or ()), **audit_base)
            raise
        requested = list(dict.fromkeys(fields)) if fields is not None else schema.names
        unknown = [n for n in requested if n not in schema.names] + [
            n for n in (where or {}) if n not in schema.names
        ]
        if unknown:
            message = f"dataset {ds!r} has no field(s) {', '.join(sorted(set(unknown)))}"
            self._audit(actor, "read", "denied", reason=message, fields=requested, **audit_base)
            raise SchemaError(message + f"; known fields: {', '.join(schema.names)}")
        try:
            if not self.policy.may(actor, "read"):
                raise AccessDenied(
                    f"actor '{actor.name}' with role '{actor.role}' may not read customer data (no 'read' action)"
                )
            decisions, approvals = self._decide(actor, purpose, schema, requested, approval_id, now)
        except FedCustomerError as exc:
            self._audit(
                actor,
                "read",
                "denied",
                reason=str(exc),
                fields=requested,
                tier=_top_tier(schema, requested),
                **audit_base,
            )
            raise
        denied = {n: d for n, d in decisions.items() if d.view == "denied"}
        if fields is not None and denied:
            reason = "; ".join(f"{n}: {d.reason}" for n, d in denied.items())
            self._audit(
                actor,
                "read",
                "denied",
                reason=reason,
                fields=requested,
                tier=_top_tier(schema, list(denied)),
                details={"denied": sorted(denied)},
                **audit_base,
            )
            raise AccessDenied(
                f"actor '{actor.name}' ({actor.role}) may not read {', '.join(denied)} of dataset {ds!r} for "
                f"purpose '{purpose}': {reason}"
            )
        visible = [n for n in requested if n not in denied]
        where = dict(where or {})
        bad_where = [
            k
            for k in where
            if schema.field(k).tier != "public"
            or (decisions[k].view if k in decisions else self._view_of(actor, purpose, schema.field(k), now))
            == "denied"
        ]
        if not visible or bad_where:
            reason = (
                f"filters allowed on public fields the actor may see only (not {', '.join(bad_where)})"
                if bad_where
                else f"role '{actor.role}' may see no field of dataset {ds!r} for purpose '{purpose}'"
            )
            self._audit(
                actor,
                "read",
                "denied",
                reason=reason,
                fields=requested,
                tier=_top_tier(schema, requested),
                **audit_base,
            )
            raise AccessDenied(f"actor '{actor.name}': {reason}")
        used_approvals = sorted(
            {a.approval_id for n, a in approvals.items() if a is not None and decisions[n].view == "clear"}
        )
        try:
            frame = self._fetch(schema, visible, {n: decisions[n].view for n in visible}, where)
        except FedCustomerError as exc:
            self._audit(
                actor,
                "read",
                "denied",
                reason=f"read failed: {exc}",
                fields=visible,
                tier=_top_tier(schema, visible),
                **audit_base,
            )
            raise
        decrypted = [n for n in visible if schema.field(n).is_core and decisions[n].view == "clear"]
        details: dict[str, Any] = {"views": {n: decisions[n].view for n in visible}}
        if where:
            details["where"] = {k: (list(v) if _is_seq(v) else v) for k, v in where.items()}
        if denied:
            details["omitted"] = sorted(denied)
        pseudonyms: list[str] = []
        if decrypted:
            pseudonyms = frame.index.tolist()[:_MAX_AUDIT_PSEUDONYMS]
            if len(frame) > _MAX_AUDIT_PSEUDONYMS:
                details["pseudonyms_truncated"] = len(frame)
        self._audit(
            actor,
            "decrypt" if decrypted else "read",
            fields=visible,
            tier=_top_tier(schema, visible),
            approvals=used_approvals,
            row_count=len(frame),
            pseudonyms=pseudonyms,
            details=details,
            **audit_base,
        )
        return frame

    def _resolve_dataset(self, dataset: str | None) -> str:
        if dataset is not None:
            self.schema(dataset)
            return dataset
        names = self.datasets()
        if len(names) == 1:
            return names[0]
        if not names:
            raise ConfigError(f"the store {self.home.store_path} holds no dataset yet; ingest one first")
        raise ConfigError(
            f"the store holds several datasets ({', '.join(names)}); say which one (dataset=...)"
        )

    def _view_of(self, actor: Actor, purpose: str, spec: FieldSpec, now: datetime | None) -> str:
        return self.policy.decide(actor, purpose, FieldRef(spec.name, spec.tier, spec.role), now=now).view

    def _decide(
        self,
        actor: Actor,
        purpose: str,
        schema: Schema,
        names: Sequence[str],
        approval_id: str | None,
        now: datetime | None,
    ) -> tuple[dict[str, Any], dict[str, Approval | None]]:
        """One policy decision per field; core fields are checked against active approvals."""
        decisions: dict[str, Any] = {}
        approvals: dict[str, Approval | None] = {}
        for name in names:
            spec = schema.field(name)
            ref = FieldRef(spec.name, spec.tier, spec.role)
            approval = None
            if spec.is_core:
                approval = self.approvals.active_for(actor, schema.dataset, [name], purpose, now=now)
                if approval is not None and approval_id is not None and approval.approval_id != approval_id:
                    approval = None
            decisions[name] = self.policy.decide(actor, purpose, ref, approval=approval, now=now)
            approvals[name] = approval
        return decisions, approvals

    def _fetch(
        self, schema: Schema, names: list[str], views: dict[str, str], where: Mapping[str, Any]
    ) -> pd.DataFrame:
        """Open each customer's sealed row with their data key; filter; decrypt core fields asked for."""
        q = self.backend.quote
        dataset = schema.dataset
        core = [n for n in names if schema.field(n).is_core]
        plain = [n for n in names if not schema.field(n).is_core]
        sql = (
            f"SELECT t.pseudonym, t.sealed, k.kek_version, k.blob{''.join(f', t.{q(n)}' for n in core)} "
            f"FROM {q(_table(dataset))} t LEFT JOIN data_keys k ON k.dataset = ? AND k.pseudonym = t.pseudonym "
            f"ORDER BY t.pseudonym"
        )
        wanted = {
            key: {_where_value(schema.field(key), v) for v in (list(value) if _is_seq(value) else [value])}
            for key, value in where.items()
        }
        cipher = FieldCipher(dataset)
        index: list[str] = []
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for row in self.backend.fetchall(sql, [dataset]):
            p, sealed, version, blob = row[:4]
            key = self._unwrap_row_key(dataset, p, version, blob)
            values = _open_row(cipher, key, p, sealed)["values"] if plain or wanted else {}
            if any(values.get(k) not in allowed for k, allowed in wanted.items()):
                continue
            index.append(p)
            for n in plain:
                columns[n].append(values.get(n))
            tokens = {n: bytes(t) for n, t in zip(core, row[4:]) if t is not None}
            clear = cipher.decrypt_record(key, p, tokens) if tokens else {}
            for n in core:
                columns[n].append(clear.get(n))
        idx = pd.Index(index, name="pseudonym", dtype=object)
        data: dict[str, Any] = {}
        for name in names:
            spec = schema.field(name)
            series = _to_series(spec, columns[name], idx)
            if views[name] == "masked":
                series = mask_series(
                    series.rename(name), spec.masking or default_rule_for(spec.type), key=self._mask_key
                )
                series.index = idx
            data[name] = series
        return pd.DataFrame(data, index=idx)

    # ---- erasure ----------------------------------------------------------------------

    def erase(self, actor: Actor, customer_id: str) -> dict[str, Any]:
        """Crypto-shred one customer in every dataset: data keys, rows, quarantine and merge records."""
        pseudonym = self.pseudonymizer.pseudonym(customer_id)
        self._require(actor, "erase", "erase", pseudonyms=[pseudonym])
        result: dict[str, Any] = {"pseudonym": pseudonym, "datasets": {}}
        with self.backend.transaction():
            for ds in self.datasets():
                n = self.backend.execute(
                    f"DELETE FROM {self.backend.quote(_table(ds))} WHERE pseudonym = ?", (pseudonym,)
                ).rowcount
                result["datasets"][ds] = n
            result["data_keys"] = self.backend.execute(
                "DELETE FROM data_keys WHERE pseudonym = ?", (pseudonym,)
            ).rowcount
            result["quarantine"] = self.backend.execute(
                "DELETE FROM quarantine WHERE pseudonym = ?", (pseudonym,)
            ).rowcount
            result["merges"] = self.backend.execute(
                "DELETE FROM merges WHERE pseudonym = ?", (pseudonym,)
            ).rowcount
            self.backend.execute("INSERT OR REPLACE INTO erasures VALUES (?, ?)", (pseudonym, utc_now()))
        result["found"] = bool(
            result["data_keys"] or result["quarantine"] or any(result["datasets"].values())
        )
        from fedcustomer.psi.state import forget_customer  # PSI files list pseudonyms too

        result["psi_state"] = forget_customer(self.home, pseudonym)
        self._audit(
            actor,
            "erase",
            pseudonyms=[pseudonym],
            row_count=sum(result["datasets"].values()),
            details={k: v for k, v in result.items() if k != "pseudonym"},
        )
        return result

    # ---- keys -------------------------------------------------------------------------

    def _wrapped_keys(self) -> Iterator[tuple[str, tuple, int, bytes, bytes]]:
        """(table, row key, kek version, blob, context) of every wrapped key in the store."""
        for ds, p, v, blob in self.backend.fetchall(
            "SELECT dataset, pseudonym, kek_version, blob FROM data_keys"
        ):
            yield "data_keys", (ds, p), v, bytes(blob), data_key_context(ds, p)
        for rid, ds, label, v, blob in self.backend.fetchall(
            "SELECT id, dataset, key_label, kek_version, wrapped_key FROM quarantine"
        ):
            yield "quarantine", (rid,), v, bytes(blob), data_key_context(ds, label)
        for v, blob in self.backend.fetchall("SELECT kek_version, blob FROM keycheck"):
            yield "keycheck", (1,), v, bytes(blob), data_key_context(_KEYCHECK_DATASET, _KEYCHECK_LABEL)

    def rotate_keys(self, actor: Actor) -> dict[str, Any]:
        """Add a new KEK version and re-wrap every data key under it, in one transaction.

        If re-wrapping fails the database is unchanged and the previous KEK versions are
        still available, so every key still unwraps; run the rotation again.
        """
        self._require(actor, "keys", "key_rotate")
        rotate = getattr(self.keyring, "rotate", None)
        if rotate is None:
            raise ConfigError("this keyring cannot rotate from here; rotate the key in the KMS, then rewrap")
        created = int(rotate())
        self._audit(
            actor, "key_create", details={"kek_version": created, "for": "rotation"}
        )  # even if killed next
        counts = {"data_keys": 0, "quarantine": 0, "keycheck": 0}
        with self._write_transaction():
            new_version = int(self.keyring.active_version())  # a concurrent rotation may have gone further
            for table, key, version, blob, context in list(self._wrapped_keys()):
                if version == new_version:
                    continue
                wrapped = rewrap(self.keyring, WrappedKey(version, blob), context)
                if table == "data_keys":
                    self.backend.execute(
                        "UPDATE data_keys SET kek_version = ?, blob = ? WHERE dataset = ? AND pseudonym = ?",
                        (wrapped.kek_version, wrapped.blob, *key),
                    )
                elif table == "quarantine":
                    self.backend.execute(
                        "UPDATE quarantine SET kek_version = ?, wrapped_key = ? WHERE id = ?",
                        (wrapped.kek_version, wrapped.blob, *key),
                    )
                else:
                    self.backend.execute(
                        "UPDATE keycheck SET kek_version = ?, blob = ? WHERE id = 1",
                        (wrapped.kek_version, wrapped.blob),
                    )
                counts[table] += 1
        result = {"active_version": new_version, "rewrapped": sum(counts.values()), "by_table": counts}
        self._audit(actor, "key_rotate", details=result)
        return result

    def key_usage(self) -> dict[int, int]:
        """How many wrapped keys in the store use each KEK version."""
        usage: dict[int, int] = {}
        for sql in (
            "SELECT kek_version, COUNT(*) FROM data_keys GROUP BY kek_version",
            "SELECT kek_version, COUNT(*) FROM quarantine GROUP BY kek_version",
            "SELECT kek_version, COUNT(*) FROM keycheck GROUP BY kek_version",
        ):
            for version, n in self.backend.fetchall(sql):
                usage[int(version)] = usage.get(int(version), 0) + int(n)
        return usage

    def key_versions(self, actor: Actor | None = None) -> list[dict[str, Any]]:
        """KEK versions with status and how many wrapped keys use each (actor needs 'keys' if given)."""
        if actor is not None:
            self._require(actor, "keys", "key_list")
        usage = self.key_usage()
        return [
            {
                "version": k.version,
                "created_at": k.created_at,
                "status": k.status,
                "wrapped_keys": usage.get(k.version, 0),
            }
            for k in self.keyring.versions()
        ]

    def retire_key(self, actor: Actor, version: int) -> None:
        """Destroy a KEK version; refused while any wrapped key in the store still uses it."""
        self._require(actor, "keys", "key_retire", details={"kek_version": version})
        retire = getattr(self.keyring, "retire", None)
        if retire is None:
            raise ConfigError(
                "this keyring cannot retire versions from here; retire the key version in the KMS"
            )
        try:
            # Check and destroy under the store's write lock: writers wrap only inside a write
            # transaction after re-reading the keyring, so none can add a key under this
            # version between the check and the destruction, in this process or another.
            with self.backend.transaction():
                in_use = self.key_usage().get(int(version), 0)
                if in_use:
                    raise KeyMaterialError(
                        f"KEK version {version} still wraps {in_use} data key(s) in {self.home.store_path}; "
                        f"run `fedcustomer keys rotate` first, then retire it"
                    )
                retire(int(version))
        except FedCustomerError as exc:
            self._audit(actor, "key_retire", "denied", reason=str(exc), details={"kek_version": version})
            raise
        self._audit(actor, "key_retire", details={"kek_version": version})

    # ---- approvals --------------------------------------------------------------------

    def request_approval(
        self,
        actor: Actor,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        ttl: timedelta = timedelta(hours=8),
        *,
        now: datetime | None = None,
    ) -> str:
        """Ask for clear access to core fields; two distinct approvers must sign it."""
        try:
            schema = self.schema(dataset)
            for name in fields:
                schema.field(name)
            request_id = self.approvals.request(actor, dataset, list(fields), purpose, ttl, now=now)
        except FedCustomerError as exc:
            self._audit(
                actor,
                "approval_request",
                "denied",
                dataset=dataset,
                fields=list(fields),
                purpose=purpose,
                reason=str(exc),
            )
            raise
        self._audit(
            actor,
            "approval_request",
            dataset=dataset,
            fields=list(fields),
            purpose=purpose,
            approvals=[request_id],
            details={"ttl_seconds": int(ttl.total_seconds())},
        )
        return request_id

    def approve(self, actor: Actor, request_id: str, *, now: datetime | None = None) -> Approval | None:
        """Sign a request; returns the Approval once the second distinct approver signed."""
        try:
            approval = self.approvals.approve(request_id, actor, now=now)
        except FedCustomerError as exc:
            self._audit(actor, "approve", "denied", approvals=[request_id], reason=str(exc))
            raise
        details = {"complete": approval is not None}
        if approval is not None:
            self._audit(
                actor,
                "approve",
                dataset=approval.dataset,
                fields=list(approval.fields),
                purpose=approval.purpose,
                approvals=[request_id],
                details={**details, "approvers": list(approval.approvers), "expires_at": approval.expires_at},
            )
        else:
            self._audit(actor, "approve", approvals=[request_id], details=details)
        return approval

    def pending_approvals(self, actor: Actor | None = None) -> list[dict]:
        """Open requests still short of approvers (actor needs 'approve' if given)."""
        if actor is not None:
            self._require(actor, "approve", "approval_list")
        return self.approvals.pending()


# --- helpers ---------------------------------------------------------------------------------


def dataset_schema(home: PartnerHome, dataset: str) -> Schema:
    """The schema of ``dataset`` in the home's store; DataError saying what is missing otherwise."""
    if not home.store_path.exists():
        raise DataError(
            f"partner home {home.root} has no store; create it with `fedcustomer init` and ingest the "
            "partner's data with `fedcustomer ingest`"
        )
    with PartnerStore.open(home) as store:
        if dataset not in store.datasets():
            raise DataError(
                f"partner {store.name!r} holds no dataset {dataset!r} "
                f"(it has: {', '.join(store.datasets()) or 'none'})"
            )
        return store.schema(dataset)


def _table(dataset: str) -> str:
    return f"c_{dataset}"


def _batches(items: Sequence[str], size: int = _IN_BATCH) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _seal_row(
    cipher: FieldCipher, data_key: bytes, pseudonym: str, ts: str, digest: str, values: Mapping[str, Any]
) -> bytes:
    """One token holding a row's non-core values, timestamp and digest, under the customer's data key."""
    doc = {"ts": ts, "digest": digest, "values": dict(values)}
    return cipher.encrypt(data_key, ROW_FIELD, pseudonym, json.dumps(doc, separators=(",", ":")))


def _open_row(cipher: FieldCipher, data_key: bytes, pseudonym: str, sealed: Any) -> dict[str, Any]:
    if sealed is None:
        raise IntegrityError(
            f"customer {pseudonym} of dataset {cipher.dataset!r} has no sealed row; the store was altered"
        )
    return json.loads(cipher.decrypt(data_key, ROW_FIELD, pseudonym, bytes(sealed)))


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def _top_tier(schema: Schema, names: Sequence[str]) -> str | None:
    tiers = [schema.field(n).tier for n in names if n in schema.names]
    return max(tiers, key=_TIER_RANK.__getitem__) if tiers else None


def _describe_change(old: Schema, new: Schema) -> str:
    before, after = set(old.structure()), set(new.structure())
    gone = sorted(f[0] for f in before - after)
    added = sorted(f[0] for f in after - before)
    return f"changed or removed: {', '.join(gone) or '-'}; new or changed: {', '.join(added) or '-'}"


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


def _to_series(spec: FieldSpec, values: list[Any], index: pd.Index) -> pd.Series:
    """Stored values -> a column with a numeric dtype for numbers (vectorised, no per-row Python)."""
    t = spec.type
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
