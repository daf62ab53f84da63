"""A partner's PSI files: open sessions, finished alignments, and how they are cleaned up.

Kept apart from the Flower handlers (:mod:`fedcustomer.psi.protocol`) so the store
can purge them on erasure without importing the federation stack.

``<home>/state/psi/<session>.party.json`` (0600)
    An open session: role, peer, start time, the secret scalar, this side's labels
    (the store's pseudonyms) and blinded values. No customer id is ever written here.
    Removed at finish or abort, when older than the session lifetime, and when a
    customer it lists is erased.
``<home>/state/psi/<session>.answered``
    Marker left by sessions of earlier versions (removed with the session).
``<home>/state/psi/<session>.work/`` (0700)
    An open session's values on disk (:mod:`fedcustomer.psi.stream` buckets: blinded values and
    row numbers) and ``labels.jsonl``, the store's pseudonyms by row. Removed with the session.
``<home>/state/psi/<session>.alignment.json`` (0600)
    A finished session: this side's labels of the shared customers in the agreed order.
    An erased customer's entry becomes ``null`` (the row order stays agreed with the peer).
``<home>/state/vertical/alignment-*.json``
    The vertical trainer's copy of an alignment (``pseudonyms``); erasure nulls the entry
    the same way, and the trainer then asks for a new PSI.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError, DataError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.core import PSIResult

DEFAULT_SESSION_TTL_S = 3600.0  # an open session older than this is abandoned and removed
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PARTY_SUFFIX, ANSWERED_SUFFIX, ALIGNMENT_SUFFIX = ".party.json", ".answered", ".alignment.json"
WORK_SUFFIX, LABELS_FILE = ".work", "labels.jsonl"


def check_session_id(session_id: object) -> str:
    """Session ids become file names: letters, digits, ``_.-``, at most 64, no path tricks."""
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        raise ConfigError(
            f"PSI session id {session_id!r} is invalid: use 1-64 letters, digits, '_', '.', '-'"
        )
    return session_id


def psi_dir(home: PartnerHome) -> Path:
    return home.state_dir / "psi"


def party_path(home: PartnerHome, session_id: str) -> Path:
    return psi_dir(home) / f"{check_session_id(session_id)}{PARTY_SUFFIX}"


def answered_path(home: PartnerHome, session_id: str) -> Path:
    return psi_dir(home) / f"{check_session_id(session_id)}{ANSWERED_SUFFIX}"


def work_path(home: PartnerHome, session_id: str) -> Path:
    """An open session's private directory of values on disk."""
    return psi_dir(home) / f"{check_session_id(session_id)}{WORK_SUFFIX}"


def alignment_path(home: PartnerHome, session_id: str) -> Path:
    return psi_dir(home) / f"{check_session_id(session_id)}{ALIGNMENT_SUFFIX}"


def write_private(path: Path, payload: dict) -> None:
    """Owner-only JSON file written whole or not at all."""
    atomic_write_text(path, json.dumps(payload), mode=0o600, exact=True)


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} not found at {path}: was the PSI session run on this partner?") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            f"{what} at {path} is unreadable or damaged ({exc}); run the PSI session again"
        ) from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{what} at {path} is damaged (not a JSON object); run the PSI session again")
    return data


def drop_session(home: PartnerHome, session_id: str) -> None:
    """Forget an open session's secret state (its alignment, if finished, stays)."""
    party_path(home, session_id).unlink(missing_ok=True)
    answered_path(home, session_id).unlink(missing_ok=True)
    shutil.rmtree(work_path(home, session_id), ignore_errors=True)


def session_started(path: Path) -> float:
    """When an open session began (from its file, else the file's modification time)."""
    try:
        started = json.loads(path.read_text(encoding="utf-8")).get("started_at")
        if isinstance(started, (int, float)) and not isinstance(started, bool):
            return float(started)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def expire_sessions(home: PartnerHome, ttl_s: float = DEFAULT_SESSION_TTL_S, now: float | None = None) -> int:
    """Remove open sessions older than ``ttl_s`` seconds (abandoned by the coordinator); returns how many."""
    directory = psi_dir(home)
    if not directory.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for path in directory.glob(f"*{PARTY_SUFFIX}"):
        if now - session_started(path) > ttl_s:
            drop_session(home, path.name[: -len(PARTY_SUFFIX)])
            removed += 1
    for marker in directory.glob(f"*{ANSWERED_SUFFIX}"):  # a marker whose session is gone
        if not (directory / (marker.name[: -len(ANSWERED_SUFFIX)] + PARTY_SUFFIX)).exists():
            marker.unlink(missing_ok=True)
    for work in directory.glob(f"*{WORK_SUFFIX}"):  # values of a session that never saved its state
        orphan = not (directory / (work.name[: -len(WORK_SUFFIX)] + PARTY_SUFFIX)).exists()
        if orphan and now - session_started(work) > ttl_s:
            shutil.rmtree(work, ignore_errors=True)
    return removed


