"""Anchors: a partner's latest signed checkpoint, kept where the partner's own admins cannot rewrite it.

The hash chain, the signed checkpoints and the reach record all live on the partner's
host; an administrator who holds the node's signing key can rebuild ``audit.jsonl`` and
``checkpoints.jsonl`` with changed entries, a valid chain and valid signatures. An
*anchor* closes that gap: a small record (about 700 bytes) holding the partner's name,
the audit key (id and raw public key) and the whole latest signed checkpoint (number,
entries covered, Merkle root, head hash, previous checkpoint digest, signature) with its
digest. It leaves the partner with every round and query reply and is recorded by the
coordinator (``anchors.jsonl`` in the run directory); a partner may also append every
checkpoint's anchor to a second location (:class:`AnchorFile` on another volume,
:class:`SyslogAnchors`). ``audit verify --anchors`` (:mod:`.anchor_check`) then proves the
log still holds exactly what each anchor committed to.

An anchor reveals entry counts, hashes and times, never an entry's content: no actor,
field, pseudonym or customer data.

Format (JSON, ``format`` = :data:`ANCHOR_FORMAT`): ``partner``, ``key_id``,
``public_key`` (raw Ed25519, base64), ``checkpoint`` (the checkpoint line as stored),
``digest`` (SHA-256 of that line, what the next checkpoint records). A run's
``anchors.jsonl`` wraps each one with where it came from: ``{"run_id", "round", "kind",
"partner", "received", "anchor"}``.
"""

from __future__ import annotations

import base64
import json
import logging
import logging.handlers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import ConfigError, KeyMaterialError
from fedcustomer.privacy.audit.files import last_line
from fedcustomer.privacy.audit.keys import key_id, load_public_key
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    HEX64,
    PUBLIC_KEY_NAME,
    Checkpoint,
    canonical_json,
    now_iso,
    parse_json_line,
)
from fedcustomer.privacy.audit.verifier import signature_ok

ANCHOR_FORMAT = "fedcustomer.audit.anchor/1"
SYSLOG_TAG = "fedcustomer-audit-anchor"
MAX_ANCHOR_BYTES = 4096  # a coordinator keeps no more than this of what a partner sends as its anchor
_ANCHOR_KEYS = frozenset({"format", "partner", "key_id", "public_key", "checkpoint", "digest"})

log = logging.getLogger(__name__)


