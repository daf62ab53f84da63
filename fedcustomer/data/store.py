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

Every read goes through :meth:`PartnerStore.read` (:mod:`.store_read`), which asks the
access policy about every field, masks or decrypts accordingly and writes one audit
entry per call. Ingest lives in :mod:`.store_ingest`; key administration, approvals and
erasure are services over the same open store (:mod:`.key_admin`, :mod:`.approvals`,
:mod:`.erasure`). Admin actions are checked against the policy and audit-logged,
allowed or denied. The store never wraps or unwraps a data key itself: records are
sealed and opened by :mod:`fedcustomer.privacy.crypto.envelope`.

Erasure is crypto-shredding: the customer's wrapped data key, row, quarantined rows
and merge records are deleted with SQLite ``secure_delete`` on (freed pages are zeroed).
The database is in WAL mode (one sync per commit): the ``-wal`` file holds pages as they
were before recent commits, so an erasure checkpoints it and cuts it to zero bytes
(:func:`~fedcustomer.data.store_db.settle_erasures`; a crash before that is settled at the next
open). Copies outside the database file (backups, filesystem remnants of a journal) hold the customer's values only as ciphertext under their data key, and that
key only wrapped by a KEK; rotating the KEK and retiring the old version afterwards
makes those copies unreadable. What such a copy still shows in clear: the customer's
pseudonym (which whoever holds the pseudonym key can compute from the raw id, so it
shows that the customer was in the store), the ingest number of their row, merge
outcomes, and for quarantined rows the row number and the reasons (which never quote
values); the ``erasures`` table keeps the pseudonym by design.

SQL lives behind :class:`~fedcustomer.data.store_db.SqliteBackend` (connection,
transactions, column types), so another engine (e.g. PostgreSQL) can be added by
implementing the same small interface.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from fedcustomer.common.sqlite_wal import WAL_SUFFIXES
from fedcustomer.data.ingest import IngestReport, utc_now
from fedcustomer.data.key_migration import finish_key_switch
from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.schema import Schema
from fedcustomer.data.store_batches import read_batches
from fedcustomer.data.store_core import Credential, StoreCore, load_home_policy
from fedcustomer.data.store_customers import CustomerSets
from fedcustomer.data.store_db import (
    BASE_TABLES,
    KEYCHECK_DATASET,
    KEYCHECK_LABEL,
    MERGE_FIELD,
    OLD_FORMATS,
    STORE_FORMAT,
    SqliteBackend,
    erasure_unsettled,
    open_row_key,
    settle_erasures,
)
from fedcustomer.data.store_ingest import ingest_file
from fedcustomer.data.store_read import read_frame
from fedcustomer.errors import ConfigError, DataError, IntegrityError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import Signer
from fedcustomer.privacy.access.policy import AccessPolicy, Actor
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import open_record, seal_record
from fedcustomer.privacy.crypto.keyring import KeyRing, WrappedKey
from fedcustomer.privacy.crypto.keyring_factory import create_keyring, open_keyring
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

_PSEUDONYM_CHECK = "__fedcustomer_store_keycheck__"


def _close_keyring(keyring: KeyRing) -> None:
    """End a token session the store will not use (the file keyring has nothing to close)."""
    close = getattr(keyring, "close", None)
    if close is not None:
        close()


