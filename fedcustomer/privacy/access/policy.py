"""Role-based access to customer fields, with two-person approval for core fields.

Least privilege is decided per field: a request names an actor (with a role), a purpose
and the fields it wants; each field gets a view, ``clear``, ``masked`` or ``denied``,
and a short reason naming the rule. The store asks here for every field it returns and
audit-logs each decision, so nothing reaches a reader without passing this module.

The rules live in a casbin policy the partner admin can edit: the bundled default is
``default_policy.POLICY_CSV``, and ``write_default_policy`` writes it out for editing. This code holds no role rules of its own:
it parses and validates the file, asks casbin, and adds only the one rule the business
fixed for approval-gated grants: a clear read needs an :class:`Approval` signed by
``REQUIRED_APPROVERS`` distinct approvers, none of them the requester, not yet expired.

Approvals are kept in a small SQLite file by :class:`~fedcustomer.privacy.access.approvals.ApprovalBook`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import casbin
from casbin.model import Model

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import AccessDenied, ConfigError, SchemaError
from fedcustomer.privacy.access import default_policy
from fedcustomer.privacy.access.lookalikes import check_single_script, same_identity

ROLES = (
    "data_scientist",
    "marketing_analyst",
    "risk_officer",
    "compliance_officer",
    "partner_admin",
    "training_pipeline",
)
PURPOSES = (
    "training",
    "evaluation",
    "analytics",
    "marketing",
    "risk_review",
    "audit",
    "administration",
    "record_linkage",
)
TIERS = ("core", "sensitive", "public")
FIELD_ROLES = ("id", "feature", "label", "timestamp")
VIEWS = ("clear", "masked", "denied")
ACTIONS = ("ingest", "keys", "erase", "policy_edit", "people", "audit_read", "approve", "read")

#: Views a policy line may grant; ``clear_with_approvals`` means clear only with an Approval.
GRANT_VIEWS = ("clear", "clear_with_approvals", "masked")
APPROVAL_GATED = "clear_with_approvals"
REQUIRED_APPROVERS = 2

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_POLICY_FORMS = {
    "p": ("role", "purpose", "tier", "field_role", "view"),
    "p2": ("role", "action"),
    "g": ("child_role", "parent_role"),
}


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Actor:
    """Who asks: a person or service ``name`` acting in one ``role``."""

    name: str
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ConfigError(
                f"actor name {self.name!r} is empty or has surrounding spaces; give a plain name"
            )
        if len(self.name) > 200 or any(ord(c) < 32 for c in self.name):
            raise ConfigError("actor name is longer than 200 characters or holds control characters")
        check_single_script(self.name)
        if not isinstance(self.role, str) or not _NAME_RE.match(self.role):
            raise ConfigError(
                f"actor role {self.role!r} is not a role name (lower-case letters, digits, '_'); "
                f"built-in roles: {', '.join(ROLES)}"
            )


@dataclass(frozen=True)
class FieldRef:
    """A schema field as the policy sees it: its name, privacy tier and schema role."""

    name: str
    tier: str
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError("field name is empty; every schema field needs a name")
        if self.tier not in TIERS:
            raise SchemaError(f"field '{self.name}': tier {self.tier!r} is not one of {', '.join(TIERS)}")
        if self.role not in FIELD_ROLES:
            raise SchemaError(
                f"field '{self.name}': role {self.role!r} is not one of {', '.join(FIELD_ROLES)}"
            )


@dataclass(frozen=True)
class FieldDecision:
    """What one actor may see of one field, and which rule said so (never a data value)."""

    field: str
    view: str
    reason: str

    @property
    def allowed(self) -> bool:
        return self.view != "denied"


@dataclass(frozen=True)
class Approval:
    """A fully signed approval: ``requester`` may read ``fields`` of ``dataset`` for ``purpose``."""

    approval_id: str
    requester: str
    dataset: str
    fields: tuple[str, ...]
    purpose: str
    approvers: tuple[str, ...]
    expires_at: str

    def problem(self, actor: Actor, purpose: str, field: str, now: datetime | None = None) -> str | None:
        """Why this approval does not let ``actor`` read ``field`` for ``purpose`` now (None if it does)."""
        if self.requester != actor.name:
            return "approval was granted to another requester"
        if self.purpose != purpose:
            return f"approval is for purpose '{self.purpose}'"
        if field not in self.fields:
            return "field not covered by the approval"
        if any(same_identity(actor.name, a) for a in self.approvers):
            return "requester signed their own approval"
        signers = len(distinct_people(self.approvers))
        if signers < REQUIRED_APPROVERS:
            return f"approval has {signers} distinct approver(s), needs {REQUIRED_APPROVERS}"
        try:
            expires = parse_utc(self.expires_at)
        except ValueError:
            return "approval expiry is not an ISO 8601 time"
        if utc_now(now) >= expires:
            return f"approval expired at {self.expires_at}"
        return None


def distinct_people(names: Sequence[str]) -> list[str]:
    """``names`` less any that denote the same person as an earlier one (look-alikes, case)."""
    kept: list[str] = []
    for name in names:
        if not any(same_identity(name, k) for k in kept):
            kept.append(name)
    return kept


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` as an aware UTC time (naive times are taken as UTC); the clock if None."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def parse_utc(text: str) -> datetime:
    """Parse an ISO 8601 time; naive times are UTC. ValueError if it is not one."""
    return utc_now(datetime.fromisoformat(text))


# --------------------------------------------------------------------------- policy file


@dataclass(frozen=True)
class PolicyLine:
    """One validated line of the policy CSV, kept with its position for messages."""

    ptype: str
    values: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        return ", ".join((self.ptype, *self.values))


def _check_token(kind: str, value: str) -> str | None:
    """Problem with one policy value, or None if valid."""
    if kind in ("role", "child_role", "parent_role"):
        return None if _NAME_RE.match(value) else "is not a role name (lower-case letters, digits, '_')"
    allowed = {
        "purpose": (*PURPOSES, "*"),
        "tier": (*TIERS, "*"),
        "field_role": (*FIELD_ROLES, "*"),
        "view": GRANT_VIEWS,
        "action": ACTIONS,
    }[kind]
    return None if value in allowed else f"must be one of {', '.join(allowed)}"


def parse_policy_text(text: str, source: str = "<policy>") -> list[PolicyLine]:
    """Validate a casbin policy CSV against this product's vocabulary; ConfigError names the line."""
    lines: list[PolicyLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = [t.strip() for t in line.split(",")]
        ptype, values = tokens[0], tokens[1:]
        where = f"{source}:{number}"
        if ptype not in _POLICY_FORMS:
            raise ConfigError(
                f"{where}: line starts with {ptype!r}; expected 'p' (field access), 'p2' (action) or 'g' (inheritance)"
            )
        form = _POLICY_FORMS[ptype]
        if len(values) != len(form):
            raise ConfigError(
                f"{where}: '{ptype}' line has {len(values)} value(s); expected {len(form)}: {ptype}, {', '.join(form)}"
            )
        for kind, value in zip(form, values):
            if not value:
                raise ConfigError(f"{where}: {kind} is empty; expected {ptype}, {', '.join(form)}")
            problem = _check_token(kind, value)
            if problem:
                raise ConfigError(f"{where}: {kind} {value!r} {problem}")
        if ptype == "g" and values[0] == values[1]:
            raise ConfigError(f"{where}: role {values[0]!r} cannot inherit from itself")
        lines.append(PolicyLine(ptype, tuple(values), number))
    if not any(p.ptype in ("p", "p2") for p in lines):
        raise ConfigError(f"{source}: no 'p' or 'p2' rules found; is this the right policy file?")
    return lines


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path in partner.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read as UTF-8 text: {exc.__class__.__name__}") from None


def bundled_policy_text() -> str:
    """The default policy CSV shipped with the package."""
    return default_policy.POLICY_CSV


def bundled_model_text() -> str:
    """The casbin model shipped with the package."""
    return default_policy.MODEL_CONF


def write_default_policy(path: Path, *, overwrite: bool = False) -> Path:
    """Copy the bundled policy CSV to ``path`` (atomically) so a partner admin can edit it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass overwrite=True to replace it with the default policy")
    atomic_write_text(path, bundled_policy_text(), mode=0o600)
    return path


def _build_model(text: str, source: str) -> Model:
    model = Model()
    try:
        model.load_model_from_text(text)
    except Exception as exc:  # casbin raises assorted errors for a bad model
        raise ConfigError(f"{source}: not a valid casbin model ({exc.__class__.__name__}: {exc})") from None
    need = {("r", "r"): 5, ("r", "r2"): 2, ("p", "p"): 5, ("p", "p2"): 2}
    for (sec, key), count in need.items():
        if sec not in model.keys() or key not in model[sec] or len(model[sec][key].tokens) != count:
            raise ConfigError(
                f"{source}: section '{key}' must be defined with {count} tokens (see the bundled model.conf)"
            )
    for key in ("m", "m2"):
        if "m" not in model.keys() or key not in model["m"]:
            raise ConfigError(f"{source}: matcher '{key}' is missing (see the bundled model.conf)")
    if "e" not in model.keys() or "e" not in model["e"]:
        raise ConfigError(f"{source}: policy effect 'e' is missing (see the bundled model.conf)")
    return model


# --------------------------------------------------------------------------- policy


_BUILT: OrderedDict[tuple[str, str, str, str], AccessPolicy] = OrderedDict()  # see from_text
_BUILT_LOCK = threading.Lock()
_BUILT_MAX = 16


class AccessPolicy:
    """Field-level and action-level decisions from a validated casbin policy."""

    def __init__(self, enforcer: casbin.Enforcer, lines: Sequence[PolicyLine], source: str) -> None:
        self._enforcer = enforcer
        self._lines = tuple(lines)
        self.source = source
        self._lock = threading.Lock()
        self._grant_cache: dict[tuple[str, str, str, str], dict[str, str]] = {}
        self._purpose_cache: dict[str, frozenset[str]] = {}
        mentioned = {v for ln in self._lines for v in (ln.values if ln.ptype == "g" else ln.values[:1])}
        self.roles: frozenset[str] = frozenset(ROLES) | frozenset(mentioned)

    # ---- construction

    @classmethod
    def default(cls) -> AccessPolicy:
        """The bundled model.conf + policy.csv."""
        return cls.from_text(bundled_policy_text(), bundled_model_text(), source="bundled policy.csv")

    @classmethod
    def load(cls, policy_csv: Path, model_conf: Path | None = None) -> AccessPolicy:
        """Load a partner's policy CSV (and optionally its own casbin model); ConfigError if malformed."""
        policy_text = _read_text(policy_csv, "policy file")
        if model_conf is None:
            model_text, model_source = bundled_model_text(), "bundled model.conf"
        else:
            model_text, model_source = _read_text(model_conf, "casbin model file"), str(model_conf)
        return cls.from_text(policy_text, model_text, source=str(policy_csv), model_source=model_source)

    @classmethod
    def from_text(
        cls,
        policy_text: str,
        model_text: str | None = None,
        *,
        source: str = "<policy>",
        model_source: str = "<model>",
    ) -> AccessPolicy:
        """Build from CSV text (tests and callers that keep the policy elsewhere).

        A policy never changes once built, so the same texts (and names) give the same object:
        a store is opened for every read, and rebuilding the casbin enforcer, then asking it again
        what it answered before (:meth:`_grants` keeps its answers), cost a node milliseconds a read.
        Any change to either text builds a new policy."""
        key = (
            policy_text,
            model_text if model_text is not None else bundled_model_text(),
            source,
            model_source,
        )
        with _BUILT_LOCK:
            built = _BUILT.get(key)
            if built is not None:
                _BUILT.move_to_end(key)
                return built
        lines = parse_policy_text(policy_text, source)
        model = _build_model(model_text if model_text is not None else bundled_model_text(), model_source)
        if any(ln.ptype == "g" for ln in lines) and ("g" not in model.keys() or "g" not in model["g"]):
            raise ConfigError(
                f"{source}: has 'g' (inheritance) lines but the casbin model defines no 'g' role"
            )
        enforcer = casbin.Enforcer(model)
        for ln in lines:
            if ln.ptype == "g":
                enforcer.add_named_grouping_policy("g", *ln.values)
            else:
                enforcer.add_named_policy(ln.ptype, *ln.values)
        policy = cls(enforcer, lines, source)
        policy._check_model_answers(model_source)
        with _BUILT_LOCK:
            policy = _BUILT.setdefault(key, policy)  # another thread built it meanwhile: one object
            while len(_BUILT) > _BUILT_MAX:
                _BUILT.popitem(last=False)
        return policy

    def _check_model_answers(self, model_source: str) -> None:
        """Ask the enforcer once of each kind so a broken custom matcher fails at load, not mid-read."""
        try:
            with self._lock:
                self._enforcer.enforce("data_scientist", "training", "public", "feature", "clear")
                self._enforcer.enforce(self._enforcer.new_enforce_context("2"), "partner_admin", "ingest")
        except Exception as exc:
            raise ConfigError(f"{model_source}: the casbin matchers cannot be evaluated ({exc})") from None

    # ---- introspection

    @property
    def lines(self) -> tuple[PolicyLine, ...]:
        return self._lines

    def _role_closure(self, role: str) -> set[str]:
        with self._lock:
            return {role, *self._enforcer.get_implicit_roles_for_user(role)}

    def granted_purposes(self, role: str) -> frozenset[str]:
        """Purposes for which ``role`` (or a role it inherits) has any field grant."""
        cached = self._purpose_cache.get(role)
        if cached is not None:
            return cached
        closure = self._role_closure(role)
        out: set[str] = set()
        for ln in self._lines:
            if ln.ptype == "p" and ln.values[0] in closure:
                out.update(PURPOSES if ln.values[1] == "*" else (ln.values[1],))
        self._purpose_cache[role] = frozenset(out)
        return self._purpose_cache[role]

    def approval_gated(self, role: str, purpose: str) -> bool:
        """Whether some grant for ``role``/``purpose`` needs approvals (so a request makes sense)."""
        closure = self._role_closure(role)
        return any(
            ln.ptype == "p"
            and ln.values[0] in closure
            and ln.values[1] in (purpose, "*")
            and ln.values[4] == APPROVAL_GATED
            for ln in self._lines
        )

    def approver_roles(self) -> frozenset[str]:
        """Roles that may sign approvals."""
        return frozenset(r for r in self.roles if self._may_role(r, "approve"))

    def check_actor(self, actor: Actor) -> str:
        """The actor's role, or AccessDenied if the policy does not know it."""
        if not isinstance(actor, Actor):
            raise ConfigError(f"expected an Actor, got {type(actor).__name__}")
        if actor.role not in self.roles:
            raise AccessDenied(
                f"actor '{actor.name}' has role '{actor.role}', which the policy {self.source} does not know; "
                f"known roles: {', '.join(sorted(self.roles))}"
            )
        return actor.role

    # ---- field decisions

    def _grants(self, role: str, purpose: str, tier: str, frole: str) -> dict[str, str]:
        """View -> the policy line granting it, for one (role, purpose, tier, field role)."""
        key = (role, purpose, tier, frole)
        with self._lock:
            cached = self._grant_cache.get(key)
            if cached is not None:
                return cached
            found: dict[str, str] = {}
            for view in GRANT_VIEWS:
                ok, rule = self._enforcer.enforce_ex(role, purpose, tier, frole, view)
                if ok:
                    found[view] = ("p, " + ", ".join(rule)) if rule else "model matcher"
            self._grant_cache[key] = found
            return found

    def decide(
        self,
        actor: Actor,
        purpose: str,
        field: FieldRef,
        *,
        approval: Approval | None = None,
        now: datetime | None = None,
    ) -> FieldDecision:
        """The view ``actor`` gets of ``field`` for ``purpose``; the most open view the policy grants."""
        role = self.check_actor(actor)
        return self._decide(actor, role, purpose, field, approval, now)

    def _decide(
        self,
        actor: Actor,
        role: str,
        purpose: str,
        field: FieldRef,
        approval: Approval | None,
        now: datetime | None,
    ) -> FieldDecision:
        if not isinstance(field, FieldRef):
            raise SchemaError(f"expected a FieldRef, got {type(field).__name__}")
        name = field.name
        if purpose not in PURPOSES:
            shown = purpose if isinstance(purpose, str) and len(purpose) <= 40 else "<unrecognised>"
            return FieldDecision(name, "denied", f"unknown purpose {shown!r} (one of {', '.join(PURPOSES)})")
        if purpose not in self.granted_purposes(role):
            return FieldDecision(name, "denied", f"purpose '{purpose}' not granted to role '{role}'")
        grants = self._grants(role, purpose, field.tier, field.role)
        if "clear" in grants:
            return FieldDecision(name, "clear", f"rule '{grants['clear']}'")
        gated: str | None = None
        if APPROVAL_GATED in grants:
            problem = "no approval given" if approval is None else approval.problem(actor, purpose, name, now)
            if approval is not None and problem is None:
                rule = grants[APPROVAL_GATED]
                return FieldDecision(name, "clear", f"approval {approval.approval_id} under rule '{rule}'")
            gated = f"{field.tier} field needs two approvals"
            if approval is not None:
                gated += f": {problem}"
        if "masked" in grants:
            reason = f"rule '{grants['masked']}'" + ("; clear needs two approvals" if gated else "")
            return FieldDecision(name, "masked", reason)
        if gated:
            return FieldDecision(name, "denied", gated)
        return FieldDecision(
            name, "denied", f"no rule grants role '{role}' {field.tier} {field.role} fields for '{purpose}'"
        )

    def decide_many(
        self,
        actor: Actor,
        purpose: str,
        fields: Sequence[FieldRef],
        *,
        approval: Approval | None = None,
        now: datetime | None = None,
    ) -> list[FieldDecision]:
        """One decision per field, in order."""
        role = self.check_actor(actor)
        at = utc_now(now)
        return [self._decide(actor, role, purpose, f, approval, at) for f in fields]

    # ---- actions

    def _may_role(self, role: str, action: str) -> bool:
        with self._lock:
            return bool(self._enforcer.enforce(self._enforcer.new_enforce_context("2"), role, action))

    def may(self, actor: Actor, action: str) -> bool:
        """Whether ``actor`` may perform the non-data ``action``; ConfigError for an unknown action."""
        role = self.check_actor(actor)
        if action not in ACTIONS:
            raise ConfigError(f"unknown action {action!r}; actions are {', '.join(ACTIONS)}")
        return self._may_role(role, action)

    def require(self, actor: Actor, action: str) -> None:
        """Raise AccessDenied unless ``actor`` may perform ``action``."""
        if not self.may(actor, action):
            raise AccessDenied(
                f"actor '{actor.name}' with role '{actor.role}' may not '{action}' under policy {self.source}; "
                f"ask the partner admin for a role allowed '{action}' (the policy file grants it with a line "
                f"'p2, ROLE, {action}')"
            )


# --------------------------------------------------------------------------- approvals
