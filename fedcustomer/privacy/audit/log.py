"""Tamper-evident audit log: who touched which customer field, why, approved by whom, when.

Every read, decryption, denial, approval, key operation, erasure, ingest, analytics query
and federated round becomes one :class:`AuditEntry`. A compliance officer must be able to
trust the log without trusting the node that wrote it, so the log is built to make any
later change visible:

Layout of an audit directory::

    audit.jsonl           one entry per line, canonical JSON, hash-chained
    checkpoints.jsonl     one signed checkpoint per line
    audit_signing.pub     Ed25519 public key of the node (PEM), kept beside the log
    audit.lock            lock file serialising writers (several processes may append)
    repair.pending        only while a repair is under way: the bytes it cuts (see Repair)

Hash chain. Each entry's ``hash`` is SHA-256 over ``prev_hash`` (ASCII hex) followed by
the canonical JSON (sorted keys, no whitespace, UTF-8) of the entry without ``hash`` and
``prev_hash``. The first entry chains to :data:`GENESIS_HASH`. Verification hashes the
body bytes as stored, so even a change that keeps the parsed value (``1e-05`` to
``1E-05``) is reported.

Checkpoints. Every ``checkpoint_every`` entries, on :meth:`AuditLog.checkpoint` and on
:meth:`AuditLog.close`, the writer signs (Ed25519) a checkpoint holding the entry range
since the previous checkpoint, its count, the Merkle root over the range's entry hashes,
the head hash, the time, the byte offset where the range ends, and the digest of the
previous checkpoint. The hash chain alone can be recomputed by anyone who can edit the
file; the signed checkpoints cannot, so they pin everything they cover.

Reach. The chain and the checkpoints cannot show that nothing is missing at the end:
whoever can write the directory can delete both files, cut both back together to an
earlier checkpoint, or write a fresh chain and drop the checkpoints. A log opened with a
``reach`` record (:mod:`fedcustomer.privacy.audit.reach`; a partner's store keeps it in
``store.db``, joining the store's transaction when one is open) records after every
append the newest entry's seq, hash and end offset (the log is fsynced first), and after
every checkpoint its number and digest. :meth:`AuditLog.verify` and :meth:`AuditLog.check_before_acting` then refuse a
log that ends before the recorded entry, holds another entry there, or holds fewer
checkpoints; a home with an audit signing key but no store may not have an empty log.

What :meth:`AuditLog.verify` detects, naming the first bad entry: a modified entry, a
deleted entry, an inserted entry, reordered entries, a malformed or torn line, a
truncation back past the last checkpoint, a forged, altered, removed or replayed
checkpoint, and a public key replaced beside the log; with a reach record also a
deleted log, a log and checkpoints rolled back together, a replaced chain, and removed
trailing checkpoints.

What it cannot detect: with no reach record (``--log DIR``), changes after the last
checkpoint by someone who can write the directory (cutting the log back to the last
checkpoint, appending plausible entries with a recomputed chain) and the whole-log
attacks above; with one, appending plausible entries after the recorded reach, and a
rollback of the audit directory *and* the reach (``store.db``) together, which needs
write access to both. Someone who also holds the signing key's directory can rewrite
everything and re-sign it. Remedies: keep the signing key and ``store.db`` where the
audited users cannot write, checkpoint often, and ship checkpoints or :meth:`AuditLog.head`
off the node (to the coordinator or a WORM store); verify against an off-node public key
(``public_key_path``).

Durability. Appends are not fsynced by default (a crash may lose the last entries, which
then look like a truncation after the last checkpoint); checkpoints fsync the log and the
checkpoint file. Pass ``durable=True`` to fsync every append (much slower). A crash in
the middle of writing a line leaves a torn (unterminated) last line: appends, checkpoints
and :meth:`AuditLog.check_before_acting` then refuse, so no action happens unlogged, and
``verify`` reports the line as malformed.

Repair. :meth:`AuditLog.repair_torn_tail` (``fedcustomer audit repair``) cuts only an
unterminated last line, only after the last signed checkpoint, and only when everything
before it verifies (reach included); the cut bytes go, in full, into the repair's own
``audit_repair`` entry, so it cannot hide an entry. It saves the cut to
``repair.pending`` first; an interrupted repair blocks writers until it is run again.

Concurrency. Writers take an exclusive ``fcntl.flock`` on ``audit.lock``, read the head
under the lock (cached by file size and inode, so usually no read at all) and write each
line with one ``os.write`` on an ``O_APPEND`` descriptor. Readers snapshot file sizes under
a shared lock and read up to them, so they never see half an entry. The log is safe to
use from several processes and threads; descriptors are reopened after ``fork``.

Entries carry pseudonyms, never a customer's core-tier value; :meth:`AuditLog.append`
refuses a card number in ``pseudonyms`` or ``reason`` without echoing it.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcustomer.errors import ConfigError, DataError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.audit.reach import Reach, ReachRecord

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
ACTION_QUERY = "query"
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
        ACTION_QUERY,
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
_MAX_DETAILS_BYTES = 8192

_ENTRY_KEYS = frozenset(
    {
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
    }
)
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
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ACTION_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_CARD_RE = re.compile(r"(?<![0-9A-Za-z])\d(?:[ -]?\d){12,18}(?![0-9A-Za-z])")

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


def _now() -> str:
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
    details: dict
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
        problem = _entry_shape_problem(d)
        if problem:
            raise ValueError(problem)
        return cls._unchecked(d)

    @classmethod
    def _unchecked(cls, d: Mapping[str, Any]) -> AuditEntry:
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
            if not _is_int(d[k]) or d[k] < 0:
                raise ValueError(f"field {k!r} must be a non-negative integer")
        for k in ("root", "head_hash", "prev_checkpoint"):
            if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
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


# --- validation helpers -------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_STR_KEYS = ("time", "actor", "role", "action", "decision")
_OPT_STR_KEYS = ("dataset", "tier", "purpose", "reason")
_LIST_KEYS = ("fields", "approvals", "pseudonyms")


def _entry_shape_problem(d: Any) -> str | None:
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
        if type(v) is not str or not _HEX64.fullmatch(v):
            return f"field {k!r} must be 64 lower-case hex digits"
    try:
        datetime.fromisoformat(d["time"])
    except ValueError:
        return "field 'time' is not an ISO 8601 timestamp"
    return None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _looks_like_card_number(text: str) -> bool:
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return True
    return False


def _need_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"audit entry field {name!r} must be a non-empty string, got {type(value).__name__}")
    return value


def _opt_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"audit entry field {name!r} must be a string or None, got {type(value).__name__}")
    return value


def _str_list(name: str, values: Any) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise DataError(f"audit entry field {name!r} must be a sequence of strings, not a single string")
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise DataError(f"audit entry field {name!r}[{i}] must be a string, got {type(v).__name__}")
    return out


def _entry_record(
    *,
    actor: str,
    role: str,
    action: str,
    decision: str,
    dataset: str | None,
    fields: Sequence[str],
    tier: str | None,
    purpose: str | None,
    approvals: Sequence[str],
    row_count: int | None,
    reason: str | None,
    pseudonyms: Sequence[str],
    details: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validated entry content (without seq, time and hashes); raises DataError."""
    rec: dict[str, Any] = {
        "actor": _need_name("actor", actor),
        "role": _need_name("role", role),
        "action": _need_name("action", action),
        "decision": _need_name("decision", decision),
        "dataset": _opt_str("dataset", dataset),
        "fields": _str_list("fields", fields),
        "tier": _opt_str("tier", tier),
        "purpose": _opt_str("purpose", purpose),
        "approvals": _str_list("approvals", approvals),
        "row_count": row_count,
        "reason": _opt_str("reason", reason),
        "pseudonyms": _str_list("pseudonyms", pseudonyms),
    }
    if not _ACTION_RE.fullmatch(action):
        raise DataError(f"audit action {action!r} must be a lower-case identifier such as {ACTION_READ!r}")
    if decision not in DECISIONS:
        raise DataError(f"audit decision {decision!r} must be one of {sorted(DECISIONS)}")
    if row_count is not None and (not _is_int(row_count) or row_count < 0):
        raise DataError(f"audit row_count must be a non-negative integer or None, got {row_count!r}")
    for i, p in enumerate(rec["pseudonyms"]):
        if not p or any(c.isspace() for c in p) or _looks_like_card_number(p):
            raise DataError(
                f"audit pseudonyms[{i}] is not a pseudonym (empty, contains spaces, or looks like a card "
                "number); log the customer's pseudonym, never a core-tier value"
            )
    if reason is not None and _looks_like_card_number(reason):
        raise DataError("audit reason looks like it contains a card number; refer to customers by pseudonym")
    if details is None:
        rec["details"] = {}
    else:
        if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
            raise DataError("audit details must be a mapping with string keys")
        try:
            encoded = canonical_json(dict(details))
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"audit details must be JSON-safe (str, int, float, bool, None, lists, dicts): {exc}"
            ) from None
        if len(encoded) > _MAX_DETAILS_BYTES:
            raise DataError(
                f"audit details are {len(encoded)} bytes; keep them under {_MAX_DETAILS_BYTES} (ids, counts)"
            )
        rec["details"] = json.loads(encoded)  # a private, JSON-normalised copy
    return rec


