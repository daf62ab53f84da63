"""What an audit log holds: the entry and checkpoint records, their canonical bytes and hashes.

Every read, decryption, denial, approval, key operation, erasure, ingest, analytics query
and federated round becomes one :class:`AuditEntry`. A compliance officer must be able to
trust the log without trusting the node that wrote it, so the log is built to make any
later change visible (writing: :mod:`.writer`; checking: :mod:`.verifier`).

Layout of an audit directory::

    audit.jsonl           one entry per line, canonical JSON, hash-chained
    checkpoints.jsonl     one signed checkpoint per line
    audit_signing.pub     Ed25519 public key of the node (PEM), kept beside the log
    audit.lock            lock file serialising writers (several processes may append)
    repair.pending        only while a repair is under way: the bytes it cuts (see :mod:`.repair`)

Hash chain. Each entry's ``hash`` is SHA-256 over ``prev_hash`` (ASCII hex) followed by
the canonical JSON (sorted keys, no whitespace, UTF-8) of the entry without ``hash`` and
``prev_hash``. The first entry chains to :data:`GENESIS_HASH`. Verification hashes the
body bytes as stored, so even a change that keeps the parsed value (``1e-05`` to
``1E-05``) is reported.

Checkpoints. Every ``checkpoint_every`` entries, on ``AuditLog.checkpoint`` and on
``AuditLog.close``, the writer signs (Ed25519) a checkpoint holding the entry range
since the previous checkpoint, its count, the Merkle root over the range's entry hashes,
the head hash, the time, the byte offset where the range ends, and the digest of the
previous checkpoint. The hash chain alone can be recomputed by anyone who can edit the
file; the signed checkpoints cannot, so they pin everything they cover.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# --- vocabulary ---------------------------------------------------------------------------
ACTION_READ = "read"
ACTION_DECRYPT = "decrypt"
ACTION_APPROVAL_REQUEST = "approval_request"
ACTION_APPROVE = "approve"
ACTION_KEY_CREATE = "key_create"
ACTION_KEY_ROTATE = "key_rotate"
ACTION_KEY_RETIRE = "key_retire"
ACTION_ERASE = "erase"
ACTION_INGEST = "ingest"
ACTION_FL_ROUND = "fl_round"
ACTION_FL_EVALUATE = "fl_evaluate"  # a partner scored a job's model on its held-out customers
ACTION_VERTICAL_ROUND = "vertical_round"  # a split-learning party opened (paid) or refused a round
ACTION_VERTICAL_FINISH = "vertical_finish"  # a split-learning party ended its job: final part, accounting
ACTION_QUERY = "query"
ACTION_PSI_RELEASE = "psi_release"  # a partner paid (or refused) a DP count or intersection-sum of a PSI
ACTION_POLICY_CHANGE = "policy_change"
ACTION_AUDIT_QUERY = "audit_query"
ACTION_AUDIT_REPAIR = "audit_repair"
ACTIONS: frozenset[str] = frozenset(
    {
        ACTION_READ,
        ACTION_DECRYPT,
        ACTION_APPROVAL_REQUEST,
        ACTION_APPROVE,
        ACTION_KEY_CREATE,
        ACTION_KEY_ROTATE,
        ACTION_KEY_RETIRE,
        ACTION_ERASE,
        ACTION_INGEST,
        ACTION_FL_ROUND,
        ACTION_FL_EVALUATE,
        ACTION_VERTICAL_ROUND,
        ACTION_VERTICAL_FINISH,
        ACTION_QUERY,
        ACTION_PSI_RELEASE,
        ACTION_POLICY_CHANGE,
        ACTION_AUDIT_QUERY,
        ACTION_AUDIT_REPAIR,
    }
)
"""Actions used across the product; other lower-case identifiers are accepted too."""

DECISION_ALLOWED = "allowed"
DECISION_DENIED = "denied"
DECISIONS: frozenset[str] = frozenset({DECISION_ALLOWED, DECISION_DENIED})

PROBLEM_MODIFIED = "modified"
PROBLEM_DELETED = "deleted"
PROBLEM_INSERTED = "inserted"
PROBLEM_REORDERED = "reordered"
PROBLEM_TRUNCATED = "truncated"
PROBLEM_BAD_SIGNATURE = "bad-signature"
PROBLEM_MALFORMED = "malformed"
PROBLEMS: frozenset[str] = frozenset(
    {
        PROBLEM_MODIFIED,
        PROBLEM_DELETED,
        PROBLEM_INSERTED,
        PROBLEM_REORDERED,
        PROBLEM_TRUNCATED,
        PROBLEM_BAD_SIGNATURE,
        PROBLEM_MALFORMED,
    }
)

LOG_NAME = "audit.jsonl"
CHECKPOINT_NAME = "checkpoints.jsonl"
LOCK_NAME = "audit.lock"
PUBLIC_KEY_NAME = "audit_signing.pub"
SIGNING_KEY_NAME = "audit_signing.key"
REPAIR_PENDING_NAME = "repair.pending"
GENESIS_HASH = "0" * 64
_CHECKPOINT_DOMAIN = b"fedcustomer-audit-checkpoint-v1\n"

# Every key of an entry, in the order exports list them.
ENTRY_FIELDS = (
    "seq",
    "time",
    "actor",
    "role",
    "action",
    "decision",
    "dataset",
    "fields",
    "tier",
    "purpose",
    "approvals",
    "row_count",
    "reason",
    "pseudonyms",
    "details",
    "prev_hash",
    "hash",
)
_ENTRY_KEYS = frozenset(ENTRY_FIELDS)
_CHECKPOINT_KEYS = frozenset(
    {
        "number",
        "first_seq",
        "last_seq",
        "count",
        "root",
        "head_hash",
        "offset",
        "time",
        "prev_checkpoint",
        "key_id",
        "signature",
    }
)
HEX64 = re.compile(r"[0-9a-f]{64}")

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- canonical form and hashing ----------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return _ENCODER.encode(obj).encode("utf-8")


def entry_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """SHA-256 hex over ``prev_hash`` followed by the canonical body (entry minus hashes)."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def merkle_root(hashes: Sequence[str]) -> str:
    """Merkle root (hex) over entry hashes; leaves and nodes domain-separated (RFC 6962 style).

    An odd node at the end of a level is carried up unchanged. The root of no leaves is
    SHA-256 of the empty string, though checkpoints never cover an empty range.
    """
    if not hashes:
        return hashlib.sha256(b"").hexdigest()
    sha = hashlib.sha256
    level = [sha(b"\x00" + bytes.fromhex(h)).digest() for h in hashes]
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --- records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditEntry:
    """One audited event. ``hash`` chains it to the entry before (``prev_hash``)."""

    seq: int
    time: str
    actor: str
    role: str
    action: str
    decision: str
    dataset: str | None
    fields: tuple[str, ...]
    tier: str | None
    purpose: str | None
    approvals: tuple[str, ...]
    row_count: int | None
    reason: str | None
    pseudonyms: tuple[str, ...]
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed part: every field except ``prev_hash`` and ``hash``."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "decision": self.decision,
            "dataset": self.dataset,
            "fields": list(self.fields),
            "tier": self.tier,
            "purpose": self.purpose,
            "approvals": list(self.approvals),
            "row_count": self.row_count,
            "reason": self.reason,
            "pseudonyms": list(self.pseudonyms),
            "details": self.details,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, exactly the stored line's content."""
        d = self.body()
        d["prev_hash"] = self.prev_hash
        d["hash"] = self.hash
        return d

    @property
    def timestamp(self) -> datetime:
        """``time`` as an aware UTC datetime."""
        return datetime.fromisoformat(self.time)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditEntry:
        """Build from a stored dict; raises ``ValueError`` saying which field is wrong."""
        problem = entry_shape_problem(d)
        if problem:
            raise ValueError(problem)
        return cls.from_valid_dict(d)

    @classmethod
    def from_valid_dict(cls, d: Mapping[str, Any]) -> AuditEntry:
        return cls(
            seq=d["seq"],
            time=d["time"],
            actor=d["actor"],
            role=d["role"],
            action=d["action"],
            decision=d["decision"],
            dataset=d["dataset"],
            fields=tuple(d["fields"]),
            tier=d["tier"],
            purpose=d["purpose"],
            approvals=tuple(d["approvals"]),
            row_count=d["row_count"],
            reason=d["reason"],
            pseudonyms=tuple(d["pseudonyms"]),
            details=d["details"],
            prev_hash=d["prev_hash"],
            hash=d["hash"],
        )


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: entries ``first_seq..last_seq`` have this Merkle root and head."""

    number: int
    first_seq: int
    last_seq: int
    count: int
    root: str
    head_hash: str
    offset: int
    time: str
    prev_checkpoint: str
    key_id: str
    signature: str

    def payload(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["signature"]
        return d

    def signed_bytes(self) -> bytes:
        return _CHECKPOINT_DOMAIN + canonical_json(self.payload())

    def digest(self) -> str:
        """Hash of the whole checkpoint line; the next checkpoint records it."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "root": self.root,
            "head_hash": self.head_hash,
            "offset": self.offset,
            "time": self.time,
            "prev_checkpoint": self.prev_checkpoint,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        if not isinstance(d, dict) or set(d) != _CHECKPOINT_KEYS:
            raise ValueError("not a checkpoint object (wrong or missing keys)")
        for k in ("number", "first_seq", "last_seq", "count", "offset"):
            if not is_int(d[k]) or d[k] < 0:
                raise ValueError(f"field {k!r} must be a non-negative integer")
        for k in ("root", "head_hash", "prev_checkpoint"):
            if not isinstance(d[k], str) or not HEX64.fullmatch(d[k]):
                raise ValueError(f"field {k!r} must be 64 lower-case hex digits")
        for k in ("time", "key_id", "signature"):
            if not isinstance(d[k], str):
                raise ValueError(f"field {k!r} must be a string")
        if (
            d["first_seq"] < 1
            or d["last_seq"] < d["first_seq"]
            or d["count"] != d["last_seq"] - d["first_seq"] + 1
        ):
            raise ValueError("range and count disagree")
        return cls(**d)


