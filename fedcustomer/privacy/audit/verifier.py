"""Checking an audit log: the full verification pass and the checks a writer makes before acting.

Reach. The chain and the checkpoints cannot show that nothing is missing at the end:
whoever can write the directory can delete both files, cut both back together to an
earlier checkpoint, or write a fresh chain and drop the checkpoints. A log opened with a
``reach`` record (:mod:`fedcustomer.privacy.audit.reach`; a partner's store keeps it in
``store.db``, joining the store's transaction when one is open) records after every
append the newest entry's seq, hash and end offset (the log is fsynced first), and after
every checkpoint its number and digest. ``AuditLog.verify`` and ``AuditLog.check_before_acting``
then refuse a log that ends before the recorded entry, holds another entry there, or holds
fewer checkpoints; a home with an audit signing key but no store may not have an empty log.

What :func:`verify_log` detects, naming the first bad entry: a modified entry, a
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
audited users cannot write, checkpoint often, and ship checkpoints or ``AuditLog.head``
off the node (to the coordinator or a WORM store); verify against an off-node public key
(``public_key_path``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import ConfigError, KeyMaterialError
from fedcustomer.privacy.audit.files import (
    lines_upto,
    read_ends_with_newline,
    read_prefix,
    snapshot_sizes,
)
from fedcustomer.privacy.audit.keys import key_id, load_public_key
from fedcustomer.privacy.audit.reach import Reach
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    LOG_NAME,
    PROBLEM_BAD_SIGNATURE,
    PROBLEM_DELETED,
    PROBLEM_INSERTED,
    PROBLEM_MALFORMED,
    PROBLEM_MODIFIED,
    PROBLEM_REORDERED,
    PROBLEM_TRUNCATED,
    PUBLIC_KEY_NAME,
    Checkpoint,
    ParsedLine,
    VerifyReport,
    merkle_root,
    parse_entry_line,
    parse_json_line,
)


def verify_log(
    directory: Path,
    *,
    trusted: Ed25519PublicKey | None,
    reach: Reach | None,
    sizes: tuple[int, int] | None = None,
) -> VerifyReport:
    """Check the chain, sequence numbers, every checkpoint's signature and Merkle root, truncation
    past the last checkpoint and the recorded ``reach``; the report names the first bad entry.

    ``trusted`` is the key checkpoints must be signed with (None: the key beside the log);
    ``sizes`` (log, checkpoints) are given by a caller that already holds the writers' lock.
    """
    return _Verifier(Path(directory), trusted, reach, sizes).run()


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

    def __init__(
        self,
        directory: Path,
        trusted: Ed25519PublicKey | None,
        reach: Reach | None,
        sizes: tuple[int, int] | None,
    ) -> None:
        self.directory = directory
        self.log_path = directory / LOG_NAME
        self.checkpoint_path = directory / CHECKPOINT_NAME
        self.public_key_file = directory / PUBLIC_KEY_NAME
        self.trusted = trusted
        self.log_name = LOG_NAME
        self.cp_name = CHECKPOINT_NAME
        self.sizes = sizes
        self.reach = reach
        self.reach_hash_seen: str | None = None

    def run(self) -> VerifyReport:
        if not self.directory.is_dir():
            raise ConfigError(f"audit directory {self.directory} does not exist")
        log_size, cp_size = self.sizes if self.sizes is not None else snapshot_sizes(self.directory)
        cp_lines = read_prefix(self.checkpoint_path, cp_size).split(b"\n") if cp_size else []
        if cp_lines and cp_lines[-1] == b"":
            cp_lines.pop()
        n_cps = len(cp_lines)

        key_finding = None
        trusted = self._key_to_trust()
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
    def _key_to_trust(self) -> Ed25519PublicKey | None | _Finding:
        beside = None
        if self.public_key_file.exists():
            try:
                beside = load_public_key(self.public_key_file)
            except KeyMaterialError as exc:
                return _Finding(
                    None,
                    PROBLEM_BAD_SIGNATURE,
                    f"the public key beside the log is unusable: {exc}",
                    None,
                    PUBLIC_KEY_NAME,
                )
        trusted = self.trusted
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
                parsed.append(Checkpoint.from_dict(parse_json_line(raw)))
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
            if cp.key_id != key_id(key) or not signature_ok(key, cp):
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
        if size and lines and not read_ends_with_newline(self.checkpoint_path, size):
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
        with open(self.log_path, "rb") as f:
            data_iter = lines_upto(f, size)
            for raw in data_iter:
                lines += 1
                if raw.endswith(b"\n"):
                    parsed = parse_entry_line(raw[:-1])
                else:
                    parsed = ParsedLine(None, "not terminated by a newline (torn write or edited)")
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

    def _classify(
        self, lineno: int, cur: ParsedLine, expected: int, prev: str, rest: list[bytes]
    ) -> _Finding:
        """Name the first anomaly at ``lineno``: which entry, and what kind of tampering."""
        name = self.log_name
        e = cur.entry
        nxt = parse_entry_line(rest[0].rstrip(b"\n")) if rest else None
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
                later = parse_entry_line(raw.rstrip(b"\n")).entry
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
                later = parse_entry_line(raw.rstrip(b"\n")).entry
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
        with open(self.log_path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                if i == lineno:
                    return parse_entry_line(raw.rstrip(b"\n")).entry
        return None


def signature_ok(key: Ed25519PublicKey, cp: Checkpoint) -> bool:
    try:
        sig = base64.b64decode(cp.signature, validate=True)
        key.verify(sig, cp.signed_bytes())
        return True
    except (InvalidSignature, ValueError):
        return False