# --- keys -----------------------------------------------------------------------------------
def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (first 16 hex digits of SHA-256 over the raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the node's Ed25519 audit signing key; refuse group/world-readable files."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"audit signing key {path} not found; create it with AuditLog.open(..., keys_dir=...)"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read audit signing key {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyMaterialError(
            f"audit signing key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM) used to check checkpoint signatures."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"audit public key {path} not found") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read audit public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, expected an Ed25519 public key")
    return key


def _write_new_file(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` atomically with ``data`` unless it exists; True if this call created it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: keep theirs
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_new_file(path, pem, 0o600)
    return load_signing_key(path)


def _ensure_public_key_file(path: Path, public_key: Ed25519PublicKey) -> None:
    pem = _public_pem(public_key)
    if not path.exists():
        _write_new_file(path, pem, 0o644)
    existing = load_public_key(path)
    if key_id(existing) != key_id(public_key):
        raise KeyMaterialError(
            f"{path} holds a different public key (id {key_id(existing)}) than the audit signing key "
            f"(id {key_id(public_key)}); restore the original key or the original public key file"
        )


# --- low-level file helpers -----------------------------------------------------------------
def _read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _last_line(fd: int, size: int) -> tuple[bytes | None, bool, int]:
    """Last complete line of the first ``size`` bytes of ``fd``.

    Returns (line without newline or None, torn, end) where ``torn`` says the data does not
    end with a newline and ``end`` is the offset just after the returned line.
    """
    if size == 0:
        return None, False, 0
    torn = os.pread(fd, 1, size - 1) != b"\n"
    # find the newline that ends the last complete line
    pos, buf, block = size, b"", 8192
    end = -1
    while pos > 0:
        start = max(0, pos - block)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        if end < 0:
            i = buf.rfind(b"\n")
            if i >= 0:
                end = pos + i  # offset of the final complete line's newline
        if end >= 0:
            j = buf.rfind(b"\n", 0, end - pos)
            if j >= 0 or pos == 0:
                return buf[j + 1 : end - pos], torn, end + 1
        block *= 2
    return None, torn, 0  # no newline at all: only a torn fragment


def _parse_json_line(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


@dataclass(slots=True)
class _Parsed:
    """One entry line, parsed once for verification.

    ``self_ok``: the stored hash matches the stored bytes. ``canonical``: the two hash
    fields sit where canonical key order puts them (if not, the line was rewritten).
    """

    entry: dict[str, Any] | None
    error: str | None
    self_ok: bool = False
    canonical: bool = False


def _parse_entry_line(raw: bytes) -> _Parsed:
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
        return _Parsed(None, "empty line")
    try:
        d = _parse_json_line(raw)
    except (UnicodeDecodeError, ValueError):
        return _Parsed(None, "not valid UTF-8 JSON")
    problem = _entry_shape_problem(d)
    if problem:
        return _Parsed(None, problem)
    h, p = d["hash"].encode("ascii"), d["prev_hash"].encode("ascii")
    segment = b',"hash":"' + h + b'","prev_hash":"' + p + b'"'
    i = raw.rfind(segment)
    if i < 0:
        return _Parsed(d, None, False, False)
    body = raw[:i] + raw[i + len(segment) :]
    return _Parsed(d, None, hashlib.sha256(p + body).hexdigest().encode("ascii") == h, True)


# --- the log --------------------------------------------------------------------------------
class AuditLog:
    """Append-only, hash-chained, checkpoint-signed audit log in one directory.

    ``AuditLog(directory)`` creates nothing: use :meth:`open` to create the directory and
    the signing key. Without a signing key the log can be appended to and verified, but
    not checkpointed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        signing_key_path: Path | None = None,
        checkpoint_every: int = 1000,
        durable: bool = False,
        public_key_path: Path | None = None,
        reach: ReachRecord | None = None,
    ) -> None:
        if not _is_int(checkpoint_every) or checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        self.directory = Path(directory)
        self.log_path = self.directory / LOG_NAME
        self.checkpoint_path = self.directory / CHECKPOINT_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.public_key_file = self.directory / PUBLIC_KEY_NAME
        self.repair_pending_path = self.directory / REPAIR_PENDING_NAME
        self.reach = reach
        self.checkpoint_every = checkpoint_every
        self.durable = durable
        self._signing_key = load_signing_key(Path(signing_key_path)) if signing_key_path is not None else None
        self._trusted_key = load_public_key(Path(public_key_path)) if public_key_path is not None else None
        self._mutex = threading.Lock()
        self._pid: int | None = None
        self._log_fd: int | None = None
        self._lock_fd: int | None = None
        self._head_key: tuple[int, int] | None = None  # (inode, size) the cached head belongs to
        self._head: tuple[int, str] = (0, GENESIS_HASH)
        self._cp_size = -1
        self._cp_last: Checkpoint | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        keys_dir: Path | None = None,
        checkpoint_every: int = 1000,
        durable: bool = False,
        reach: ReachRecord | None = None,
    ) -> AuditLog:
        """Open (creating if needed) a log with a signing key in ``keys_dir``.

        ``keys_dir`` defaults to ``directory.parent / "keys"``, which is the partner home's
        ``keys/`` when ``directory`` is its ``audit/``. The key is created with mode 0600 if
        absent; its public key is written beside the log and into ``keys_dir``.
        """
        directory = Path(directory)
        keys = Path(keys_dir) if keys_dir is not None else directory.parent / "keys"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create audit directory {directory} or keys directory {keys}: {exc.strerror}"
            ) from None
        key_path = keys / SIGNING_KEY_NAME
        key = _load_or_create_signing_key(key_path)
        _ensure_public_key_file(keys / PUBLIC_KEY_NAME, key.public_key())
        _ensure_public_key_file(directory / PUBLIC_KEY_NAME, key.public_key())
        return cls(
            directory,
            signing_key_path=key_path,
            checkpoint_every=checkpoint_every,
            durable=durable,
            reach=reach,
        )

    # --- context manager -------------------------------------------------------------------
    def __del__(self) -> None:  # release descriptors of a log dropped without close()
        if getattr(self, "_pid", None) == os.getpid():
            self._drop_fds()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- descriptors and locking -----------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._pid == os.getpid() and self._log_fd is not None:
            return
        if self._pid is not None:  # inherited across fork: flock on a shared description would not exclude
            self._drop_fds()
        if not self.directory.is_dir():
            raise ConfigError(
                f"audit directory {self.directory} does not exist; create it with AuditLog.open()"
            )
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._pid = os.getpid()
        self._head_key = None
        self._cp_size = -1

    def _drop_fds(self) -> None:
        for fd in (self._log_fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._log_fd = self._lock_fd = None
        self._pid = None

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._mutex:
            self._ensure_open()
            assert self._lock_fd is not None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _snapshot_sizes(self) -> tuple[int, int]:
        """Sizes of the log and checkpoint files, taken under a shared lock."""

        def sizes() -> tuple[int, int]:
            return (
                self.log_path.stat().st_size if self.log_path.exists() else 0,
                self.checkpoint_path.stat().st_size if self.checkpoint_path.exists() else 0,
            )

        if not self.lock_path.exists():
            return sizes()
        fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return sizes()
        finally:
            os.close(fd)  # closing releases the lock

    # --- head ----------------------------------------------------------------------------------
    def _refresh_head(self) -> tuple[int, str, int, bool]:
        """Head (seq, hash), file size and whether the file ends in a torn line; under the lock."""
        assert self._log_fd is not None
        st = os.fstat(self._log_fd)
        try:
            path_ino = os.stat(self.log_path).st_ino
        except FileNotFoundError:
            path_ino = -1
        if path_ino != st.st_ino:  # file removed or replaced since we opened it
            os.close(self._log_fd)
            self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            st = os.fstat(self._log_fd)
            self._head_key = None
        key = (st.st_ino, st.st_size)
        if key == self._head_key:
            return self._head[0], self._head[1], st.st_size, False
        line, torn, _ = _last_line(self._log_fd, st.st_size)
        if line is None:
            head = (0, GENESIS_HASH)
        else:
            try:
                d = _parse_json_line(line)
                head = (int(d["seq"]), str(d["hash"]))
                if not _HEX64.fullmatch(head[1]):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(
                    f"the last entry of {self.log_path} is not a valid audit entry; refusing to append. "
                    "Run `fedcustomer audit verify` to locate the damage"
                ) from None
        self._head = head
        self._head_key = None if torn else key
        return head[0], head[1], st.st_size, torn

    def reach_now(self) -> tuple[tuple[int, str, int], tuple[int, str] | None]:
        """(seq, hash, end offset) of the newest complete entry and (number, digest) of the
        last checkpoint: what a reach record starts from."""
        with self._exclusive():
            assert self._log_fd is not None
            seq, h, size, _ = self._refresh_head()
            end = _last_line(self._log_fd, size)[2] if size else 0
            last = self._last_checkpoint()
        return (seq, h, end), ((last.number, last.digest()) if last else None)

    def head(self) -> tuple[int, str]:
        """Current (seq, hash) of the newest entry; (0, GENESIS_HASH) for an empty log."""
        if not self.log_path.exists():
            return 0, GENESIS_HASH
        with self._exclusive():
            seq, h, _, _ = self._refresh_head()
        return seq, h

    # --- append --------------------------------------------------------------------------------
    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        decision: str = DECISION_ALLOWED,
        dataset: str | None = None,
        fields: Sequence[str] = (),
        tier: str | None = None,
        purpose: str | None = None,
        approvals: Sequence[str] = (),
        row_count: int | None = None,
        reason: str | None = None,
        pseudonyms: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry and return it (with its seq and hash). Safe across processes.

        May write a signed checkpoint when ``checkpoint_every`` entries have accumulated;
        raises IntegrityError if the entries to be signed were tampered with.
        """
        rec = _entry_record(
            actor=actor,
            role=role,
            action=action,
            decision=decision,
            dataset=dataset,
            fields=fields,
            tier=tier,
            purpose=purpose,
            approvals=approvals,
            row_count=row_count,
            reason=reason,
            pseudonyms=pseudonyms,
            details=details,
        )
        cp = None
        with self._exclusive():
            end = self._append_locked(rec)
            if self._signing_key is not None and self._due_for_checkpoint(rec["seq"]):
                cp = self._checkpoint_locked()
        self._record_reach(rec, end, cp)
        return AuditEntry._unchecked(rec)

    def _append_locked(self, rec: dict[str, Any], *, repairing: bool = False) -> int:
        """Number, chain and write ``rec`` (under the lock); returns the offset after its line."""
        assert self._log_fd is not None
        seq, prev, size, torn = self._refresh_head()
        if torn:
            raise IntegrityError(_torn_message(self.log_path))
        if self.repair_pending_path.exists() and not repairing:
            raise IntegrityError(_pending_message(self.log_path))
        rec["seq"] = seq + 1
        rec["time"] = _now()
        h = entry_hash(prev, rec)
        rec["prev_hash"], rec["hash"] = prev, h
        line = canonical_json(rec) + b"\n"
        self._write(self._log_fd, line, size)
        if self.durable:
            os.fsync(self._log_fd)
        self._head = (seq + 1, h)
        self._head_key = (os.fstat(self._log_fd).st_ino, size + len(line))
        return size + len(line)

    def _record_reach(self, rec: dict[str, Any] | None, end: int, cp: Checkpoint | None) -> None:
        """Tell the reach record (outside the lock: it may wait on another database)."""
        if self.reach is None:
            return
        if rec is not None:
            if not self.durable and self._log_fd is not None and self._pid == os.getpid():
                os.fsync(self._log_fd)  # the record must never be ahead of what a power cut keeps
            self.reach.record_entry(rec["seq"], rec["hash"], end)
        if cp is not None:
            self.reach.record_checkpoint(cp.number, cp.digest())

    @staticmethod
    def _write(fd: int, data: bytes, size_before: int) -> None:
        """Write ``data`` at the end; on failure cut the file back so no partial line stays."""
        try:
            n = os.write(fd, data)
            while n < len(data):  # only on a nearly full disk; still under the lock
                n += os.write(fd, data[n:])
        except OSError as exc:
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                pass
            if exc.errno == errno.ENOSPC:
                raise IntegrityError(
                    "audit log could not be written: no space left on device; nothing was logged"
                ) from None
            raise

    # --- checkpoints ---------------------------------------------------------------------------
    def _last_checkpoint(self) -> Checkpoint | None:
        try:
            size = self.checkpoint_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == self._cp_size:
            return self._cp_last
        last: Checkpoint | None = None
        if size:
            fd = os.open(self.checkpoint_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                line, _, _ = _last_line(fd, size)
            finally:
                os.close(fd)
            try:
                last = Checkpoint.from_dict(_parse_json_line(line or b""))
            except ValueError:
                raise IntegrityError(
                    f"the last checkpoint in {self.checkpoint_path} is malformed; run `fedcustomer audit verify`"
                ) from None
        self._cp_size, self._cp_last = size, last
        return last

    def _due_for_checkpoint(self, head_seq: int) -> bool:
        last_seq = self._cp_last.last_seq if self._cp_last else 0
        if head_seq - last_seq < self.checkpoint_every:
            return False
        last = self._last_checkpoint()  # another process may have checkpointed meanwhile
        return head_seq - (last.last_seq if last else 0) >= self.checkpoint_every

    def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint over the entries since the last one now; None if nothing is new."""
        if self._signing_key is None:
            raise KeyMaterialError(
                f"audit log {self.directory} was opened without a signing key; open it with AuditLog.open(keys_dir=...)"
            )
        with self._exclusive():
            cp = self._checkpoint_locked()
        self._record_reach(None, 0, cp)
        return cp

    def _checkpoint_locked(self) -> Checkpoint | None:
        assert self._signing_key is not None and self._log_fd is not None
        head_seq, head_hash, size, torn = self._refresh_head()
        if torn:
            raise IntegrityError(_torn_message(self.log_path))
        last = self._last_checkpoint()
        hashes = self._unsigned_hashes(last, head_seq, head_hash, size, "refusing to sign")
        if hashes is None:
            return None
        first = last.last_seq + 1 if last else 1
        # the entries must be on disk before a signature vouches for them
        os.fsync(self._log_fd)
        public = self._signing_key.public_key()
        unsigned = Checkpoint(
            number=(last.number + 1) if last else 1,
            first_seq=first,
            last_seq=head_seq,
            count=len(hashes),
            root=merkle_root(hashes),
            head_hash=head_hash,
            offset=size,
            time=_now(),
            prev_checkpoint=last.digest() if last else GENESIS_HASH,
            key_id=key_id(public),
            signature="",
        )
        sig = self._signing_key.sign(unsigned.signed_bytes())
        cp = Checkpoint(**{**unsigned.to_dict(), "signature": base64.b64encode(sig).decode("ascii")})
        line = canonical_json(cp.to_dict()) + b"\n"
        fd = os.open(self.checkpoint_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            cp_size = os.fstat(fd).st_size
            self._write(fd, line, cp_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cp_size, self._cp_last = cp_size + len(line), cp
        return cp

    def _unsigned_hashes(
        self, last: Checkpoint | None, head_seq: int, head_hash: str, size: int, refusing: str
    ) -> list[str] | None:
        """Hashes of the entries after the last checkpoint, checked to extend the signed chain
        (under the lock); None if there are none. IntegrityError names what is wrong."""
        assert self._log_fd is not None
        first = last.last_seq + 1 if last else 1
        offset = last.offset if last else 0
        prev_hash = last.head_hash if last else GENESIS_HASH
        if head_seq < first:
            if head_seq == first - 1 and (last is None or head_hash == last.head_hash):
                return None
            raise IntegrityError(
                f"{self.log_path} ends at entry {head_seq} but checkpoint #{last.number if last else 0} covers up to "
                f"entry {first - 1}: the log was truncated or altered; {refusing}. Run `fedcustomer audit verify`"
            )
        data = os.pread(self._log_fd, size - offset, offset)
        hashes: list[str] = []
        expected = first
        for lineno_rel, raw in enumerate(data.split(b"\n")[:-1]):
            parsed = _parse_entry_line(raw)
            e = parsed.entry
            if (
                e is None
                or not parsed.self_ok
                or not parsed.canonical
                or e["seq"] != expected
                or e["prev_hash"] != prev_hash
            ):
                raise IntegrityError(
                    f"entry {expected} in {self.log_path} (after byte {offset}, line {lineno_rel + 1} of the unsigned "
                    f"range) does not extend the signed chain; {refusing}. Run `fedcustomer audit verify`"
                )
            hashes.append(e["hash"])
            prev_hash = e["hash"]
            expected += 1
        if expected - 1 != head_seq:
            raise IntegrityError(f"{self.log_path}: the unsigned range does not end at the head; {refusing}")
        return hashes

    # --- before acting -------------------------------------------------------------------------
    def check_before_acting(self) -> None:
        """Refuse (IntegrityError, nothing written) unless the log can take the next entry.

        Call before an action that must be audited: a torn last line, an unfinished repair,
        unsigned entries that do not extend the signed chain, or a log (or checkpoint file)
        that ends before its recorded reach would otherwise be found only after acting.
        Cost: the entries since the last checkpoint and one line at the recorded reach.
        """
        if not self.directory.is_dir():
            raise ConfigError(
                f"audit directory {self.directory} does not exist; create it with AuditLog.open()"
            )
        reach = self.reach.recorded() if self.reach is not None else None
        with self._exclusive():
            assert self._log_fd is not None
            if self.repair_pending_path.exists():
                raise IntegrityError(_pending_message(self.log_path))
            head_seq, head_hash, size, torn = self._refresh_head()
            if torn:
                raise IntegrityError(_torn_message(self.log_path))
            last = self._last_checkpoint()
            self._unsigned_hashes(last, head_seq, head_hash, size, "refusing to act")
            if reach is not None:
                problem = self._reach_problem(reach, head_seq, size, last)
                if problem:
                    raise IntegrityError(f"{problem}; refusing to act. Run `fedcustomer audit verify`")

    def _reach_problem(self, reach: Reach, head_seq: int, size: int, last: Checkpoint | None) -> str | None:
        """Why the log (under the lock) does not reach ``reach``, or None."""
        assert self._log_fd is not None
        if head_seq < reach.seq:
            return (
                f"{self.log_path} ends at entry {head_seq} but {reach.source} recorded that it reached entry "
                f"{reach.seq}: the log was deleted or rolled back"
            )
        if reach.seq > 0 and reach.hash is not None and reach.end is not None:
            line = _last_line(self._log_fd, reach.end)[0] if 0 < reach.end <= size else None
            try:
                d = _parse_json_line(line) if line is not None else None
            except (UnicodeDecodeError, ValueError):
                d = None
            if not isinstance(d, dict) or d.get("seq") != reach.seq or d.get("hash") != reach.hash:
                return (
                    f"entry {reach.seq} of {self.log_path} is not the entry {reach.source} recorded (hash "
                    f"{reach.hash[:16]}...): the log was replaced or rewritten"
                )
        have = last.number if last else 0
        if have < reach.checkpoints:
            return (
                f"{self.checkpoint_path} ends at checkpoint #{have} but {reach.source} recorded #{reach.checkpoints}: "
                "signed checkpoints were removed"
            )
        if (
            last is not None
            and have == reach.checkpoints
            and reach.checkpoint_digest not in (None, last.digest())
        ):
            return f"checkpoint #{have} in {self.checkpoint_path} is not the one {reach.source} recorded"
        return None

    # --- repair ----------------------------------------------------------------------------------
    def repair_torn_tail(self, *, actor: str, role: str, reason: str | None = None) -> AuditEntry:
        """Cut an incomplete last line left by a crashed writer, recording it in full.

        Only bytes after the last newline may be cut, only when they lie after the last
        signed checkpoint, and only when everything before them verifies (chain, signed
        checkpoints, recorded reach). The cut bytes go into the repair's own entry
        (``audit_repair``: offset, length, SHA-256 and the bytes in base64), so the repair
        cannot hide an entry: a complete entry made to look torn comes back in the repair
        entry. Crash-safe: the cut bytes are saved to ``repair.pending`` first, and a
        repair interrupted after that is finished by running it again.
        """
        rec = _entry_record(
            actor=actor,
            role=role,
            action=ACTION_AUDIT_REPAIR,
            decision=DECISION_ALLOWED,
            dataset=None,
            fields=(),
            tier=None,
            purpose=None,
            approvals=(),
            row_count=None,
            reason=reason,
            pseudonyms=(),
            details=None,
        )
        _, cp_size = self._snapshot_sizes()
        with self._exclusive():
            assert self._log_fd is not None
            fd = self._log_fd
            self._refresh_head()  # reopens the log if it was replaced
            size = os.fstat(fd).st_size
            pending = self._read_pending()
            if pending is None:
                _, torn, end = _last_line(fd, size)
                if not torn:
                    raise ConfigError(
                        f"nothing to repair: {self.log_path} ends with a complete line. `audit repair` only cuts an "
                        "incomplete last line; run `fedcustomer audit verify` to locate other damage"
                    )
                last = self._last_checkpoint()
                if last is not None and last.offset > end:
                    raise IntegrityError(
                        f"the incomplete line of {self.log_path} lies inside the range signed by checkpoint "
                        f"#{last.number}: not a crashed append; refusing to cut it"
                    )
                report = _Verifier(self, sizes=(end, cp_size)).run()
                if not report.ok:
                    raise IntegrityError(
                        f"{self.log_path} has damage besides its incomplete last line ({report.problem}, entry "
                        f"{report.first_bad_seq}: {report.message}); `audit repair` cuts only a torn last line"
                    )
                fragment = os.pread(fd, size - end, end)
                pending = {"cut_at_offset": end, "cut_base64": base64.b64encode(fragment).decode("ascii")}
                _write_new_file(self.repair_pending_path, canonical_json(pending), 0o640)
            cut_at = int(pending["cut_at_offset"])
            fragment = base64.b64decode(pending["cut_base64"])
            done = self._repair_entry_at_end(fd, size, cut_at, fragment)
            if done is not None:  # interrupted after its entry was written: only the clean-up is left
                self.repair_pending_path.unlink()
                return done
            if size > cut_at:
                if size != cut_at + len(fragment) or os.pread(fd, len(fragment), cut_at) != fragment:
                    raise IntegrityError(
                        f"{self.log_path} changed since {self.repair_pending_path.name} was written; inspect both "
                        "and run `fedcustomer audit verify`"
                    )
                os.ftruncate(fd, cut_at)
                os.fsync(fd)
            rec["details"] = {
                "cut_at_offset": cut_at,
                "cut_bytes": len(fragment),
                "cut_sha256": hashlib.sha256(fragment).hexdigest(),
                "cut_base64": pending["cut_base64"],
            }
            end = self._append_locked(rec, repairing=True)
            os.fsync(fd)
            self.repair_pending_path.unlink()
            cp = self._checkpoint_locked() if self._signing_key is not None else None
        self._record_reach(rec, end, cp)
        return AuditEntry._unchecked(rec)

    @staticmethod
    def _repair_entry_at_end(fd: int, size: int, cut_at: int, fragment: bytes) -> AuditEntry | None:
        """The repair entry for this cut if it is already the log's last line."""
        line, torn, end = _last_line(fd, size)
        if line is None or torn or end != size:
            return None
        parsed = _parse_entry_line(line)
        e = parsed.entry
        if e is None or not parsed.self_ok or e["action"] != ACTION_AUDIT_REPAIR:
            return None
        d = e["details"]
        if d.get("cut_at_offset") != cut_at or d.get("cut_sha256") != hashlib.sha256(fragment).hexdigest():
            return None
        return AuditEntry._unchecked(e)

    def _read_pending(self) -> dict[str, Any] | None:
        """The saved cut of an interrupted repair, or None."""
        try:
            data = self.repair_pending_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            d = _parse_json_line(data)
            base64.b64decode(d["cut_base64"], validate=True)
            if not _is_int(d["cut_at_offset"]) or d["cut_at_offset"] < 0:
                raise ValueError
            return d
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise IntegrityError(
                f"{self.repair_pending_path} is not a saved repair; remove it only after checking the log by hand"
            ) from None

    def close(self) -> None:
        """Checkpoint anything new (when a signing key is loaded) and release descriptors."""
        try:
            cp = None
            if self._signing_key is not None and self.log_path.exists() and self.directory.is_dir():
                with self._exclusive():
                    head_seq, _, _, torn = self._refresh_head()
                    last = self._last_checkpoint()
                    # a torn tail is never signed over: it waits for `audit repair` (the command
                    # that met it has already failed saying so)
                    if head_seq > (last.last_seq if last else 0) and not torn:
                        cp = self._checkpoint_locked()
            self._record_reach(None, 0, cp)
        finally:
            with self._mutex:
                if self._pid == os.getpid():
                    self._drop_fds()

    # --- reading -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[AuditEntry]:
        """Every entry in file order; IntegrityError on a line that is not an entry."""
        size, _ = self._snapshot_sizes()
        if size == 0:
            return
        with open(self.log_path, "rb") as f:
            read = 0
            for lineno, raw in enumerate(f, start=1):
                read += len(raw)
                if read > size:
                    break
                try:
                    d = _parse_json_line(raw.rstrip(b"\n"))
                    yield AuditEntry.from_dict(d)
                except ValueError as exc:
                    raise IntegrityError(
                        f"{self.log_path} line {lineno} is not a valid audit entry ({exc}); run `fedcustomer audit verify`"
                    ) from None

    def query(
        self,
        *,
        actor: str | None = None,
        role: str | None = None,
        field: str | None = None,
        purpose: str | None = None,
        decision: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        dataset: str | None = None,
        pseudonym: str | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every given filter (``field``/``pseudonym``: contained in the entry).

        ``since`` and ``until`` are inclusive; naive datetimes are taken as UTC.
        """
        lo, hi = _aware(since), _aware(until)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"query: since ({lo.isoformat()}) is after until ({hi.isoformat()})")
        out: list[AuditEntry] = []
        for e in self:
            if actor is not None and e.actor != actor:
                continue
            if role is not None and e.role != role:
                continue
            if field is not None and field not in e.fields:
                continue
            if purpose is not None and e.purpose != purpose:
                continue
            if decision is not None and e.decision != decision:
                continue
            if action is not None and e.action != action:
                continue
            if dataset is not None and e.dataset != dataset:
                continue
            if pseudonym is not None and pseudonym not in e.pseudonyms:
                continue
            if lo is not None or hi is not None:
                t = e.timestamp
                if (lo is not None and t < lo) or (hi is not None and t > hi):
                    continue
            out.append(e)
        return out

    def checkpoints(self) -> list[Checkpoint]:
        """All checkpoints in file order (not verified: use :meth:`verify`)."""
        _, size = self._snapshot_sizes()
        if size == 0:
            return []
        out = []
        for lineno, raw in enumerate(_read_prefix(self.checkpoint_path, size).split(b"\n")[:-1], start=1):
            try:
                out.append(Checkpoint.from_dict(_parse_json_line(raw)))
            except ValueError as exc:
                raise IntegrityError(
                    f"{self.checkpoint_path} line {lineno} is not a checkpoint ({exc})"
                ) from None
        return out

    # --- verification --------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Check the chain, sequence numbers, every checkpoint's signature and Merkle root,
        and truncation past the last checkpoint; the report names the first bad entry."""
        return _Verifier(self).run()


def _torn_message(path: Path) -> str:
    return (
        f"{path} ends in an incomplete line (a writer stopped mid-append); nothing was done. Run "
        "`fedcustomer audit verify` and then `fedcustomer audit repair` to cut the incomplete line (it is kept, "
        "in full, in the repair's own audit entry)"
    )


def _pending_message(path: Path) -> str:
    return (
        f"a repair of {path} was interrupted ({REPAIR_PENDING_NAME} is present); nothing was done. Run "
        "`fedcustomer audit repair` again to finish it"
    )


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _span(a: int, b: int) -> str:
    return f"entry {a}" if a == b else f"entries {a}-{b}"


@dataclass
class _Finding:
    seq: int | None
    problem: str
    message: str
    line: int | None
    file: str


class _Verifier:
    """One verification pass: checkpoints first (small), then one streaming pass over entries."""

    def __init__(self, log: AuditLog, sizes: tuple[int, int] | None = None) -> None:
        self.log = log
        self.log_name = LOG_NAME
        self.cp_name = CHECKPOINT_NAME
        self.sizes = sizes  # given by a caller that already holds the lock
        self.reach = log.reach.recorded() if log.reach is not None else None
        self.reach_hash_seen: str | None = None

    def run(self) -> VerifyReport:
        log = self.log
        if not log.directory.is_dir():
            raise ConfigError(f"audit directory {log.directory} does not exist")
        log_size, cp_size = self.sizes if self.sizes is not None else log._snapshot_sizes()
        cp_lines = _read_prefix(log.checkpoint_path, cp_size).split(b"\n") if cp_size else []
        if cp_lines and cp_lines[-1] == b"":
            cp_lines.pop()
        n_cps = len(cp_lines)

        key_finding = None
        trusted = self._trusted_key()
        if isinstance(trusted, _Finding):
            key_finding, trusted = trusted, None
        cps, cp_finding = self._check_checkpoints(cp_lines, trusted, key_finding, cp_size)

        entries, chain_finding, root_finding, last_seq, last_line = self._walk(log_size, cps)

        findings = [f for f in (key_finding, cp_finding, chain_finding, root_finding) if f is not None]
        if chain_finding is None and root_finding is None and self.reach is not None:
            reach_finding = self._check_reach(entries, last_seq, last_line, cps, n_cps)
            if reach_finding is not None:
                findings.append(reach_finding)
        if chain_finding is None and root_finding is None and cps:
            top = cps[-1]
            if top.last_seq > last_seq:
                findings.append(
                    _Finding(
                        last_seq + 1,
                        PROBLEM_TRUNCATED,
                        f"the log was truncated: it ends at entry {last_seq} (line {last_line} of {self.log_name}) but "
                        f"signed checkpoint #{top.number} covers entries up to {top.last_seq}; "
                        f"{_span(last_seq + 1, top.last_seq)} were removed",
                        last_line + 1,
                        self.log_name,
                    )
                )
        if findings:
            worst = min(findings, key=lambda f: f.seq if f.seq is not None else 0)
            return VerifyReport(
                False, entries, n_cps, worst.seq, worst.problem, worst.message, worst.line, worst.file
            )
        unsigned = last_seq - (cps[-1].last_seq if cps else 0)
        tail = (
            f"; {unsigned} entries after the last checkpoint are protected by the hash chain only"
            if unsigned
            else ""
        )
        return VerifyReport(
            True,
            entries,
            n_cps,
            None,
            None,
            f"audit log intact: {entries} entries, {n_cps} signed checkpoints{tail}",
        )

    def _check_reach(
        self, entries: int, last_seq: int, last_line: int, cps: list[Checkpoint], n_cps: int
    ) -> _Finding | None:
        """Compare the intact log with its reach recorded outside audit/ (see audit_reach)."""
        reach = self.reach
        assert reach is not None
        if last_seq < reach.seq:
            what = "is empty or missing" if entries == 0 else f"ends at entry {last_seq}"
            return _Finding(
                last_seq + 1,
                PROBLEM_TRUNCATED,
                f"the log {what} but {reach.source} records that it reached entry {reach.seq}: "
                f"{_span(last_seq + 1, reach.seq)} and any later ones were removed (the log was deleted or rolled back)",
                last_line + 1,
                self.log_name,
            )
        if reach.seq > 0 and reach.hash is not None and self.reach_hash_seen != reach.hash:
            return _Finding(
                reach.seq,
                PROBLEM_MODIFIED,
                f"entry {reach.seq} is not the entry {reach.source} recorded (hash {reach.hash[:16]}...): the log "
                "was replaced by another chain",
                reach.seq,
                self.log_name,
            )
        if len(cps) < reach.checkpoints and n_cps == len(cps):
            return _Finding(
                cps[-1].last_seq + 1 if cps else 1,
                PROBLEM_DELETED,
                f"{self.cp_name} holds {len(cps)} signed checkpoints but {reach.source} records "
                f"{reach.checkpoints}: signed checkpoints were removed",
                len(cps) + 1,
                self.cp_name,
            )
        if reach.checkpoint_digest and len(cps) >= reach.checkpoints > 0:
            cp = cps[reach.checkpoints - 1]
            if cp.digest() != reach.checkpoint_digest:
                return _Finding(
                    cp.first_seq,
                    PROBLEM_BAD_SIGNATURE,
                    f"checkpoint #{cp.number} is not the one {reach.source} recorded: the checkpoints were replaced",
                    cp.number,
                    self.cp_name,
                )
        return None

    # --- keys ----------------------------------------------------------------------------------
    def _trusted_key(self) -> Ed25519PublicKey | None | _Finding:
        log = self.log
        beside = None
        if log.public_key_file.exists():
            try:
                beside = load_public_key(log.public_key_file)
            except KeyMaterialError as exc:
                return _Finding(
                    None,
                    PROBLEM_BAD_SIGNATURE,
                    f"the public key beside the log is unusable: {exc}",
                    None,
                    PUBLIC_KEY_NAME,
                )
        trusted = log._trusted_key or (log._signing_key.public_key() if log._signing_key else None)
        if trusted is None:
            return beside
        if beside is not None and key_id(beside) != key_id(trusted):
            return _Finding(
                None,
                PROBLEM_BAD_SIGNATURE,
                f"the public key beside the log ({PUBLIC_KEY_NAME}, id {key_id(beside)}) was replaced: the trusted "
                f"key has id {key_id(trusted)}",
                None,
                PUBLIC_KEY_NAME,
            )
        return trusted

    # --- checkpoints ---------------------------------------------------------------------------
    def _check_checkpoints(
        self, lines: list[bytes], key: Ed25519PublicKey | None, key_finding: _Finding | None, size: int
    ) -> tuple[list[Checkpoint], _Finding | None]:
        """Signed, well-formed, contiguous checkpoints up to the first bad one."""
        good: list[Checkpoint] = []
        parsed: list[Checkpoint | None] = []
        for raw in lines:
            try:
                parsed.append(Checkpoint.from_dict(_parse_json_line(raw)))
            except ValueError:
                parsed.append(None)
        prev_digest, next_first = GENESIS_HASH, 1
        for i, cp in enumerate(parsed):
            lineno = i + 1
            where = f"checkpoint line {lineno} of {self.cp_name}"
            if cp is None:
                return good, _Finding(
                    next_first, PROBLEM_MALFORMED, f"{where} is not a valid checkpoint", lineno, self.cp_name
                )
            if key_finding is not None:
                return good, None  # the key problem is reported instead
            if key is None:
                return good, _Finding(
                    cp.first_seq,
                    PROBLEM_BAD_SIGNATURE,
                    f"cannot check checkpoint #{cp.number} ({where}): no public key; pass the node's public key",
                    lineno,
                    self.cp_name,
                )
            if cp.key_id != key_id(key) or not _signature_ok(key, cp):
                return good, _Finding(
                    cp.first_seq,
                    PROBLEM_BAD_SIGNATURE,
                    f"checkpoint #{cp.number} for {_span(cp.first_seq, cp.last_seq)} ({where}) has an invalid "
                    f"signature (key id {cp.key_id}, trusted key id {key_id(key)}): it was forged or altered",
                    lineno,
                    self.cp_name,
                )
            if cp.number != len(good) + 1 or cp.first_seq != next_first or cp.prev_checkpoint != prev_digest:
                later = [c for c in parsed[i + 1 :] if c is not None]
                if cp.first_seq > next_first and not any(c.first_seq == next_first for c in later):
                    kind, what = (
                        PROBLEM_DELETED,
                        f"the signed checkpoint covering entries from {next_first} is missing",
                    )
                elif cp.first_seq > next_first:
                    kind, what = (
                        PROBLEM_REORDERED,
                        f"checkpoints are out of order: #{cp.number} comes before #{len(good) + 1}",
                    )
                else:
                    kind, what = (
                        PROBLEM_INSERTED,
                        f"checkpoint #{cp.number} appears again or out of place (a replayed copy)",
                    )
                return good, _Finding(next_first, kind, f"{what} ({where})", lineno, self.cp_name)
            good.append(cp)
            prev_digest, next_first = cp.digest(), cp.last_seq + 1
        if size and lines and not _read_ends_with_newline(self.log.checkpoint_path, size):
            return good[:-1], _Finding(
                good[-1].first_seq if good else next_first,
                PROBLEM_MALFORMED,
                f"the last checkpoint line of {self.cp_name} is not terminated (torn or edited)",
                len(lines),
                self.cp_name,
            )
        return good, None

    # --- entries -------------------------------------------------------------------------------
    def _walk(
        self, size: int, cps: list[Checkpoint]
    ) -> tuple[int, _Finding | None, _Finding | None, int, int]:
        """Stream the entries: chain, seq and checkpoint roots. Returns (lines, chain finding,
        root finding, last good seq, its line)."""
        if size == 0:
            return 0, None, None, 0, 0
        expected, prev = 1, GENESIS_HASH
        ci, acc = 0, []  # current checkpoint index and its range's hashes
        lines = 0
        chain: _Finding | None = None
        root: _Finding | None = None
        with open(self.log.log_path, "rb") as f:
            data_iter = _lines_upto(f, size)
            for raw in data_iter:
                lines += 1
                if raw.endswith(b"\n"):
                    parsed = _parse_entry_line(raw[:-1])
                else:
                    parsed = _Parsed(None, "not terminated by a newline (torn write or edited)")
                e = parsed.entry
                if (
                    e is None
                    or not parsed.self_ok
                    or not parsed.canonical
                    or e["seq"] != expected
                    or e["prev_hash"] != prev
                ):
                    rest = list(data_iter)
                    lines += len(rest)
                    chain = self._classify(lines - len(rest), parsed, expected, prev, rest)
                    break
                if ci < len(cps):
                    acc.append(e["hash"])
                    cp = cps[ci]
                    if expected == cp.last_seq:
                        if len(acc) != cp.count or merkle_root(acc) != cp.root or e["hash"] != cp.head_hash:
                            root = _Finding(
                                cp.first_seq,
                                PROBLEM_MODIFIED,
                                f"{_span(cp.first_seq, cp.last_seq)} no longer match signed checkpoint #{cp.number} "
                                f"(line {cp.number} of {self.cp_name}): an entry in this range was altered, inserted "
                                "or removed and the hash chain recomputed",
                                cp.first_seq,
                                self.log_name,
                            )
                            break
                        ci, acc = ci + 1, []
                if self.reach is not None and expected == self.reach.seq:
                    self.reach_hash_seen = e["hash"]
                prev, expected = e["hash"], expected + 1
        last_seq = expected - 1
        return lines, chain, root, last_seq, last_seq

    def _classify(self, lineno: int, cur: _Parsed, expected: int, prev: str, rest: list[bytes]) -> _Finding:
        """Name the first anomaly at ``lineno``: which entry, and what kind of tampering."""
        name = self.log_name
        e = cur.entry
        nxt = _parse_entry_line(rest[0].rstrip(b"\n")) if rest else None
        next_follows = (
            nxt is not None
            and nxt.entry is not None
            and nxt.self_ok
            and nxt.entry["seq"] == expected
            and nxt.entry["prev_hash"] == prev
        )
        if e is None:
            return _Finding(
                expected,
                PROBLEM_MALFORMED,
                f"line {lineno} of {name}, where entry {expected} belongs, is malformed: {cur.error}",
                lineno,
                name,
            )
        if cur.self_ok and cur.canonical and e["seq"] > expected:
            # a genuine entry out of place: its own predecessor turns up later in the file
            for off, raw in enumerate(rest, start=1):
                later = _parse_entry_line(raw.rstrip(b"\n")).entry
                if later is not None and later["seq"] == e["seq"] - 1 and later["hash"] == e["prev_hash"]:
                    return _Finding(
                        expected,
                        PROBLEM_REORDERED,
                        f"entries are out of order: line {lineno} of {name} holds entry {e['seq']} where entry "
                        f"{expected} belongs; entry {e['seq'] - 1} appears later, on line {lineno + off}",
                        lineno,
                        name,
                    )
        if next_follows:
            return _Finding(
                e["seq"],
                PROBLEM_INSERTED,
                f"line {lineno} of {name} holds an inserted entry (claiming seq {e['seq']}): it is not part of the "
                f"chain, and line {lineno + 1} carries entry {expected}, which follows entry {expected - 1} directly",
                lineno,
                name,
            )
        if not cur.self_ok or not cur.canonical:
            claim = f" (it now claims seq {e['seq']})" if e["seq"] != expected else ""
            why = (
                "the line was rewritten out of canonical form"
                if not cur.canonical
                else "its content no longer matches its hash"
            )
            return _Finding(
                expected,
                PROBLEM_MODIFIED,
                f"entry {expected} (line {lineno} of {name}) was modified{claim}: {why}",
                lineno,
                name,
            )
        seq = e["seq"]
        if seq == expected:
            if expected == 1:
                return _Finding(
                    1,
                    PROBLEM_MODIFIED,
                    f"entry 1 (line {lineno} of {name}) was modified: it does not start from the genesis hash",
                    lineno,
                    name,
                )
            return _Finding(
                expected - 1,
                PROBLEM_MODIFIED,
                f"entry {expected - 1} (line {lineno - 1} of {name}) was modified and its hash recomputed: entry "
                f"{expected} on line {lineno} records a different hash for its predecessor",
                lineno - 1,
                name,
            )
        if seq > expected:
            for off, raw in enumerate(rest, start=1):
                later = _parse_entry_line(raw.rstrip(b"\n")).entry
                if later is not None and later["seq"] == expected:
                    return _Finding(
                        expected,
                        PROBLEM_REORDERED,
                        f"entries are out of order: line {lineno} of {name} holds entry {seq} where entry {expected} "
                        f"belongs; entry {expected} appears later, on line {lineno + off}",
                        lineno,
                        name,
                    )
            return _Finding(
                expected,
                PROBLEM_DELETED,
                f"{_span(expected, seq - 1)} {'was' if seq - 1 == expected else 'were'} deleted: line {lineno} of "
                f"{name} holds entry {seq} right after entry {expected - 1}",
                lineno,
                name,
            )
        # seq < expected: a second entry with a seq already seen. If the chain carries on from
        # this one and it links to the same predecessor, the earlier copy was the insertion.
        continues = (
            nxt is not None
            and nxt.entry is not None
            and nxt.entry["prev_hash"] == e["hash"]
            and nxt.entry["seq"] == seq + 1
        )
        if continues:
            pred = self._entry_at_line(seq - 1) if seq > 1 else None
            if (pred["hash"] if pred else GENESIS_HASH) == e["prev_hash"]:
                return _Finding(
                    seq,
                    PROBLEM_INSERTED,
                    f"line {seq} of {name} holds an inserted entry (claiming seq {seq}): the chain continues from "
                    f"line {lineno}, which carries the genuine entry {seq}",
                    seq,
                    name,
                )
        return _Finding(
            seq,
            PROBLEM_INSERTED,
            f"line {lineno} of {name} holds an inserted entry: it claims seq {seq}, which already appeared, "
            f"where entry {expected} belongs",
            lineno,
            name,
        )

    def _entry_at_line(self, lineno: int) -> dict[str, Any] | None:
        """Re-read one line of the verified prefix (failure path only)."""
        with open(self.log.log_path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                if i == lineno:
                    return _parse_entry_line(raw.rstrip(b"\n")).entry
        return None


def _lines_upto(f: Any, size: int) -> Iterator[bytes]:
    """Lines of a binary file object, stopping at ``size`` bytes (a consistent snapshot)."""
    read = 0
    for raw in f:
        if read + len(raw) > size:
            raw = raw[: size - read]
            if raw:
                yield raw
            return
        read += len(raw)
        yield raw


def _read_ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _signature_ok(key: Ed25519PublicKey, cp: Checkpoint) -> bool:
    try:
        sig = base64.b64decode(cp.signature, validate=True)
        key.verify(sig, cp.signed_bytes())
        return True
    except (InvalidSignature, ValueError):
        return False