@dataclass(frozen=True)
class VerifyReport:
    """Verdict of :meth:`AuditLog.verify`.

    ``entries`` and ``checkpoints`` count the lines in the two files. On failure
    ``problem`` is one of :data:`PROBLEMS`, ``first_bad_seq`` the sequence number the
    problem concerns, ``line`` the 1-based line in ``file`` where it was found, and
    ``message`` a sentence naming the entry or checkpoint.
    """

    ok: bool
    entries: int
    checkpoints: int
    first_bad_seq: int | None
    problem: str | None
    message: str
    line: int | None = None
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "message": self.message,
            "line": self.line,
            "file": self.file,
        }


# --- shape of stored records -------------------------------------------------------------------
def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_STR_KEYS = ("time", "actor", "role", "action", "decision")
_OPT_STR_KEYS = ("dataset", "tier", "purpose", "reason")
_LIST_KEYS = ("fields", "approvals", "pseudonyms")


def entry_shape_problem(d: Any) -> str | None:
    """Why ``d`` (as parsed by ``json.loads``) is not a well-formed stored entry, or None.

    Exact type checks are enough here: ``json.loads`` builds only plain types.
    """
    if type(d) is not dict:
        return "not a JSON object"
    if d.keys() != _ENTRY_KEYS:
        keys = set(d)
        missing, extra = sorted(_ENTRY_KEYS - keys), sorted(keys - _ENTRY_KEYS)
        return f"wrong fields (missing {missing}, unexpected {extra})"
    seq = d["seq"]
    if type(seq) is not int or seq < 1:
        return "field 'seq' must be a positive integer"
    for k in _STR_KEYS:
        if type(d[k]) is not str:
            return f"field {k!r} must be a string"
    for k in _OPT_STR_KEYS:
        v = d[k]
        if v is not None and type(v) is not str:
            return f"field {k!r} must be a string or null"
    for k in _LIST_KEYS:
        v = d[k]
        if type(v) is not list:
            return f"field {k!r} must be a list of strings"
        for x in v:
            if type(x) is not str:
                return f"field {k!r} must be a list of strings"
    rc = d["row_count"]
    if rc is not None and type(rc) is not int:
        return "field 'row_count' must be an integer or null"
    if type(d["details"]) is not dict:
        return "field 'details' must be an object"
    for k in ("prev_hash", "hash"):
        v = d[k]
        if type(v) is not str or not HEX64.fullmatch(v):
            return f"field {k!r} must be 64 lower-case hex digits"
    try:
        datetime.fromisoformat(d["time"])
    except ValueError:
        return "field 'time' is not an ISO 8601 timestamp"
    return None


