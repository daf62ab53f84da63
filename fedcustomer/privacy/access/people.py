"""The partner's registry of people and services: who holds which identity key, in which role.

The registry is an append-only chain of signed events in one JSON-lines file
(``people.jsonl`` in the partner home). Each event adds a key (a person's or a
service's) or revokes one; it names the previous event's SHA-256 and is signed by the
identity key of a registered manager (a role the access policy allows ``people``). The
first event, written at ``init``, is the first admin's own key, signed by itself.

Whoever edits the file by hand (a role raised, a key swapped, an event removed) breaks
a signature or the chain, and the registry refuses to open: every governance request
is then refused until the file is restored. Roles are read from here, never from the
caller. Revoking a key takes effect on the next request, in every process, because the
registry is re-read whenever the file changes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, IntegrityError
from fedcustomer.privacy.access.lookalikes import same_identity
from fedcustomer.privacy.access.person_keys import (
    Signer,
    key_id_of,
    public_key_from_text,
    public_key_text,
    verify_signature,
)
from fedcustomer.privacy.access.policy import Actor, parse_utc, utc_now

GENESIS = "0" * 64
KINDS = ("person", "service")
MANAGE_ACTION = "people"
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DOMAIN = b"fedcustomer-people-v1\n"

MayManage = Callable[[str], bool]
"""Whether a role may add and revoke keys (the policy's ``people`` action)."""


@dataclass(frozen=True)
class PersonKey:
    """One registered identity key and what the registry says about it."""

    key_id: str
    name: str
    role: str
    kind: str
    public_key: Ed25519PublicKey
    added_at: str
    added_by: str
    expires_at: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    def problem_at(self, at: datetime) -> str | None:
        """Why this key may not act at ``at`` (revoked, expired, not yet added), or None."""
        if self.revoked_at is not None and at >= parse_utc(self.revoked_at):
            return f"key {self.key_id} of '{self.name}' was revoked at {self.revoked_at}"
        if self.expires_at is not None and at >= parse_utc(self.expires_at):
            return f"key {self.key_id} of '{self.name}' expired at {self.expires_at}"
        if at < parse_utc(self.added_at):
            return f"key {self.key_id} of '{self.name}' was registered only at {self.added_at}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "added_at": self.added_at,
            "added_by": self.added_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
            "status": "revoked" if self.revoked_at else "active",
        }


def _canonical(event: dict[str, Any]) -> bytes:
    body = {k: v for k, v in event.items() if k != "signature"}
    return _DOMAIN + _ENCODER.encode(body).encode("utf-8")


def _line(event: dict[str, Any]) -> bytes:
    return _ENCODER.encode(event).encode("utf-8")