def save_alignment(home: PartnerHome, session_id: str, result: PSIResult, *, dataset: str, role: str) -> Path:
    """Keep this side's aligned local labels for the vertical trainer."""
    path = alignment_path(home, session_id)
    write_private(path, {"session_id": session_id, "dataset": dataset, "role": role, **result.to_dict()})
    return path


def load_alignment(home: PartnerHome, session_id: str) -> list[str | None]:
    """This partner's local labels of the shared customers, in the order both partners agreed on
    (``None`` where the customer was erased since)."""
    return list(load_alignment_result(home, session_id).local_ids)


def load_alignment_result(home: PartnerHome, session_id: str) -> PSIResult:
    """The full stored result (size, labels, digest, set sizes) of a finished session."""
    data = read_json(alignment_path(home, session_id), f"PSI alignment for session {session_id!r}")
    try:
        res = PSIResult(
            size=int(data["size"]),
            local_ids=[None if x is None else str(x) for x in data["local_ids"]],
            duplicates_removed=int(data["duplicates_removed"]),
            set_size=int(data["set_size"]),
            peer_set_size=int(data["peer_set_size"]),
            digest=str(data["digest"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(
            f"PSI alignment for session {session_id!r} is damaged ({exc}); run it again"
        ) from None
    if res.size != len(res.local_ids):
        raise IntegrityError(
            f"PSI alignment for session {session_id!r} lists {len(res.local_ids)} ids "
            f"but records size {res.size}; run the session again"
        )
    return res


def _null_out(path: Path, key: str, pseudonym: str) -> int:
    """Replace ``pseudonym`` by null in the list ``key`` of a JSON file; returns how many entries."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            f"{path} is unreadable or damaged ({exc}); remove it and run the PSI again, "
            "then repeat the erasure"
        ) from None
    values = data.get(key) if isinstance(data, dict) else None
    if not isinstance(values, list) or pseudonym not in values:
        return 0
    hits = values.count(pseudonym)
    data[key] = [None if v == pseudonym else v for v in values]
    data["erased"] = int(data.get("erased", 0) or 0) + hits
    write_private(path, data)
    return hits


def _labels_list(work: Path, pseudonym: str) -> bool:
    """Whether an open session's labels file (one JSON string per line) lists ``pseudonym``; a session
    with values on disk but no labels (an intersection-sum) cannot tell, so it counts as listing it."""
    path = work / LABELS_FILE
    if not path.exists():
        return work.is_dir()
    wanted = json.dumps(pseudonym)
    with path.open(encoding="utf-8") as lines:
        return any(line.rstrip("\n") == wanted for line in lines)


def forget_customer(home: PartnerHome, pseudonym: str) -> dict[str, int]:
    """Remove one customer (by pseudonym) from every PSI file of this partner.

    Open sessions that list the customer are dropped whole (their blinded values already
    went to the peer, so the session must be run again); finished alignments keep their
    row order with the customer's entry set to null. Expired sessions are removed too.
    """
    out = {"sessions_dropped": expire_sessions(home), "alignment_entries": 0}
    directory = psi_dir(home)
    if directory.is_dir():
        for path in directory.glob(f"*{PARTY_SUFFIX}"):
            session = path.name[: -len(PARTY_SUFFIX)]
            try:
                labels = json.loads(path.read_text(encoding="utf-8")).get("labels") or []
                listed = pseudonym in labels or _labels_list(work_path(home, session), pseudonym)
            except (OSError, ValueError, AttributeError):
                listed = True  # unreadable: cannot tell, so do not keep it
            if listed:
                drop_session(home, session)
                out["sessions_dropped"] += 1
        for path in directory.glob(f"*{ALIGNMENT_SUFFIX}"):
            out["alignment_entries"] += _null_out(path, "local_ids", pseudonym)
    vertical = home.state_dir / "vertical"
    if vertical.is_dir():
        for path in vertical.glob("alignment-*.json"):
            out["alignment_entries"] += _null_out(path, "pseudonyms", pseudonym)
    return out