def parse_json_line(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


@dataclass(slots=True)
class ParsedLine:
    """One entry line, parsed once for verification.

    ``self_ok``: the stored hash matches the stored bytes. ``canonical``: the two hash
    fields sit where canonical key order puts them (if not, the line was rewritten).
    """

    entry: dict[str, Any] | None
    error: str | None
    self_ok: bool = False
    canonical: bool = False


def parse_entry_line(raw: bytes) -> ParsedLine:
    """Parse one stored line and check its own hash against the bytes as stored.

    Writers store canonical JSON, in which ``hash`` and ``prev_hash`` directly follow
    ``fields`` (sorted key order). Removing the segment ``,"hash":"H","prev_hash":"P"``
    therefore leaves exactly the canonical body that was hashed, so the hash is checked
    over the stored bytes without re-encoding; any changed byte, even one that keeps the
    parsed value (``1e-05`` to ``1E-05``), breaks it. The segment is found with ``rfind``:
    after it come only scalars and lists of strings, in which quotes are escaped, so its
    last occurrence is the top-level one.
    """
    if not raw:
        return ParsedLine(None, "empty line")
    try:
        d = parse_json_line(raw)
    except (UnicodeDecodeError, ValueError):
        return ParsedLine(None, "not valid UTF-8 JSON")
    problem = entry_shape_problem(d)
    if problem:
        return ParsedLine(None, problem)
    h, p = d["hash"].encode("ascii"), d["prev_hash"].encode("ascii")
    segment = b',"hash":"' + h + b'","prev_hash":"' + p + b'"'
    i = raw.rfind(segment)
    if i < 0:
        return ParsedLine(d, None, False, False)
    body = raw[:i] + raw[i + len(segment) :]
    return ParsedLine(d, None, hashlib.sha256(p + body).hexdigest().encode("ascii") == h, True)