class PartnerStore(StoreCore):
    """A partner's governed customer store (see the module docstring)."""

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        home: PartnerHome,
        name: str,
        *,
        actor: Actor | None = None,
        admin: Signer | None = None,
        admin_name: str | None = None,
    ) -> PartnerStore:
        """Create keys, audit log and an empty store.db in ``home`` (a new or existing partner home).

        With ``admin`` (the first admin's identity key) the home gets its people registry
        and every governance request must then be signed; without it the home is a
        development home that takes bare actors (what tests and simulations use).
        """
        if admin is not None:
            if not admin_name:
                raise ConfigError("name the first admin (admin_name) whose key starts the people registry")
            actor = Actor(admin_name, "partner_admin")
        home = home if isinstance(home, PartnerHome) else PartnerHome(home)
        if home.store_path.exists():
            raise ConfigError(
                f"{home.store_path} already exists: this partner home is initialised; use it as is"
            )
        left = [s for s in WAL_SUFFIXES if home.store_path.with_name(home.store_path.name + s).exists()]
        if left:  # SQLite would apply another database's log to the new file
            raise ConfigError(
                f"{home.store_path} is missing but its {', '.join(left)} file(s) are there: store.db was "
                "deleted or moved while in use; restore it from backup, or move those files away"
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
        config = home.config()
        keyring = create_keyring(config.keyring, home.keys_dir, config.name)
        try:
            cls._write_new_store(home, name, keyring)
        finally:
            _close_keyring(keyring)
        store = cls.open(home)
        who = actor or Actor("system", "partner_admin")
        store.log(who, "key_create", details={"kek_version": store.keyring.active_version(), "store": name})
        if admin is not None:
            try:
                PeopleAdmin(store).create(admin, admin_name or "")
            except BaseException:
                store.close()
                raise
        return store

    @staticmethod
    def _write_new_store(home: PartnerHome, name: str, keyring: KeyRing) -> None:
        """The pseudonym key and an empty store.db whose key check the new keyring wrapped."""
        pseudonymizer = Pseudonymizer.create(home.keys_dir)
        tmp = home.store_path.with_name(home.store_path.name + ".init")
        for leftover in [tmp] + [tmp.with_name(tmp.name + s) for s in WAL_SUFFIXES]:
            leftover.unlink(missing_ok=True)
        backend = SqliteBackend(tmp, create=True)
        try:
            # one transaction: the tables and their first rows appear together, at the cost of one sync
            with backend.transaction():
                for statement in BASE_TABLES.split(";"):
                    if statement.strip():
                        backend.execute(statement)
                now = utc_now()
                for key, value in (("format", STORE_FORMAT), ("name", name), ("created_at", now)):
                    backend.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                backend.execute(
                    "INSERT INTO meta VALUES (?, ?)",
                    ("pseudonym_check", pseudonymizer.pseudonym(_PSEUDONYM_CHECK)),
                )
                wrapped = seal_record(keyring, FieldCipher(KEYCHECK_DATASET), KEYCHECK_LABEL).wrapped
                backend.execute("INSERT INTO keycheck VALUES (1, ?, ?)", (wrapped.kek_version, wrapped.blob))
        finally:
            backend.close()
        os.chmod(tmp, 0o600)
        os.replace(tmp, home.store_path)

    @classmethod
    def open(cls, home: PartnerHome) -> PartnerStore:
        """Open an initialised home; KeyMaterialError (nothing written) if its keys are missing or wrong."""
        home = home if isinstance(home, PartnerHome) else PartnerHome(home)
        if not home.store_path.exists():
            raise ConfigError(
                f"no store at {home.store_path}; create one with `fedcustomer init --home {home.root} --name NAME "
                f"--identity YOUR_KEY --admin YOUR_NAME`"
            )
        finish_key_switch(home)  # a move to a token committed in store.db, not yet in partner.toml
        keyring_config = home.keyring_config()
        owner = home.config().name if home.config_path.exists() else ""
        keyring = open_keyring(keyring_config, home.keys_dir, owner)
        try:
            pseudonymizer = Pseudonymizer.open(home.keys_dir)
            backend = SqliteBackend(home.store_path)
        except BaseException:
            _close_keyring(keyring)
            raise
        try:
            cls._check_keys(backend, keyring, pseudonymizer)
            if erasure_unsettled(backend):  # an erasure whose -wal a crash or a reader left uncut
                settle_erasures(backend)
            policy = cls._load_policy(home)
            audit = cls._open_audit(home, backend)
            store = cls(home, backend, keyring, pseudonymizer, audit, policy)
            store._note_policy()
        except BaseException:
            backend.close()
            _close_keyring(keyring)
            raise
        return store

    @staticmethod
    def _open_audit(home: PartnerHome, backend: SqliteBackend) -> Any:
        """The home's audit log with its reach kept in this database; checked before any action."""
        from fedcustomer.privacy.audit.reach import SqlReach
        from fedcustomer.privacy.audit.writer import AuditLog

        reach = SqlReach(backend.execute, backend.transaction, source=home.store_path.name)
        audit = AuditLog.open(
            home.audit_dir,
            keys_dir=home.keys_dir,
            reach=reach,
            signer=home.audit_signer(),
            anchor_sink=home.anchor_sink(),
        )
        reach.ensure(*audit.reach_now())
        audit.check_before_acting()
        audit.customer_sets = CustomerSets(lambda sql, params: backend.fetchone(sql, params)).reached
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
                self.log(
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
        if fmt in OLD_FORMATS:
            raise ConfigError(
                f"{backend.path} is a {fmt} store, written by an older version that kept public and sensitive "
                f"values in clear (so erasure did not reach backups); export its data and ingest it into a new home"
            )
        if fmt != STORE_FORMAT or check is None or expected is None:
            raise IntegrityError(f"{backend.path} is not a {STORE_FORMAT} store (format {fmt!r})")
        try:
            open_record(
                keyring,
                FieldCipher(KEYCHECK_DATASET),
                KEYCHECK_LABEL,
                WrappedKey(int(check[0]), bytes(check[1])),
            )
        except KeyMaterialError as exc:
            where = getattr(keyring, "path", None) or getattr(keyring, "where", "the keys directory")
            raise KeyMaterialError(
                f"the keyring in {where} does not belong to the store "
                f"{backend.path} (its KEK cannot unwrap the store's key check: {exc}); restore this partner's own "
                f"keys/keyring.json from backup, or configure its own token in [keyring] of partner.toml"
            ) from None
        if pseudonymizer.pseudonym(_PSEUDONYM_CHECK) != expected:
            raise KeyMaterialError(
                f"the pseudonym key {pseudonymizer.path} does not belong to the store {backend.path}: customer "
                f"pseudonyms would not match; restore this partner's own keys/pseudonym.key from backup"
            )

    @staticmethod
    def _load_policy(home: PartnerHome) -> AccessPolicy:
        return load_home_policy(home)

    # ---- ingest and reads ---------------------------------------------------------------

    def ingest(
        self,
        actor: Credential,
        schema: Schema,
        path: Path,
        *,
        chunk_rows: int = 50_000,
        id_from_row: bool = False,
    ) -> IngestReport:
        """Validate, de-duplicate, encrypt and store a CSV/Parquet file in ONE transaction.

        Re-ingesting a file already ingested (same sha256) adds nothing; rows already
        stored with the same content are counted ``unchanged``. Invalid rows go to the
        encrypted quarantine with reasons. If anything fails, the store is left as it was.
        """
        return ingest_file(self, actor, schema, path, chunk_rows=chunk_rows, id_from_row=id_from_row)

    def read(
        self,
        actor: Credential,
        purpose: str,
        fields: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        *,
        dataset: str | None = None,
        approval_id: str | None = None,
        now: datetime | None = None,
        sign: bool = False,
        context: Mapping[str, Any] | None = None,
        split: str | None = None,
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

        ``sign=True`` signs a checkpoint over the read's entry at once, for a handle that reads
        once and closes (a node's training read): closing would sign one anyway, and this way
        the log is synced once and the store's reach record takes the entry and its checkpoint
        in one commit instead of two.

        ``context`` (e.g. ``{"run_id": ..., "split": "test"}``) is written into the entry's
        ``details``: which job the read serves, so ``audit query --run`` finds it.

        ``split`` (``train`` or ``test``) reads one side of the partner's evaluation split: the
        dataset's public ``holdout`` marker where it has one, else a fixed share of customers
        chosen by pseudonym. The other customers' rows are never opened, and the entry cites
        only the split's customers (an evaluation read is not a read of everyone).
        """
        return read_frame(
            self,
            actor,
            purpose,
            fields,
            where,
            dataset=dataset,
            approval_id=approval_id,
            now=now,
            sign=sign,
            context=context,
            split=split,
        )

    def read_batches(
        self,
        actor: Credential,
        purpose: str,
        fields: Sequence[str] | None = None,
        *,
        dataset: str | None = None,
        batch_size: int = 65_536,
        approval_id: str | None = None,
        now: datetime | None = None,
    ) -> Iterator[pd.DataFrame]:
        """:meth:`read` in frames of ``batch_size`` rows, for callers that stream millions of rows.

        The same checks and refusals, and the same one audit entry, written before the first
        batch leaves (:mod:`fedcustomer.data.store_batches`); no ``where`` filter. Iterate it
        while this handle is open."""
        return read_batches(
            self,
            actor,
            purpose,
            fields,
            dataset=dataset,
            batch_size=batch_size,
            approval_id=approval_id,
            now=now,
        )

    # ---- what the store holds ---------------------------------------------------------------

    def ingest_history(self, dataset: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM ingests" + (" WHERE dataset = ?" if dataset else "") + " ORDER BY id"
        cur = self.backend.execute(sql, (dataset,) if dataset else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def quarantine_summary(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Quarantined rows without their (encrypted) content: row number, pseudonym, reasons."""
        sql = "SELECT id, dataset, ingest_id, source_row, pseudonym, reasons, quarantined_at FROM quarantine"
        params: tuple[str, ...] = ()
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
        params: tuple[str, ...] = ()
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
            key = open_row_key(self.keyring, FieldCipher(ds), p, version, blob)
            kept, dropped = json.loads(key.open_value(MERGE_FIELD, bytes(sealed)))
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
