"""What one console process serves: a partner home, a runs folder, and who may see which view.

Which view a person sees is the home's access policy's decision, asked with the role the
people registry gives their key (re-read on every request, so a revoked key is signed
out at once): each view needs one policy action, the same one the CLI needs for the
same information (``audit_read`` for the audit trail and the budget, ``approve`` for the
approvals queue, ``people`` for people and keys, ``ingest`` for ingests, ``read`` for
runs). Nothing here reads a customer record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcustomer.console.audit_index import FILE_NAME as INDEX_FILE
from fedcustomer.console.audit_index import AuditIndex
from fedcustomer.console.credentials import FILE_NAME as CREDENTIALS_FILE
from fedcustomer.console.credentials import CredentialBook
from fedcustomer.console.oidc import OidcConfig, OidcVerifier
from fedcustomer.console.runs import RunsFolder
from fedcustomer.console.sessions import SessionBook
from fedcustomer.data.store_core import load_home_policy
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.people import MANAGE_ACTION, PeopleRegistry, PersonKey
from fedcustomer.privacy.access.policy import AccessPolicy, Actor

# view -> (policy action, title, path)
VIEWS: dict[str, tuple[str, str, str]] = {
    "audit": ("audit_read", "Audit trail", "/audit"),
    "verify": ("audit_read", "Verification", "/audit/status"),
    "budgets": ("audit_read", "Budgets", "/budgets"),
    "approvals": ("approve", "Approvals", "/approvals"),
    "people": ("people", "People and keys", "/people"),
    "ingests": ("ingest", "Ingests", "/ingests"),
    "runs": ("read", "Runs", "/runs"),
}


@dataclass
class ConsoleSettings:
    home: Path
    runs: Path | None = None
    tls: bool = False
    oidc: OidcConfig | None = None


class ConsoleContext:
    """The handles the web pages share (one per process)."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.home = PartnerHome(settings.home)
        if not self.home.config_path.exists() or not self.home.store_path.exists():
            raise ConfigError(
                f"{settings.home} is not an initialised partner home (run `fedcustomer init` first)"
            )
        if not self.home.people_path.exists():
            raise ConfigError(
                f"{settings.home} has no people registry; the console signs in registered people only "
                f"(`fedcustomer people init`)"
            )
        self.partner = self.home.config().name
        self.policy: AccessPolicy = load_home_policy(self.home)
        self.registry = PeopleRegistry(
            self.home.people_path, lambda role: self.policy.may(Actor("people-check", role), MANAGE_ACTION)
        )
        self.credentials = CredentialBook(self.home.state_dir / CREDENTIALS_FILE)
        self.sessions = SessionBook()
        self.index = AuditIndex(self.home.audit_dir, self.home.state_dir / INDEX_FILE)
        self.runs = RunsFolder(settings.runs)
        self.oidc = OidcVerifier(settings.oidc) if settings.oidc is not None else None

    # ---- who -----------------------------------------------------------------------------
    def person_by_name(self, name: str) -> PersonKey | None:
        """The active person (not service) registered under ``name``, or None."""
        try:
            person = self.registry.find_active(name)
        except ConfigError:
            return None
        return person if person.kind == "person" else None

    def current(self, key_id: str) -> PersonKey:
        """The registered, active person behind a session (AccessDenied once revoked or expired)."""
        person = self.registry.active(key_id)
        if person.kind != "person":
            raise AccessDenied("service keys cannot sign in to the console")
        return person

    def may(self, person: PersonKey, view: str) -> bool:
        action = VIEWS[view][0]
        return self.policy.may(Actor(person.name, person.role), action)

    def views_for(self, person: PersonKey) -> list[tuple[str, str, str]]:
        return [(name, title, path) for name, (_, title, path) in VIEWS.items() if self.may(person, name)]
