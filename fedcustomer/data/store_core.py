"""The open store's handles and the helpers every store service shares.

:class:`StoreCore` holds the database, keyring, pseudonymizer, audit log and access
policy of one open store, checks admin actions against the policy (auditing refusals),
and knows the registered datasets. :class:`~fedcustomer.data.store.PartnerStore` adds
opening, ingest and reads; key administration, approvals and erasure are services over
the same core (:mod:`.key_admin`, :mod:`.approvals`, :mod:`.erasure`).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Self

from fedcustomer.data.ingest import utc_now
from fedcustomer.data.schema import Schema
from fedcustomer.data.store_db import SqliteBackend, table_name
from fedcustomer.errors import (
    AccessDenied,
    ConfigError,
    FedCustomerError,
    IntegrityError,
    KeyMaterialError,
    SchemaError,
)
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.approvals import ApprovalBook
from fedcustomer.privacy.access.people import MANAGE_ACTION, PeopleRegistry
from fedcustomer.privacy.access.person_keys import KeySigner, Signer, load_identity_file
from fedcustomer.privacy.access.policy import AccessPolicy, Actor
from fedcustomer.privacy.access.requests import (
    AuthenticatedActor,
    Authenticator,
    NonceBook,
    SignedRequest,
    sign_request,
)
from fedcustomer.privacy.crypto.keyring import KeyRing
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

APPROVALS_DB = "approvals.db"
PEOPLE_META_KEY = "people_registry"

Credential = Actor | Signer | SignedRequest
"""Who acts: a signer (a loaded identity key) or a signed request; a bare Actor only in a
home without a people registry (a development home made through the Python API)."""
_MASK_KEY_LABEL = "__fedcustomer_mask_key_v1__"


def load_home_policy(home: PartnerHome) -> AccessPolicy:
    """The access policy a home names in partner.toml, else the bundled one."""
    policy_file = None
    if home.config_path.exists():
        policy_file = home.config().policy_file
    if not policy_file:
        return AccessPolicy.default()
    path = Path(policy_file)
    return AccessPolicy.load(path if path.is_absolute() else home.root / path)


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
        self.last_entry: Any = None  # the audit entry this handle appended last (a caller may cite it)
        self.policy = policy
        self._approvals: ApprovalBook | None = None
        self._people: PeopleRegistry | None = None
        self._nonces: NonceBook | None = None
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
            if self._nonces is not None:
                self._nonces.close()
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
            self._approvals = ApprovalBook(self.home.root / APPROVALS_DB, self.policy, self.people)
        return self._approvals

    # ---- who acts ----------------------------------------------------------------------

    @property
    def people(self) -> PeopleRegistry | None:
        """The home's people registry; None only for a development home that never had one.

        Once a home has a registry, store.db says so: deleting the file does not switch
        authentication off, it stops every governance request until the file is restored.
        """
        if self._people is None:
            required = self.backend.scalar("SELECT value FROM meta WHERE key = ?", (PEOPLE_META_KEY,))
            if required is None and not self.home.people_path.exists():
                return None
            self._people = PeopleRegistry(self.home.people_path, self.may_manage_people)
        return self._people

    def may_manage_people(self, role: str) -> bool:
        return self.policy.may(Actor("people-check", role), MANAGE_ACTION)

    def authenticator(self) -> Authenticator:
        registry = self.people
        if registry is None:
            raise ConfigError(
                f"{self.home.root} has no people registry; create it with `fedcustomer people init`"
            )
        if self._nonces is None:
            self._nonces = NonceBook(self.home.nonces_path)
        return Authenticator(registry, self._nonces, self.name)

    def service_credential(self, name: str, role: str) -> Credential:
        """What a node pipeline acts as: its registered service key, or a plain actor in a development home."""
        if self.people is None:
            return Actor(name, role)
        path = self.home.service_key_path(role)
        if not path.exists():
            raise KeyMaterialError(
                f"this home authenticates every request, but has no service key for role '{role}' ({path}); "
                f"register one with `fedcustomer people add --service`"
            )
        signer: KeySigner = load_identity_file(path, None)
        return signer

    def principal(
        self,
        who: Credential,
        *,
        action: str,
        audit_action: str,
        dataset: str | None = None,
        fields: Sequence[str] = (),
        purpose: str | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Actor:
        """The actor behind ``who``, authenticated against the registry before any policy decision.

        A signer signs a fresh request for exactly this action; a signed request must match
        it. Every refusal is audit-logged (under the registry's name for a registered key,
        else as ``unauthenticated``) before it is raised.
        """
        registry = self.people
        if isinstance(who, Actor):
            if registry is None:
                return who
            claimed = who.name
            self._refuse_unauthenticated(
                f"'{claimed}' is not authenticated: this home has a people registry, so every governance request "
                f"must be signed with a registered identity key (--identity FILE)",
                audit_action,
                dataset=dataset,
                fields=fields,
                purpose=purpose,
                claimed=claimed,
            )
        if registry is None:
            raise ConfigError(
                f"{self.home.root} has no people registry to check a signature against; create it with "
                f"`fedcustomer people init`"
            )
        signed = (
            who
            if isinstance(who, SignedRequest)
            else sign_request(
                who,
                partner=self.name,
                action=action,
                dataset=dataset,
                fields=fields,
                purpose=purpose,
                extra=extra,
                now=now,
            )
        )
        try:
            return self.authenticator().verify(
                signed, action=action, dataset=dataset, fields=fields, purpose=purpose, extra=extra, now=now
            )
        except (AccessDenied, IntegrityError) as exc:
            try:
                person = registry.lookup(signed.request.key_id)
            except IntegrityError:  # an edited registry: nobody can be named
                person = None
            self.audit.check_before_acting()
            actor = Actor(person.name, person.role) if person else Actor("unauthenticated", "unauthenticated")
            details = {"key_id": signed.request.key_id, "action_requested": action}
            self.log(
                actor,
                audit_action,
                "denied",
                reason=str(exc),
                dataset=dataset,
                fields=list(fields),
                purpose=purpose,
                details=details,
            )
            raise

    def _refuse_unauthenticated(
        self,
        reason: str,
        audit_action: str,
        *,
        dataset: str | None,
        fields: Sequence[str],
        purpose: str | None,
        claimed: str,
    ) -> NoReturn:
        self.audit.check_before_acting()
        self.log(
            Actor("unauthenticated", "unauthenticated"),
            audit_action,
            "denied",
            reason=reason,
            dataset=dataset,
            fields=list(fields),
            purpose=purpose,
            details={"claimed_name": claimed},
        )
        raise AccessDenied(reason)

    # ---- audit helpers -----------------------------------------------------------------

    def log(self, actor: Actor, action: str, decision: str = "allowed", **fields: Any) -> None:
        """Append one audit entry for ``actor``; an authenticated actor's signed request goes with it."""
        if isinstance(actor, AuthenticatedActor) and actor.signed is not None:
            fields["details"] = {**(fields.get("details") or {}), "auth": actor.audit_details()}
        self.last_entry = self.audit.append(
            actor=actor.name, role=actor.role, action=action, decision=decision, **fields
        )

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
        """The dataset's schema as stored now (parsed once per process for the same YAML text)."""
        text = self.backend.scalar("SELECT schema_yaml FROM datasets WHERE name = ?", (dataset,))
        if text is None:
            known = ", ".join(self.datasets()) or "none yet"
            raise ConfigError(
                f"no dataset {dataset!r} in {self.home.store_path} (datasets: {known}); ingest it first"
            )
        return parse_stored_schema(text, f"{self.home.store_path}:{dataset}")

    def register_schema(self, schema: Schema) -> None:
        """Create the dataset's table, or accept a compatible update (same fields, types, tiers, roles)."""
        with self.backend.transaction():
            self.register(schema)

    def check_compatible(self, schema: Schema) -> Schema | None:
        """The stored schema of ``schema.dataset`` (None when new); a structural change is refused.

        Why: a table's layout follows its fields' names, types, tiers and roles, so a tier made public
        after the first ingest cannot apply to rows already sealed as sensitive.
        """
        row = self.backend.fetchone("SELECT schema_yaml FROM datasets WHERE name = ?", (schema.dataset,))
        if row is None:
            return None
        stored = parse_stored_schema(row[0], f"stored schema {schema.dataset!r}")
        if stored.structure() != schema.structure():
            raise SchemaError(
                f"{schema.source or 'schema'}: dataset {schema.dataset!r} is already stored with different "
                f"fields/types/tiers/roles ({_describe_change(stored, schema)}); a structural change needs a new "
                f"dataset name"
            )
        return stored

    def register(self, schema: Schema) -> None:
        """:meth:`register_schema` inside the caller's transaction."""
        now = utc_now()
        if self.check_compatible(schema) is not None:
            self.backend.execute(
                "UPDATE datasets SET schema_yaml = ?, updated_at = ? WHERE name = ?",
                (schema.to_yaml(), now, schema.dataset),
            )
            self._count_index(table_name(schema.dataset))  # a store made before the index gets it here
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
        self._count_index(table)

    def _count_index(self, table: str) -> None:
        """An index of the rows' ingest ids, so that ``COUNT(*)`` of the rows reads its few pages, not
        every sealed row: the change stamp a node compares each round counts them (0.45 ms -> 0.01 ms
        at 3,000 rows). It holds only the pseudonym and ingest id the table holds; the colon keeps its
        name apart from any table's."""
        q = self.backend.quote
        self.backend.execute(f"CREATE INDEX IF NOT EXISTS {q(table + ':ingest')} ON {q(table)} (ingest_id)")

    def count(self, dataset: str) -> int:
        self.schema(dataset)
        return int(self.backend.scalar(f"SELECT COUNT(*) FROM {self.backend.quote(table_name(dataset))}"))


