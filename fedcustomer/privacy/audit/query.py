"""Reading an audit log: every entry or checkpoint in file order, and who-read-what queries.

Readers take a size snapshot under the writers' shared lock and read up to it, so they
never see half an entry; they do not verify (``AuditLog.verify`` does).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError, IntegrityError
from fedcustomer.privacy.audit.files import read_prefix, snapshot_sizes
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    LOG_NAME,
    AuditEntry,
    Checkpoint,
    parse_json_line,
)


def fold_key(value: object) -> str | None:
    """A filter's comparison key: NFKC, then case folded (as people's names are compared)."""
    return None if value is None else unicodedata.normalize("NFKC", str(value)).casefold()


def read_entries(directory: Path) -> Iterator[AuditEntry]:
    """Every entry in file order; IntegrityError on a line that is not an entry."""
    log_path = directory / LOG_NAME
    size, _ = snapshot_sizes(directory)
    if size == 0:
        return
    with open(log_path, "rb") as f:
        read = 0
        for lineno, raw in enumerate(f, start=1):
            read += len(raw)
            if read > size:
                break
            try:
                d = parse_json_line(raw.rstrip(b"\n"))
                yield AuditEntry.from_dict(d)
            except ValueError as exc:
                raise IntegrityError(
                    f"{log_path} line {lineno} is not a valid audit entry ({exc}); run `fedcustomer audit verify`"
                ) from None


def read_checkpoints(directory: Path) -> list[Checkpoint]:
    """All checkpoints in file order (not verified)."""
    checkpoint_path = directory / CHECKPOINT_NAME
    _, size = snapshot_sizes(directory)
    if size == 0:
        return []
    out = []
    for lineno, raw in enumerate(read_prefix(checkpoint_path, size).split(b"\n")[:-1], start=1):
        try:
            out.append(Checkpoint.from_dict(parse_json_line(raw)))
        except ValueError as exc:
            raise IntegrityError(f"{checkpoint_path} line {lineno} is not a checkpoint ({exc})") from None
    return out


# Written into ``details`` by a reader that names only the first customers of a large read.
PSEUDONYMS_TRUNCATED = "pseudonyms_truncated"
# Written into ``details`` by a read: the digest and size of the exact set of customers it returned,
# kept beside the store (``fedcustomer.data.store_customers``).
CUSTOMER_SET = "customers"
READ_ACTIONS = frozenset({"read", "decrypt"})

# How an entry answers "did it reach customer P?" (``customer_match``).
NAMED = "named"  # the entry lists the pseudonym
IN_READ_SET = "in_read_set"  # the read's exact customer set, checked against its digest, holds it
MAY_INCLUDE = "may_include"  # a read whose customers cannot be checked here (no set, or a cut list)

# "did the read citing this set reach P?": True / False exactly, None when the set is not at hand.
SetLookup = Callable[[Any, str], "bool | None"]


def customer_match(entry: AuditEntry, pseudonym: str, sets: SetLookup | None = None) -> str | None:
    """Whether ``entry`` reached the customer ``pseudonym`` (folded), and how sure that is.

    Exact when the entry names the customer or cites a customer set that ``sets`` can check; an
    allowed read whose customers cannot be checked (a set not at hand, a list cut at 1,000, a read
    logged before reads recorded their customers) *may* include them, and is returned as such so a
    "who read this customer" question never misses one."""
    if pseudonym in {fold_key(v) for v in entry.pseudonyms}:
        return NAMED
    citation = entry.details.get(CUSTOMER_SET)
    if isinstance(citation, dict):
        found = sets(citation, pseudonym) if sets is not None else None
        if found is not None:
            return IN_READ_SET if found else None
        return MAY_INCLUDE
    if entry.details.get(PSEUDONYMS_TRUNCATED):
        return MAY_INCLUDE
    if (
        entry.action in READ_ACTIONS
        and entry.decision == "allowed"
        and (entry.row_count or 0) > 0
        and not entry.pseudonyms
    ):
        return MAY_INCLUDE  # a bulk read logged before reads recorded their customers
    return None


def select_entries(
    entries: Iterable[AuditEntry],
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
    run: str | None = None,
    sets: SetLookup | None = None,
) -> list[AuditEntry]:
    """Entries matching every given filter (``field``/``pseudonym``: contained in the entry;
    ``run``: the job the entry served, ``details.run_id``: its reads, rounds and evaluations).

    Text filters ignore case and Unicode width (``--actor Rick`` finds rick's entries): people's
    names are unique under that comparison, and the other values are lower-case identifiers, so
    it never merges two different things. ``since`` and ``until`` are inclusive; naive datetimes
    are taken as UTC. ``pseudonym`` matches every entry that reached that customer
    (:func:`customer_match`, with ``sets`` checking reads' customer sets): exactly where it can be
    checked, and every read that may include them where it cannot.
    """
    lo, hi = _aware(since), _aware(until)
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"query: since ({lo.isoformat()}) is after until ({hi.isoformat()})")
    equal = {
        name: fold_key(value)
        for name, value in (
            ("actor", actor),
            ("role", role),
            ("purpose", purpose),
            ("decision", decision),
            ("action", action),
            ("dataset", dataset),
        )
        if value is not None
    }
    contained = {name: fold_key(value) for name, value in (("fields", field),) if value is not None}
    wanted = fold_key(pseudonym)
    want_run = fold_key(run)
    out: list[AuditEntry] = []
    for e in entries:
        if any(fold_key(getattr(e, name)) != want for name, want in equal.items()):
            continue
        if want_run is not None and fold_key(e.details.get("run_id")) != want_run:
            continue
        if any(want not in {fold_key(v) for v in getattr(e, name)} for name, want in contained.items()):
            continue
        if wanted is not None and customer_match(e, wanted, sets) is None:
            continue
        if lo is not None or hi is not None:
            t = e.timestamp
            if (lo is not None and t < lo) or (hi is not None and t > hi):
                continue
        out.append(e)
    return out


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t
