"""The open store's handles and the helpers every store service shares.

:class:`StoreCore` holds the database, keyring, pseudonymizer, audit log and access
policy of one open store, checks admin actions against the policy (auditing refusals),
and knows the registered datasets. :class:`~fedcustomer.data.store.PartnerStore` adds
opening, ingest and reads; key administration, approvals and erasure are services over
the same core (:mod:`.key_admin`, :mod:`.approvals`, :mod:`.erasure`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from fedcustomer.data.ingest import utc_now
from fedcustomer.data.schema import Schema
from fedcustomer.data.store_db import SqliteBackend, table_name
from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.policy import AccessPolicy, Actor
from fedcustomer.privacy.crypto.keyring import KeyRing
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

APPROVALS_DB = "approvals.db"
_MASK_KEY_LABEL = "__fedcustomer_mask_key_v1__"


class StoreCore:
    """One open store: its handles, policy checks, audit entries and datasets."""

    def __init__(
        self,
        home: PartnerHome,
        backend: SqliteBackend,
        keyring: KeyRing,
        pseudonymizer: Pseudonymizer,
        audit: Any,
        policy: AccessPolicy,
    ) -> None:
        """Use :meth:`PartnerStore.init` or :meth:`PartnerStore.open`."""
        self.home = home
        self.backend = backend
        self.keyring = keyring
        self.pseudonymizer = pseudonymizer
        self.audit = audit
        self.policy = policy
        self._approvals: ApprovalBook | None = None
        self._schemas: dict[str, Schema] = {}
        self._closed = False
        self.mask_key = bytes.fromhex(pseudonymizer.pseudonym(_MASK_KEY_LABEL))

    def close(self) -> None:
        """Close the database and the audit log (which writes a final signed checkpoint); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.audit.close()
        finally:
            self.backend.close()
            close_keyring = getattr(self.keyring, "close", None)  # a token keyring ends its session
            if close_keyring is not None:
                close_keyring()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return str(self.backend.scalar("SELECT value FROM meta WHERE key = 'name'"))

    @property
    def approvals(self) -> ApprovalBook:
        """The two-person approvals of this home (reads check core fields against it)."""
        if self._approvals is None:
            self._approvals = ApprovalBook(self.home.root / APPROVALS_DB, self.policy)
        return self._approvals

    # ---- audit helpers -----------------------------------------------------------------

    def log(self, actor: Actor, action: str, decision: str = "allowed", **fields: Any) -> None:
        """Append one audit entry for ``actor``."""
        self.audit.append(actor=actor.name, role=actor.role, action=action, decision=decision, **fields)

    def require(self, actor: Actor, action: str, audit_action: str, **fields: Any) -> None:
        """Policy check for an admin action; a refusal is audit-logged before it is raised.

        The audit log is checked first: an action that could not be logged is not taken.
        """
        self.audit.check_before_acting()
        try:
            self.policy.require(actor, action)
        except AccessDenied as exc:
            self.log(actor, audit_action, "denied", reason=str(exc), **fields)
            raise
        except FedCustomerError as exc:  # e.g. an unknown role
            self.log(actor, audit_action, "denied", reason=str(exc), **fields)
            raise

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """A store transaction that wraps new data keys under the KEK version active *now*.

        The keyring is re-read after the database write lock is taken: a retirement runs
        its usage check and its key destruction under that same lock
        (:meth:`KeyAdmin.retire <fedcustomer.data.key_admin.KeyAdmin.retire>`), so a handle
        opened before another process rotated and retired can never wrap a key under a
        version that is (or is about to be) destroyed.
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
            self.register(schema)

    def register(self, schema: Schema) -> None:
        """:meth:`register_schema` inside the caller's transaction."""
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
        table = table_name(schema.dataset)
        self.backend.execute(
            f"CREATE TABLE {q(table)} (pseudonym TEXT PRIMARY KEY, ingest_id INTEGER NOT NULL, "
            f"sealed BLOB NOT NULL{core}) WITHOUT ROWID"
        )
        self.backend.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?)", (schema.dataset, table, schema.to_yaml(), now, now)
        )

    def count(self, dataset: str) -> int:
        self.schema(dataset)
        return int(self.backend.scalar(f"SELECT COUNT(*) FROM {self.backend.quote(table_name(dataset))}"))


def _describe_change(old: Schema, new: Schema) -> str:
    before, after = set(old.structure()), set(new.structure())
    gone = sorted(f[0] for f in before - after)
    added = sorted(f[0] for f in after - before)
    return f"changed or removed: {', '.join(gone) or '-'}; new or changed: {', '.join(added) or '-'}"