class _SchemaCache:
    """Parsed schemas keyed by the exact YAML text a store holds, shared by every handle.

    A node opens its store for every read, and parsing a schema (YAML, then every check)
    costs more than a small read itself. A :class:`Schema` is immutable, so one parsed
    object can serve every handle that reads the same text; a changed text is a new key
    and is parsed (and checked) again. Least recently used entries go first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, Schema] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, source: str) -> Schema:
        with self._lock:
            schema = self._entries.get(text)
            if schema is not None:
                self._entries.move_to_end(text)
        if schema is None:
            schema = Schema.from_yaml(text, source=source)  # SchemaError for a bad text: nothing cached
            with self._lock:
                self._entries[text] = schema
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        if schema.source == source:
            return schema
        named = copy.copy(schema)  # the same checked fields, named for this store's messages
        object.__setattr__(named, "source", source)
        return named

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


SCHEMAS = _SchemaCache(256)


def parse_stored_schema(text: str, source: str) -> Schema:
    """A stored schema's text parsed (and checked) once per process; see :class:`_SchemaCache`."""
    return SCHEMAS.get(text, source)


def _describe_change(old: Schema, new: Schema) -> str:
    """Each field that differs, as ``home: tier sensitive -> public``, ``removed: x``, ``added: y``."""
    keys = ("type", "tier", "role")
    before = {f[0]: dict(zip(keys, f[1:], strict=True)) for f in old.structure()}
    after = {f[0]: dict(zip(keys, f[1:], strict=True)) for f in new.structure()}
    parts = []
    for name in sorted(before.keys() & after.keys()):
        changes = [
            f"{k} {before[name][k]} -> {after[name][k]}" for k in keys if before[name][k] != after[name][k]
        ]
        if changes:
            parts.append(f"{name}: {', '.join(changes)}")
    if gone := sorted(before.keys() - after.keys()):
        parts.append(f"removed: {', '.join(gone)}")
    if added := sorted(after.keys() - before.keys()):
        parts.append(f"added: {', '.join(added)}")
    if not parts:  # same fields, other order
        parts.append("field order")
    return "; ".join(parts)
