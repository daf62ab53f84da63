"""Who asked for a privacy audit: checked and recorded in each partner home before its rows are read.

Why this module: a privacy audit replays a job on the partners' own training rows, so
each partner must be able to tell who had its rows read, and why. Before the first read
in a home, :class:`AuditAuthorizer` authenticates the person who runs ``audit privacy``
against that home's people registry (their ``--identity`` key signs a request bound to
the home, the action and the run), checks that their registered role may ``audit_read``
(compliance officers, by the default policy), and appends a ``privacy_audit`` entry under
their name. Only then does the node's training pipeline read the rows, as it does for the
job itself, in entries that follow. A refusal is logged too, and nothing is read.

A development home without a people registry authenticates nobody: there the entry is
written under the fixed name ``privacy-audit`` with the compliance officer's role, as
every other command of such a home acts under a plain name.
"""

from __future__ import annotations

from pathlib import Path

from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import Signer
from fedcustomer.privacy.access.policy import Actor

ACTION = "audit_read"  # the policy action the auditor's role needs
AUDIT_ACTION = "privacy_audit"  # the audit-log action of the request
DEVELOPMENT_ACTOR = Actor("privacy-audit", "compliance_officer")


class AuditAuthorizer:
    """Authorises one audit of ``run`` in each home it reads, once per home."""

    def __init__(self, run: Path, signer: Signer | None) -> None:
        self.run = run
        self.signer = signer
        self.allowed: dict[str, str] = {}  # home directory -> who was allowed there

    def __call__(self, home: PartnerHome) -> str:
        """The name the home's log recorded for this audit; AccessDenied (logged) when refused."""
        key = str(home.root.resolve())
        if key in self.allowed:
            return self.allowed[key]
        details = {
            "run": self.run.name,
            "reads": "the job's feature and label fields, as its training pipeline",
        }
        with PartnerStore.open(home) as store:
            if self.signer is not None and store.people is None:
                raise ConfigError(
                    f"partner home {home.root} authenticates nobody (no people registry), so --identity "
                    "cannot be checked there; leave it out for development homes"
                )
            who = store.principal(
                self.signer if self.signer is not None else DEVELOPMENT_ACTOR,
                action=AUDIT_ACTION,
                audit_action=AUDIT_ACTION,
                extra={"details": details},
            )
            store.require(who, ACTION, AUDIT_ACTION, details=details)
            store.log(who, AUDIT_ACTION, details=details)
        self.allowed[key] = who.name
        return who.name
