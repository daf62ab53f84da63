"""Two-person approvals for clear reads of core fields, kept in a small SQLite file.

A requester opens a request for named fields, a purpose and a dataset; it becomes an
:class:`~fedcustomer.privacy.access.policy.Approval` once ``REQUIRED_APPROVERS`` distinct
people whose role may ``approve`` have signed it, none of them the requester, before it
expires.

In a home with a people registry (every home made by ``fedcustomer init``) an approval
is an Ed25519 signature by a registered approver over the request's digest: the book
keeps the signed approval, and counts it only while its key is registered, unrevoked,
unexpired and held by someone else than the requester, in a role that may approve.
Each count re-checks the signature, so a row typed into the database counts for nothing.
Homes without a registry (development homes made through the Python API) tell
approvers apart by :func:`identity_key`, so look-alike names count once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError
from fedcustomer.privacy.access.lookalikes import identity_keys, same_identity
from fedcustomer.privacy.access.people import PeopleRegistry
from fedcustomer.privacy.access.person_keys import verify_signature
from fedcustomer.privacy.access.policy import (
    PURPOSES,
    REQUIRED_APPROVERS,
    AccessPolicy,
    Actor,
    Approval,
    distinct_people,
    parse_utc,
    utc_now,
)
from fedcustomer.privacy.access.requests import AuthenticatedActor, SignedRequest

MAX_APPROVAL_TTL = timedelta(days=7)


def identity_key(name: str) -> str:
    """The stored key of an approver: NFKC, case-folded confusables skeleton of the name."""
    return identity_keys(name)[0]


def _iso(t: datetime) -> str:
    return utc_now(t).isoformat(timespec="seconds")


_APPROVAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    requester_role TEXT NOT NULL,
    dataset TEXT NOT NULL,
    fields TEXT NOT NULL,
    purpose TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signatures (
    request_id TEXT NOT NULL REFERENCES requests(request_id),
    approver_key TEXT NOT NULL,
    approver TEXT NOT NULL,
    approver_role TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    PRIMARY KEY (request_id, approver_key)
);
"""
# Columns added for signed requests and approvals (older books gain them when opened).
_SIGNED_COLUMNS = (
    ("requests", "digest", "TEXT"),
    ("requests", "requester_key", "TEXT"),
    ("signatures", "key_id", "TEXT"),
    ("signatures", "signed", "TEXT"),
)
_REQUEST_COLUMNS = "request_id, requester, requester_role, dataset, fields, purpose, requested_at, expires_at, digest, requester_key"