def raw_public_key(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64: what an anchor carries so anyone can check its signature."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Anchor:
    """A partner's signed checkpoint as it left the partner."""

    partner: str
    public_key: str
    checkpoint: Checkpoint

    @property
    def key_id(self) -> str:
        return self.checkpoint.key_id

    @property
    def number(self) -> int:
        return self.checkpoint.number

    @property
    def entries(self) -> int:
        """Entries the checkpoint covers from the start of the log (1..last_seq)."""
        return self.checkpoint.last_seq

    @property
    def digest(self) -> str:
        return self.checkpoint.digest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ANCHOR_FORMAT,
            "partner": self.partner,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "checkpoint": self.checkpoint.to_dict(),
            "digest": self.digest,
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, d: Any) -> Anchor:
        """Parse a stored anchor; ``ValueError`` says what is wrong (the signature is checked by :meth:`problem`)."""
        if not isinstance(d, dict) or set(d) != _ANCHOR_KEYS:
            raise ValueError("not an audit anchor (wrong or missing keys)")
        if d["format"] != ANCHOR_FORMAT:
            raise ValueError(f"unknown anchor format {d['format']!r} (expected {ANCHOR_FORMAT})")
        for k in ("partner", "key_id", "public_key"):
            if not isinstance(d[k], str) or not d[k]:
                raise ValueError(f"anchor field {k!r} must be a non-empty string")
        if not isinstance(d["digest"], str) or not HEX64.fullmatch(d["digest"]):
            raise ValueError("anchor field 'digest' must be 64 lower-case hex digits")
        cp = Checkpoint.from_dict(d["checkpoint"])
        if cp.key_id != d["key_id"]:
            raise ValueError("anchor key id differs from its checkpoint's key id")
        if cp.digest() != d["digest"]:
            raise ValueError("anchor digest does not match its checkpoint")
        return cls(d["partner"], d["public_key"], cp)

    def problem(self) -> str | None:
        """Why this anchor proves nothing (bad key or signature), or None when it is self-consistent."""
        try:
            raw = base64.b64decode(self.public_key, validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            return "its public key is not a raw Ed25519 key in base64"
        if key_id(public) != self.key_id:
            return f"its public key has id {key_id(public)}, not the key id {self.key_id} it names"
        if not signature_ok(public, self.checkpoint):
            return "the checkpoint's signature does not verify with the anchor's own key"
        return None


def build_anchor(partner: str, checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> Anchor:
    return Anchor(partner, raw_public_key(public_key), checkpoint)


def current_anchor(directory: Path, partner: str, public_key_path: Path | None = None) -> Anchor | None:
    """The anchor of the log's latest signed checkpoint; None when nothing was signed yet.

    Reads one line at the end of ``checkpoints.jsonl`` and the public key (``public_key_path``,
    else the one beside the log). The checkpoint is not re-verified here: whoever checks the
    anchor does (:meth:`Anchor.problem`, ``audit verify --anchors``).
    """
    path = Path(directory) / CHECKPOINT_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        line, _, _ = last_line(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    if line is None:
        return None
    try:
        cp = Checkpoint.from_dict(parse_json_line(line))
    except ValueError:
        return None  # `audit verify` reports a malformed checkpoint; no anchor is better than a false one
    try:
        public = load_public_key(public_key_path or Path(directory) / PUBLIC_KEY_NAME)
    except KeyMaterialError:
        return None
    return build_anchor(partner, cp, public)


WIRE_KEY = "audit-anchor"
"""Key of the anchor (JSON text) in a reply's ConfigRecord: every reply a partner sends (round, query,
PSI, split-learning step, SecAgg+ stage)."""


def current_anchor_json(audit_dir: Path, keys_dir: Path, partner: str) -> str | None:
    """A partner home's current anchor as sent in replies (public key from ``keys_dir``); None if none yet."""
    anchor = current_anchor(audit_dir, partner, Path(keys_dir) / PUBLIC_KEY_NAME)
    return anchor.to_json() if anchor is not None else None


def received_anchor(text: str, *, partner: str, run_id: str, kind: str, round: int | None) -> dict[str, Any]:
    """The line a coordinator records for an anchor received in a reply (see the module docstring).

    The anchor is kept as received; ``problem`` says why it proves nothing (not an anchor,
    a bad signature, another partner's name), so a bad anchor is on record, not dropped.
    """
    line: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "round": round,
        "partner": partner,
        "received": now_iso(),
        "anchor": None,
    }
    try:
        if len(text) > MAX_ANCHOR_BYTES:
            raise ValueError(f"{len(text)} characters, more than an anchor's {MAX_ANCHOR_BYTES}")
        line["anchor"] = json.loads(text)
        anchor = Anchor.from_dict(line["anchor"])
        problem = anchor.problem()
        if problem is None and anchor.partner != partner:
            problem = f"it names partner {anchor.partner!r}, but came from {partner!r}"
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        line["problem"] = problem
    return line


# --- second locations ------------------------------------------------------------------------
class AnchorSink(Protocol):
    """Where the writer sends each checkpoint it signs (besides ``checkpoints.jsonl``)."""

    def write(self, checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> None: ...


class AnchorFile:
    """Appends one anchor per checkpoint to a file (opened ``O_APPEND``; keep it on another volume).

    The file is never rewritten, only appended to, so it can live on append-only or WORM
    storage (``chattr +a``, an object-lock bucket mounted as a file system).
    """

    def __init__(self, path: Path, partner: str) -> None:
        self.path = Path(path)
        self.partner = partner

    def write(self, checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> None:
        line = (build_anchor(self.partner, checkpoint, public_key).to_json() + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)  # one write on an O_APPEND descriptor: lines of two writers never mix
            os.fsync(fd)
        finally:
            os.close(fd)


class SyslogAnchors:
    """Sends one anchor per checkpoint to syslog (``/dev/log``, or ``host:port`` over UDP)."""

    def __init__(self, address: str, partner: str) -> None:
        self.partner = partner
        self.address: str | tuple[str, int] = _syslog_address(address)
        self._handler: logging.handlers.SysLogHandler | None = None

    def write(self, checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> None:
        if self._handler is None:
            self._handler = _SysLogHandler(address=self.address, facility=_SysLogHandler.LOG_AUTHPRIV)
        text = f"{SYSLOG_TAG}: {build_anchor(self.partner, checkpoint, public_key).to_json()}"
        record = logging.LogRecord(SYSLOG_TAG, logging.INFO, __file__, 0, text, None, None)
        self._handler.emit(record)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


class _SysLogHandler(logging.handlers.SysLogHandler):
    """Raises a send failure to the caller instead of printing it (the sinks log it once)."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise


def _syslog_address(address: str) -> str | tuple[str, int]:
    if address.startswith("/"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"syslog address {address!r}: give a socket path (/dev/log) or host:port")
    return host, int(port)


class AnchorSinks:
    """Several sinks; a sink that fails is logged and skipped.

    A missed anchor loses nothing: every later anchor commits to the whole log before it
    (its head hash and the chain of checkpoint digests), so the next one covers it.
    """

    def __init__(self, sinks: Sequence[AnchorSink]) -> None:
        self.sinks = list(sinks)

    def write(self, checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> None:
        for sink in self.sinks:
            try:
                sink.write(checkpoint, public_key)
            except OSError as exc:
                log.warning(
                    "audit anchor for checkpoint #%s not written to %s: %s",
                    checkpoint.number,
                    type(sink).__name__,
                    exc,
                )


def anchor_sinks(partner: str, *, file: str | None, syslog: str | bool | None) -> AnchorSinks | None:
    """The second locations partner.toml's ``[audit]`` section names; None when it names none."""
    sinks: list[AnchorSink] = []
    if file:
        sinks.append(AnchorFile(Path(file), partner))
    if syslog:
        sinks.append(SyslogAnchors("/dev/log" if syslog is True else str(syslog), partner))
    return AnchorSinks(sinks) if sinks else None


# --- reading anchor files ----------------------------------------------------------------------
@dataclass(frozen=True)
class AnchorLine:
    """One anchor read from a file, with where it came from (``label``) and its partner."""

    label: str
    partner: str | None
    anchor: Anchor | None
    problem: str | None = None


def read_anchor_file(path: Path) -> list[AnchorLine]:
    """Every anchor in a run's ``anchors.jsonl`` or in a second-location file, in file order.

    A line that is not an anchor is returned with its ``problem`` (the caller decides
    whether it concerns the partner being checked).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"anchors file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read anchors file {path}: {exc.strerror}") from None
    out: list[AnchorLine] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        label = f"{path.name} line {lineno}"
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            out.append(AnchorLine(label, None, None, "not valid UTF-8 JSON"))
            continue
        if not isinstance(d, dict):
            out.append(AnchorLine(label, None, None, "not a JSON object"))
            continue
        body = d.get("anchor", d)
        if "run_id" in d:  # a step without a round number (a PSI step, a job's setup) is named by its kind
            rnd = d.get("round", "?")
            label += f" (run {d['run_id']}, {d.get('kind', 'round')}{'' if rnd is None else f' {rnd}'})"
        named = body.get("partner") if isinstance(body, dict) else None
        sender = d.get("partner") if "anchor" in d else named  # who sent it, in a run's file
        partner = sender if isinstance(sender, str) else named if isinstance(named, str) else None
        try:
            anchor = Anchor.from_dict(body)
        except ValueError as exc:
            recorded = d.get("problem") if "anchor" in d else None  # what the coordinator found on receipt
            out.append(AnchorLine(label, partner, None, str(recorded or exc)))
            continue
        if anchor.partner != partner:
            out.append(
                AnchorLine(
                    label, partner, None, f"it names partner {anchor.partner!r}, but came from {partner!r}"
                )
            )
        else:
            out.append(AnchorLine(label, partner, anchor))
    return out
