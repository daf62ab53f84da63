"""People and services of an open store: create the registry, add, revoke, list (all audit-logged).

The registry itself (:mod:`fedcustomer.privacy.access.people`) proves who may act; this
service ties it to the store: the acting admin is authenticated like every governance
request, the change is signed into the registry with their key, and an audit entry
records the key, the role and the registry's new head, so the audit log and the
registry vouch for each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.data.store_core import PEOPLE_META_KEY, StoreCore, load_home_policy
from fedcustomer.errors import ConfigError, FedCustomerError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.people import MANAGE_ACTION, PeopleRegistry, PersonKey
from fedcustomer.privacy.access.person_keys import KeySigner, Signer, key_id_of, write_identity_file
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.access.requests import AuthenticatedActor, Authenticator, NonceBook, sign_request

ADMIN_ROLE = "partner_admin"
TRAINING_ROLE = "training_pipeline"
ANALYTICS_ROLE = "data_scientist"
SERVICE_ROLES = (TRAINING_ROLE, ANALYTICS_ROLE)


def service_name(partner: str, role: str) -> str:
    """The registered name of one of a partner node's own pipelines."""
    return f"node:{partner}" if role == TRAINING_ROLE else f"node:{partner}:analytics"


class PeopleAdmin:
    """The people registry of one open store."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store

    def create(self, admin: Signer, admin_name: str, *, now: datetime | None = None) -> PersonKey:
        """Start the registry with its first admin, and register the node's service key.

        From now on every governance request to this store must be signed; store.db
        records that, so removing the registry file cannot switch it off.
        """
        store = self.store
        home = store.home
        if store.people is not None:
            raise ConfigError(
                f"{home.root} already has a people registry; add people with `fedcustomer people add`"
            )
        for role in SERVICE_ROLES:
            if home.service_key_path(role).exists():
                raise ConfigError(
                    f"{home.service_key_path(role)} exists without a registry; move it away before creating one"
                )
        store.audit.check_before_acting()
        registry = PeopleRegistry.create(
            home.people_path, admin, admin_name, ADMIN_ROLE, store.may_manage_people, now=now
        )
        try:
            with store.backend.transaction():
                store.backend.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (PEOPLE_META_KEY, "required")
                )
            for role in SERVICE_ROLES:
                service = KeySigner.generate()
                write_identity_file(home.service_key_path(role), service, None)
                name = service_name(store.name, role)
                registry.add(admin, service.public_key, name, role, kind="service", now=now)
        except BaseException:
            home.people_path.unlink(missing_ok=True)
            for role in SERVICE_ROLES:
                home.service_key_path(role).unlink(missing_ok=True)
            with store.backend.transaction():
                store.backend.execute("DELETE FROM meta WHERE key = ?", (PEOPLE_META_KEY,))
            raise
        store._people = None
        first = registry.active(admin.key_id, now)
        actor = Actor(first.name, first.role)
        for person in registry.keys():
            store.log(actor, "people_add", details={**_describe(person), "registry_head": registry.head()})
        return first

    def add(
        self,
        admin: Signer,
        public_key: Ed25519PublicKey,
        name: str,
        role: str,
        *,
        kind: str = "person",
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> PersonKey:
        """Register ``public_key`` for ``name`` in ``role`` (the admin signs the registry event)."""
        store = self.store
        extra = {
            "key_id": key_id_of(public_key),
            "name": name,
            "role": role,
            "kind": kind,
            "expires_at": None if expires_at is None else expires_at.isoformat(timespec="seconds"),
        }
        actor = store.principal(admin, action="people", audit_action="people_add", extra=extra, now=now)
        store.require(actor, "people", "people_add", details=extra)
        registry = self._registry()
        try:
            if role not in store.policy.roles:  # a key registered under it could do nothing, and stays
                raise ConfigError(
                    f"role {role!r} is not a role of the access policy {store.policy.source}; "
                    f"known roles: {', '.join(sorted(store.policy.roles))}"
                )
            person = registry.add(admin, public_key, name, role, kind=kind, expires_at=expires_at, now=now)
        except FedCustomerError as exc:
            store.log(actor, "people_add", "denied", reason=str(exc), details=extra)
            raise
        store.log(actor, "people_add", details={**_describe(person), "registry_head": registry.head()})
        return person

    def revoke(self, admin: Signer, key_id: str, reason: str, *, now: datetime | None = None) -> PersonKey:
        """Revoke a key at once (every process re-reads the registry on its next request)."""
        store = self.store
        extra = {"key_id": key_id, "reason": reason}
        actor = store.principal(admin, action="people", audit_action="people_revoke", extra=extra, now=now)
        store.require(actor, "people", "people_revoke", details=extra)
        registry = self._registry()
        try:
            person = registry.revoke(admin, key_id, reason, now=now)
        except FedCustomerError as exc:
            store.log(actor, "people_revoke", "denied", reason=str(exc), details=extra)
            raise
        store.log(actor, "people_revoke", details={**_describe(person), "registry_head": registry.head()})
        return person

    def list(self, who: Signer) -> list[dict[str, Any]]:
        """Every registered key, active or revoked (any registered person may look)."""
        store = self.store
        store.principal(who, action="people_list", audit_action="people_list")
        return [p.to_dict() for p in self._registry().keys()]

    def key_of(self, name: str) -> str:
        """The active key id of the person called ``name``."""
        return self._registry().find_active(name).key_id

    def _registry(self) -> PeopleRegistry:
        registry = self.store.people
        if registry is None:
            raise ConfigError(
                f"{self.store.home.root} has no people registry; create it with `fedcustomer people init`"
            )
        return registry


def authenticate_without_store(
    home: PartnerHome, who: Signer, *, action: str, extra: dict[str, Any] | None = None
) -> AuthenticatedActor:
    """Authenticate against the registry without opening the store.

    For the one command that must work when the store cannot open: repairing a torn
    audit log (the store refuses to act on a log it cannot append to).
    """
    policy = load_home_policy(home)
    registry = PeopleRegistry(
        home.people_path, lambda role: policy.may(Actor("people-check", role), MANAGE_ACTION)
    )
    if not registry.exists():
        raise ConfigError(f"{home.root} has no people registry; create it with `fedcustomer people init`")
    signed = sign_request(who, partner=home.config().name, action=action, extra=extra)
    nonces = NonceBook(home.nonces_path)
    try:
        return Authenticator(registry, nonces, home.config().name).verify(signed, action=action, extra=extra)
    finally:
        nonces.close()


def _describe(person: PersonKey) -> dict[str, Any]:
    return {k: v for k, v in person.to_dict().items() if v is not None}