class _Replay:
    """The registry state built by checking every event in order."""

    def __init__(self, source: Path, may_manage: MayManage) -> None:
        self.source = source
        self.may_manage = may_manage
        self.keys: dict[str, PersonKey] = {}
        self.head = GENESIS
        self.last_time: datetime | None = None
        self.count = 0

    def fail(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"people registry {self.source} failed verification at event {self.count}: {why}; it was edited outside "
            f"`fedcustomer people` (restore it from backup; until then every governance request is refused)"
        )

    def manager(self, key_id: str, at: datetime) -> PersonKey:
        signer = self.keys.get(key_id)
        if signer is None:
            raise self.fail(f"signed by unregistered key {key_id}")
        problem = signer.problem_at(at)
        if problem:
            raise self.fail(f"signed by a key that could not act: {problem}")
        if not self.may_manage(signer.role):
            raise self.fail(f"signed by '{signer.name}' whose role '{signer.role}' may not manage people")
        return signer

    def apply(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            assert isinstance(event, dict)
            seq, prev, op, by, when = event["seq"], event["prev"], event["op"], event["by"], event["time"]
            signature = base64.b64decode(event["signature"], validate=True)
            at = parse_utc(when)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise self.fail("not a well-formed registry event") from None
        if _line(event) != raw:
            raise self.fail("not in canonical form")
        if seq != self.count or prev != self.head:
            raise self.fail("the chain is broken (an event was removed, reordered or inserted)")
        if self.last_time is not None and at < self.last_time:
            raise self.fail("events go back in time")
        if op == "add":
            self._add(event, at, by, signature)
        elif op == "revoke":
            self._revoke(event, at, by, signature)
        else:
            raise self.fail(f"unknown operation {op!r}")
        self.head = hashlib.sha256(raw).hexdigest()
        self.last_time = at
        self.count += 1

    def _check_signature(self, event: dict[str, Any], public_key: Ed25519PublicKey, signature: bytes) -> None:
        if not verify_signature(public_key, signature, _canonical(event)):
            raise self.fail("a signature does not verify")

    def _add(self, event: dict[str, Any], at: datetime, by: str, signature: bytes) -> None:
        try:
            public_key = public_key_from_text(event["public_key"])
            name, role, kind, key_id = event["name"], event["role"], event["kind"], event["key_id"]
        except (KeyError, TypeError, FedCustomerError):
            raise self.fail("an added key is malformed") from None
        if key_id_of(public_key) != key_id or kind not in KINDS:
            raise self.fail("an added key's id or kind is wrong")
        if key_id in self.keys:
            raise self.fail(f"key {key_id} is added twice")
        if self.count == 0:
            if by != key_id or not self.may_manage(role):
                raise self.fail("the first event must be a manager's own key, signed by itself")
            signer_key = public_key
        else:
            signer_key = self.manager(by, at).public_key
        self._check_signature(event, signer_key, signature)
        self.keys[key_id] = PersonKey(
            key_id, name, role, kind, public_key, event["time"], by, event.get("expires_at")
        )

    def _revoke(self, event: dict[str, Any], at: datetime, by: str, signature: bytes) -> None:
        target = self.keys.get(event.get("key_id", ""))
        if target is None or target.revoked_at is not None:
            raise self.fail("revokes a key that is not registered or already revoked")
        self._check_signature(event, self.manager(by, at).public_key, signature)
        self.keys[target.key_id] = replace(
            target, revoked_at=event["time"], revoked_by=by, revoke_reason=event.get("reason")
        )


class PeopleRegistry:
    """Read and extend one partner's people registry (see the module docstring)."""

    def __init__(self, path: Path, may_manage: MayManage) -> None:
        self.path = Path(path)
        self.may_manage = may_manage
        self._stamp: tuple[int, int, int] | None = None
        self._state: _Replay | None = None

    @classmethod
    def create(
        cls,
        path: Path,
        admin: Signer,
        name: str,
        role: str,
        may_manage: MayManage,
        *,
        now: datetime | None = None,
    ) -> PeopleRegistry:
        """A new registry whose first event registers ``admin`` (signed by itself)."""
        path = Path(path)
        if path.exists():
            raise ConfigError(f"{path} exists: this home already has a people registry")
        if not may_manage(role):
            raise ConfigError(f"the first person must have a role that may manage people; '{role}' may not")
        registry = cls(path, may_manage)
        registry._append(admin, _add_event(admin.public_key, name, role, "person", None), now, first=True)
        return registry

    # ---- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def _load(self) -> _Replay:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise IntegrityError(
                f"people registry {self.path} is missing; restore it from backup (every governance request "
                f"is refused without it)"
            ) from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._state is None or stamp != self._stamp:
            state = _Replay(self.path, self.may_manage)
            for raw in self.path.read_bytes().splitlines():
                state.apply(raw)
            if state.count == 0:
                raise state.fail("the registry is empty")
            self._state, self._stamp = state, stamp
        return self._state

    def keys(self) -> list[PersonKey]:
        return list(self._load().keys.values())

    def head(self) -> str:
        """SHA-256 of the last event: what the audit log records when the registry changes."""
        return self._load().head

    def lookup(self, key_id: str) -> PersonKey | None:
        return self._load().keys.get(key_id)

    def active(self, key_id: str, at: datetime | None = None) -> PersonKey:
        """The registered, unrevoked, unexpired key; AccessDenied saying why not otherwise."""
        person = self.lookup(key_id)
        if person is None:
            raise AccessDenied(
                f"identity key {key_id} is not registered in this partner's people registry: sign with "
                "a key registered in this home, or have one of its partner admins register yours "
                "(`fedcustomer people add --public-key FILE.pub ...`)"
            )
        problem = person.problem_at(utc_now(at))
        if problem:
            raise AccessDenied(problem)
        return person

    # ---- changing --------------------------------------------------------------------------

    def add(
        self,
        by: Signer,
        public_key: Ed25519PublicKey,
        name: str,
        role: str,
        *,
        kind: str = "person",
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> PersonKey:
        """Register a key for ``name`` in ``role``; refused if the name already has an active key."""
        if kind not in KINDS:
            raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        Actor(name, role)  # the same name and role rules as every actor
        at = utc_now(now)
        expiry = None if expires_at is None else utc_now(expires_at).isoformat(timespec="seconds")
        if expires_at is not None and utc_now(expires_at) <= at:
            raise ConfigError(f"expiry {expiry} is not in the future")
        event = _add_event(public_key, name, role, kind, expiry)
        with self._locked():
            state = self._load()
            if event["key_id"] in state.keys:
                raise ConfigError(f"key {event['key_id']} is already registered")
            for other in state.keys.values():
                if other.revoked_at is None and same_identity(other.name, name):
                    raise ConfigError(
                        f"'{other.name}' already has an active key ({other.key_id}); revoke it first to give "
                        f"them a new one"
                    )
            self._append(by, event, now)
        person = self.lookup(event["key_id"])
        assert person is not None
        return person

    def revoke(self, by: Signer, key_id: str, reason: str, *, now: datetime | None = None) -> PersonKey:
        """Revoke a key at once; the person can no longer sign requests or approvals."""
        with self._locked():
            target = self._load().keys.get(key_id)
            if target is None:
                raise ConfigError(f"key {key_id} is not registered")
            if target.revoked_at is not None:
                raise ConfigError(
                    f"key {key_id} of '{target.name}' was already revoked at {target.revoked_at}"
                )
            self._append(by, {"op": "revoke", "key_id": key_id, "reason": reason}, now)
        person = self.lookup(key_id)
        assert person is not None
        return person

    def find_active(self, name: str) -> PersonKey:
        """The active key of the person called ``name`` (look-alike names match)."""
        for person in self.keys():
            if person.revoked_at is None and same_identity(person.name, name):
                return person
        raise ConfigError(f"no active key registered for '{name}'")

    def _append(self, by: Signer, body: dict[str, Any], now: datetime | None, *, first: bool = False) -> None:
        at = utc_now(now)
        if first:
            state = _Replay(self.path, self.may_manage)
            existing = b""
        else:
            state = self._load()
            existing = self.path.read_bytes()
            if state.last_time is not None and at < state.last_time:
                at = state.last_time
            signer = state.keys.get(by.key_id)
            problem = f"key {by.key_id} is not registered" if signer is None else signer.problem_at(at)
            if problem:
                raise AccessDenied(f"cannot sign a change of the people registry: {problem}")
            assert signer is not None
            if not self.may_manage(signer.role):
                raise AccessDenied(
                    f"'{signer.name}' with role '{signer.role}' may not manage people (the policy's "
                    f"'{MANAGE_ACTION}' action)"
                )
        event = {
            **body,
            "seq": state.count,
            "prev": state.head,
            "time": at.isoformat(timespec="seconds"),
            "by": by.key_id,
        }
        event["signature"] = base64.b64encode(by.sign(_canonical(event))).decode("ascii")
        raw = _line(event)
        check = _Replay(self.path, self.may_manage)
        for line in [*existing.splitlines(), raw]:
            check.apply(line)  # never write an event the registry would refuse to read back
        atomic_write_bytes(self.path, existing + raw + b"\n")
        self._state = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers: two admins adding at once cannot lose an event."""
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._state = None
            yield
        finally:
            os.close(fd)


def _add_event(
    public_key: Ed25519PublicKey, name: str, role: str, kind: str, expires_at: str | None
) -> dict[str, Any]:
    return {
        "op": "add",
        "key_id": key_id_of(public_key),
        "public_key": public_key_text(public_key),
        "name": name,
        "role": role,
        "kind": kind,
        "expires_at": expires_at,
    }
