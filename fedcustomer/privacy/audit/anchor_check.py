"""Checking a partner's log against the anchors it sent out: ``audit verify --anchors``.

Each anchor (:mod:`.anchors`) is a checkpoint the partner once signed and let leave. The
log must still hold that checkpoint, byte for byte (same number, range, Merkle root, head
hash, offset, previous digest, key and signature: one digest compares them all), and its
entries ``1..last_seq`` must still chain, line by line, to the anchored head hash. A
rewrite of the whole log re-signed with the node's own key passes ``audit verify`` but
changes these digests and hashes; a log cut back before an anchored checkpoint lacks it;
a replaced signing key shows as anchors signed by another key. Two anchors for one
checkpoint number with different digests show that the partner presented two histories.

What an anchor cannot show: entries written after the newest anchor (they are covered by
the next one), and a rewrite of history older than the oldest anchor kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.audit.anchors import Anchor, AnchorLine
from fedcustomer.privacy.audit.files import lines_upto, read_prefix, snapshot_sizes
from fedcustomer.privacy.audit.keys import key_id
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    LOG_NAME,
    Checkpoint,
    parse_entry_line,
    parse_json_line,
)

PROBLEM_REWRITTEN = "rewritten"
PROBLEM_TRUNCATED = "truncated"
PROBLEM_KEY_REPLACED = "key-replaced"
PROBLEM_FORKED = "forked"
PROBLEM_INVALID_ANCHOR = "invalid-anchor"


@dataclass(frozen=True)
class AnchorReport:
    """Verdict of :func:`verify_anchors`.

    ``checked``: anchors of this partner read; ``distinct``: different checkpoints among
    them; ``ignored``: anchors of other partners; ``newest``: the highest checkpoint number
    anchored and ``entries`` the entries it covers. On failure ``problem`` is one of
    rewritten, truncated, key-replaced, forked or invalid-anchor, and ``anchor`` names the
    first anchor that no longer matches.
    """

    ok: bool
    partner: str
    checked: int
    distinct: int
    ignored: int
    newest: int | None
    entries: int | None
    problem: str | None
    message: str
    anchor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "partner": self.partner,
            "checked": self.checked,
            "distinct": self.distinct,
            "ignored": self.ignored,
            "newest": self.newest,
            "entries": self.entries,
            "problem": self.problem,
            "message": self.message,
            "anchor": self.anchor,
        }


def _short(h: str) -> str:
    return h[:16] + "..."


def verify_anchors(
    directory: Path, lines: Sequence[AnchorLine], partner: str, trusted: Ed25519PublicKey | None
) -> AnchorReport:
    """Check the log in ``directory`` against every anchor of ``partner`` in ``lines``.

    ``trusted`` is the log's current public key (the home's ``keys/``); anchors of other
    partners are counted and ignored. ConfigError when none of the anchors is this partner's.
    """
    mine = [a for a in lines if a.partner == partner]
    others = sorted({a.partner for a in lines if a.partner is not None and a.partner != partner})
    unknown = [a for a in lines if a.partner is None]
    if not mine and not unknown:
        held = f"it holds anchors of {', '.join(others)}" if others else "it holds no anchors"
        raise ConfigError(
            f"no anchor of partner {partner!r} to check: {held}. Give the run's anchors.jsonl or the "
            "partner's own anchor file"
        )
    ignored = len(lines) - len(mine) - len(unknown)

    def report(problem: str | None, message: str, label: str | None = None) -> AnchorReport:
        good = [a.anchor for a in mine if a.anchor is not None]
        newest = max(good, key=lambda a: a.number) if good else None
        return AnchorReport(
            problem is None,
            partner,
            len(mine),
            len({a.digest for a in good}),
            ignored,
            newest.number if newest else None,
            newest.entries if newest else None,
            problem,
            message,
            label,
        )

    for a in mine + unknown:  # an anchor that proves nothing is reported, never skipped
        why = a.problem or (a.anchor.problem() if a.anchor is not None else None)
        if why is not None:
            return report(
                PROBLEM_INVALID_ANCHOR,
                f"anchor {a.label} is not a valid audit anchor: {why}",
                a.label,
            )
    anchored = [(a.label, a.anchor) for a in mine if a.anchor is not None]
    seen: dict[int, tuple[str, Anchor]] = {}
    for label, anchor in anchored:
        first = seen.setdefault(anchor.number, (label, anchor))
        if first[1].digest != anchor.digest:
            return report(
                PROBLEM_FORKED,
                f"anchors {first[0]} and {label} both claim checkpoint #{anchor.number} of partner {partner!r} with "
                "different contents: the partner presented two different histories",
                label,
            )
    trusted_id = key_id(trusted) if trusted is not None else None
    cps = _checkpoints(Path(directory))
    heads = _chain_heads(Path(directory), {a.entries for _, a in anchored})
    # the earliest commitment that is broken says most about when history was changed
    for label, anchor in sorted(anchored, key=lambda la: la[1].number):
        problem = _mismatch(anchor, cps, heads, trusted_id)
        if problem is not None:
            kind, why = problem
            return report(
                kind,
                f"anchor {label}, checkpoint #{anchor.number} (entries 1-{anchor.entries}): {why}",
                label,
            )
    best = max((a for _, a in anchored), key=lambda a: a.number)
    return report(
        None,
        f"the log still holds everything partner {partner!r} committed to: {len(anchored)} anchors, "
        f"{len(seen)} checkpoints, up to checkpoint #{best.number} (entries 1-{best.entries})",
    )


def _mismatch(
    anchor: Anchor,
    cps: list[Checkpoint | None],
    heads: dict[int, str | None],
    trusted_id: str | None,
) -> tuple[str, str] | None:
    if trusted_id is not None and anchor.key_id != trusted_id:
        return (
            PROBLEM_KEY_REPLACED,
            f"signed by audit key id {anchor.key_id}, but the log's public key now has id {trusted_id}: the audit "
            "signing key was replaced (and the log re-signed with the new key)",
        )
    if anchor.number > len(cps):
        return (
            PROBLEM_TRUNCATED,
            f"the log holds only {len(cps)} signed checkpoints: checkpoint #{anchor.number} and the entries it "
            "signed were removed",
        )
    cp = cps[anchor.number - 1]
    if cp is None:
        return (
            PROBLEM_REWRITTEN,
            f"checkpoint #{anchor.number} in the log is no longer a valid checkpoint line",
        )
    if cp.digest() != anchor.digest:
        changed = [
            k
            for k in ("first_seq", "last_seq", "root", "head_hash", "offset", "prev_checkpoint", "key_id")
            if getattr(cp, k) != getattr(anchor.checkpoint, k)
        ]
        what = ", ".join(changed) if changed else "time or signature"
        return (
            PROBLEM_REWRITTEN,
            f"the log's checkpoint #{anchor.number} differs from the one sent out ({what} changed; anchored root "
            f"{_short(anchor.checkpoint.root)}, head {_short(anchor.checkpoint.head_hash)}): the log was rewritten "
            "and re-signed",
        )
    head = heads.get(anchor.entries)
    if head is None:
        return (
            PROBLEM_TRUNCATED,
            f"the log's entries no longer chain up to entry {anchor.entries}: entries were removed or changed",
        )
    if head != anchor.checkpoint.head_hash:
        return (
            PROBLEM_REWRITTEN,
            f"entry {anchor.entries} hashes to {_short(head)}, not to the anchored head {_short(anchor.checkpoint.head_hash)}",
        )
    return None


def _checkpoints(directory: Path) -> list[Checkpoint | None]:
    """The log's checkpoint lines in order (None for a line that is not a checkpoint)."""
    _, size = snapshot_sizes(directory)
    if not size:
        return []
    out: list[Checkpoint | None] = []
    for raw in read_prefix(directory / CHECKPOINT_NAME, size).split(b"\n"):
        if not raw:
            continue
        try:
            out.append(Checkpoint.from_dict(parse_json_line(raw)))
        except ValueError:
            out.append(None)
    return out


def _chain_heads(directory: Path, wanted: Iterable[int]) -> dict[int, str | None]:
    """Hash of entry ``n`` for each wanted ``n``, recomputed along the chain from the genesis hash.

    An entry counts only if every line before it is intact and links to its predecessor;
    from the first break on, the wanted entries map to None.
    """
    want = set(wanted)
    found: dict[int, str | None] = dict.fromkeys(want)
    size, _ = snapshot_sizes(directory)
    if not want or not size:
        return found
    top, prev, expected = max(want), GENESIS_HASH, 1
    with open(directory / LOG_NAME, "rb") as f:
        for raw in lines_upto(f, size):
            if expected > top or not raw.endswith(b"\n"):
                break
            parsed = parse_entry_line(raw[:-1])
            e = parsed.entry
            if e is None or not (parsed.self_ok and parsed.canonical) or e["seq"] != expected:
                break
            if e["prev_hash"] != prev:
                break
            prev = e["hash"]
            if expected in found:
                found[expected] = prev
            expected += 1
    return found