class ApprovalBook:
    """Approval requests and their signatures, persisted in one SQLite file.

    A request becomes an :class:`Approval` once ``REQUIRED_APPROVERS`` distinct actors whose
    role may ``approve`` have signed it, none of them the requester, before it expires.
    """

    def __init__(self, db_path: Path, policy: AccessPolicy, registry: PeopleRegistry | None = None) -> None:
        self.db_path = Path(db_path)
        self.policy = policy
        self.registry = registry
        with self._translate_errors():
            con = sqlite3.connect(self.db_path, timeout=30)
            try:
                con.executescript(_APPROVAL_SCHEMA)
                for table, column, kind in _SIGNED_COLUMNS:
                    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                    if column not in have:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                con.commit()
            finally:
                con.close()

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """SQLite failures as product errors: corruption vs. a file that cannot be opened or is busy."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"approvals database {self.db_path} cannot be used ({exc}); check the partner home exists "
                "and no other process holds the file"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(
                f"approvals database {self.db_path} is unreadable or corrupt: {exc}"
            ) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: concurrent approvers are serialised, failures roll back."""
        with self._translate_errors(), closing(connect(self.db_path)) as con, transaction(con):
            yield con

    def request(
        self,
        requester: Actor,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        ttl: timedelta = timedelta(hours=8),
        *,
        now: datetime | None = None,
    ) -> str:
        """Open a request for clear access to ``fields``; returns its id for the approvers."""
        role = self.policy.check_actor(requester)
        if purpose not in PURPOSES:
            raise ConfigError(f"unknown purpose {purpose!r}; purposes are {', '.join(PURPOSES)}")
        if not self.policy.approval_gated(role, purpose):
            raise AccessDenied(
                f"role '{role}' has no approval-gated grant for purpose '{purpose}' in {self.policy.source}; "
                "an approval would not change what it may read"
            )
        if not isinstance(dataset, str) or not dataset.strip():
            raise ConfigError("dataset name is empty; name the dataset the approval is for")
        if isinstance(fields, str):
            raise ConfigError("fields must be a sequence of field names, not one string")
        names = list(dict.fromkeys(fields))
        if not names or not all(isinstance(f, str) and f for f in names):
            raise ConfigError("fields must name at least one field, each a non-empty string")
        if not (timedelta(0) < ttl <= MAX_APPROVAL_TTL):
            raise ConfigError(f"approval ttl {ttl} must be positive and at most {MAX_APPROVAL_TTL}")
        at = utc_now(now)
        request_id = secrets.token_hex(16)
        signed = self._signed_by(requester)
        with self._tx() as con:
            con.execute(
                f"INSERT INTO requests ({_REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    requester.name,
                    role,
                    dataset,
                    json.dumps(names),
                    purpose,
                    _iso(at),
                    _iso(at + ttl),
                    None if signed is None else signed.signed.request.digest(),  # type: ignore[union-attr]
                    None if signed is None else signed.key_id,
                ),
            )
        return request_id

    def _signed_by(self, actor: Actor) -> AuthenticatedActor | None:
        """The authenticated actor in a home with a registry (AccessDenied for a bare name)."""
        if self.registry is None:
            return None
        if not isinstance(actor, AuthenticatedActor) or actor.signed is None:
            raise AccessDenied(
                f"'{actor.name}' is not authenticated: this home has a people registry, so requests and "
                f"approvals must be signed with a registered identity key"
            )
        return actor

    def exists(self, request_id: str) -> bool:
        """Whether any approval request (open, approved or expired) has this id."""
        with self._tx() as con:
            row = con.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        return row is not None

    def why_not(
        self,
        request_id: str,
        requester: Actor,
        dataset: str,
        field: str,
        purpose: str,
        now: datetime | None = None,
    ) -> str | None:
        """Why approval ``request_id`` does not let ``requester`` read ``field`` now (None: it does)."""
        at = utc_now(now)
        with self._tx() as con:
            row = self._request_row(con, request_id)
            if row is None:
                return f"no approval request {request_id} exists in this home"
            signers = self._valid_signers(con, request_id, row[1], at)
        if not same_identity(row[1], requester.name):
            return f"approval {request_id} was requested by someone else; ask for your own"
        if (row[3], row[5]) != (dataset, purpose):
            return f"approval {request_id} is for dataset '{row[3]}' and purpose '{row[5]}'"
        if field not in json.loads(row[4]):
            return f"approval {request_id} covers {', '.join(json.loads(row[4]))} only"
        if at >= parse_utc(row[7]):
            return f"approval {request_id} expired at {row[7]}; ask again"
        if len(signers) < REQUIRED_APPROVERS:
            return (
                f"approval {request_id} has {len(signers)} of {REQUIRED_APPROVERS} approvals; "
                "`fedcustomer approvals list` shows it until it is complete"
            )
        return None

    def digest_of(self, request_id: str) -> str | None:
        """The digest of the signed request an approval must sign over (None: unsigned or unknown)."""
        with self._tx() as con:
            row = con.execute("SELECT digest FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else row[0]

    def _valid_signers(
        self, con: sqlite3.Connection, request_id: str, requester: str, now: datetime | None = None
    ) -> list[str]:
        """Signers that still count: distinct, not the requester, and whose role may still approve."""
        if self.registry is not None:
            return self._valid_key_signers(con, request_id, requester, utc_now(now))
        rows = con.execute(
            "SELECT approver, approver_role FROM signatures WHERE request_id = ? ORDER BY rowid",
            (request_id,),
        ).fetchall()
        approvers = self.policy.approver_roles()
        return distinct_people(
            [name for name, role in rows if role in approvers and not same_identity(name, requester)]
        )

    def _valid_key_signers(
        self, con: sqlite3.Connection, request_id: str, requester: str, at: datetime
    ) -> list[str]:
        """Registered approvers whose signature over the request digest verifies, checked now."""
        assert self.registry is not None
        found = con.execute(
            "SELECT digest, requester_key FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        if found is None or found[0] is None:
            return []
        digest, requester_key = found
        approvers = self.policy.approver_roles()
        names: list[str] = []
        keys: set[str] = set()
        rows = con.execute(
            "SELECT key_id, signed FROM signatures WHERE request_id = ? ORDER BY rowid", (request_id,)
        ).fetchall()
        for key_id, signed_text in rows:
            person = self.registry.lookup(key_id or "")
            if person is None or signed_text is None or key_id in keys or key_id == requester_key:
                continue
            if person.problem_at(at) or person.role not in approvers or same_identity(person.name, requester):
                continue
            try:
                signed = SignedRequest.from_dict(json.loads(signed_text))
            except (AccessDenied, ValueError):
                continue
            body = signed.request
            if (
                body.key_id != key_id
                or body.action != "approve"
                or body.extra.get("request_digest") != digest
                or body.extra.get("request_id") != request_id
                or not verify_signature(person.public_key, signed.signature, body.canonical())
            ):
                continue
            keys.add(key_id)
            names.append(person.name)
        return distinct_people(names)

    @staticmethod
    def _request_row(con: sqlite3.Connection, request_id: str) -> tuple[Any, ...] | None:
        """The request's columns (``_REQUEST_COLUMNS``), or None when no such request exists."""
        row: tuple[Any, ...] | None = con.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return row

    @staticmethod
    def _approval(row: tuple[Any, ...], signers: Sequence[str]) -> Approval:
        request_id, requester, _role, dataset, fields, purpose, _requested, expires = row[:8]
        return Approval(
            request_id, requester, dataset, tuple(json.loads(fields)), purpose, tuple(signers), expires
        )

    def approve(self, request_id: str, approver: Actor, now: datetime | None = None) -> Approval | None:
        """Sign a request; returns the Approval once enough distinct approvers signed, else None."""
        role = self.policy.check_actor(approver)
        if not self.policy.may(approver, "approve"):
            raise AccessDenied(
                f"actor '{approver.name}' with role '{role}' may not approve requests under {self.policy.source}; "
                f"approver roles: {', '.join(sorted(self.policy.approver_roles())) or 'none'}"
            )
        at = utc_now(now)
        with self._tx() as con:
            row = self._request_row(con, request_id)
            if row is None:
                raise AccessDenied(
                    f"no approval request with id {request_id!r} exists in this home; list open ones with "
                    "`fedcustomer approvals list`"
                )
            requester, expires = row[1], row[7]
            if at >= parse_utc(expires):
                raise AccessDenied(
                    f"approval request {request_id} expired at {expires}; the requester must ask again"
                )
            signed = self._signed_by(approver)
            if signed is not None:
                self._check_signed_approval(con, row, signed)
            if same_identity(approver.name, requester):
                raise AccessDenied(
                    f"actor '{approver.name}' cannot approve their own request {request_id} (names are compared "
                    f"ignoring case, width and look-alike characters)"
                )
            previous = con.execute(
                "SELECT approver FROM signatures WHERE request_id = ?", (request_id,)
            ).fetchall()
            if any(same_identity(approver.name, name) for (name,) in previous):
                raise AccessDenied(
                    f"actor '{approver.name}' (or a name that looks the same) already approved request {request_id}; a "
                    f"different approver must sign"
                )
            con.execute(
                "INSERT INTO signatures (request_id, approver_key, approver, approver_role, signed_at, key_id, signed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    identity_key(approver.name) if signed is None else signed.key_id,
                    approver.name,
                    role,
                    _iso(at),
                    None if signed is None else signed.key_id,
                    None if signed is None else json.dumps(signed.audit_details()),
                ),
            )
            signers = self._valid_signers(con, request_id, requester, at)
        if len(signers) >= REQUIRED_APPROVERS:
            return self._approval(row, signers)
        return None

    @staticmethod
    def _check_signed_approval(
        con: sqlite3.Connection, row: tuple[Any, ...], approver: AuthenticatedActor
    ) -> None:
        """The approval must sign this request's digest, by a key not the requester's, once."""
        request_id, digest, requester_key = row[0], row[8], row[9]
        assert approver.signed is not None
        extra = approver.signed.request.extra
        if digest is None:
            raise AccessDenied(
                f"request {request_id} was not signed by its requester; it cannot be approved with signatures"
            )
        if extra.get("request_digest") != digest or extra.get("request_id") != request_id:
            raise AccessDenied(f"the approval signs a different request than {request_id}")
        if approver.key_id == requester_key:
            raise AccessDenied(f"key {approver.key_id} opened request {request_id}; it cannot approve it too")
        if con.execute(
            "SELECT 1 FROM signatures WHERE request_id = ? AND key_id = ?", (request_id, approver.key_id)
        ).fetchone():
            raise AccessDenied(
                f"key {approver.key_id} already approved request {request_id}; a different approver must sign"
            )

    def active_for(
        self,
        requester: Actor,
        dataset: str,
        fields: Sequence[str],
        purpose: str,
        now: datetime | None = None,
        request_id: str | None = None,
    ) -> Approval | None:
        """The fully signed, unexpired approval covering all ``fields``, or None (latest expiry wins).

        ``request_id`` names the one approval to use (a read's ``--approval``).
        """
        role = self.policy.check_actor(requester)
        at = utc_now(now)
        wanted = set(fields)
        best: Approval | None = None
        only = "" if request_id is None else " AND request_id = ?"
        with self._tx() as con:
            rows = con.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests "
                "WHERE requester = ? AND requester_role = ? AND dataset = ? AND purpose = ?" + only,
                (requester.name, role, dataset, purpose, *(() if request_id is None else (request_id,))),
            ).fetchall()
            for row in rows:
                if at >= parse_utc(row[7]) or not wanted <= set(json.loads(row[4])):
                    continue
                signers = self._valid_signers(con, row[0], row[1], at)
                if len(signers) < REQUIRED_APPROVERS:
                    continue
                candidate = self._approval(row, signers)
                if best is None or parse_utc(candidate.expires_at) > parse_utc(best.expires_at):
                    best = candidate
        return best

    def pending(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Unexpired requests still short of approvers, oldest first."""
        at = utc_now(now)
        out: list[dict[str, Any]] = []
        with self._tx() as con:
            rows = con.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests ORDER BY requested_at, rowid"
            ).fetchall()
            for row in rows:
                if at >= parse_utc(row[7]):
                    continue
                signers = self._valid_signers(con, row[0], row[1], at)
                if len(signers) >= REQUIRED_APPROVERS:
                    continue
                out.append(
                    {
                        "request_id": row[0],
                        "requester": row[1],
                        "role": row[2],
                        "dataset": row[3],
                        "fields": json.loads(row[4]),
                        "purpose": row[5],
                        "requested_at": row[6],
                        "expires_at": row[7],
                        "approvers": signers,
                        "approvals_needed": REQUIRED_APPROVERS - len(signers),
                    }
                )
        return out
