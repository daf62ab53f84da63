"""Writing an audit log: :class:`AuditLog`, the one object a product component appends through.

Appends number and chain each entry under the writers' lock (:mod:`.files`), sign a
checkpoint every ``checkpoint_every`` entries with the node's key (:mod:`.keys`), and
tell the reach record (:mod:`.reach`) how far the log now reaches. Records and hashing
live in :mod:`.records`, verification in :mod:`.verifier`, reading in :mod:`.query`.

Durability. Appends are not fsynced by default (a crash may lose the last entries, which
then look like a truncation after the last checkpoint); checkpoints fsync the log and the
checkpoint file. Pass ``durable=True`` to fsync every append (much slower). A crash in
the middle of writing a line leaves a torn (unterminated) last line: appends, checkpoints
and :meth:`AuditLog.check_before_acting` then refuse, so no action happens unlogged, and
``verify`` reports the line as malformed; :meth:`AuditLog.repair_torn_tail` cuts it
(:mod:`.repair`).

Entries carry pseudonyms, never a customer's core-tier value; :meth:`AuditLog.append`
refuses a card number in ``pseudonyms`` or ``reason`` without echoing it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.audit.anchors import AnchorSink
from fedcustomer.privacy.audit.files import LogFiles, append_bytes, last_line, write_new_file
from fedcustomer.privacy.audit.guards import reach_problem, unsigned_hashes
from fedcustomer.privacy.audit.keys import (
    CheckpointSigner,
    ensure_public_key_file,
    key_id,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
)
from fedcustomer.privacy.audit.query import SetLookup, read_checkpoints, read_entries, select_entries
from fedcustomer.privacy.audit.reach import Reach, ReachRecord
from fedcustomer.privacy.audit.records import (
    ACTION_AUDIT_REPAIR,
    DECISION_ALLOWED,
    GENESIS_HASH,
    PUBLIC_KEY_NAME,
    SIGNING_KEY_NAME,
    AuditEntry,
    Checkpoint,
    VerifyReport,
    canonical_json,
    entry_hash,
    is_int,
    merkle_root,
    now_iso,
)
from fedcustomer.privacy.audit.repair import (
    cut_details,
    pending_bytes,
    pending_message,
    read_pending,
    repair_entry_at_end,
    torn_message,
)
from fedcustomer.privacy.audit.validation import entry_record
from fedcustomer.privacy.audit.verifier import verify_log


class AuditLog(LogFiles):
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
        signer: CheckpointSigner | None = None,
        anchor_sink: AnchorSink | None = None,
    ) -> None:
        """``signer`` (e.g. a key on a PKCS#11 token) signs checkpoints instead of the key file."""
        if not is_int(checkpoint_every) or checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        super().__init__(directory)
        self.reach = reach
        self.anchor_sink = anchor_sink
        self.customer_sets: SetLookup | None = None  # set by a store: checks reads' customer sets
        self.checkpoint_every = checkpoint_every
        self.durable = durable
        self._signing_key: CheckpointSigner | None = signer
        if signer is None and signing_key_path is not None:
            self._signing_key = load_signing_key(Path(signing_key_path))
        self._trusted_key = load_public_key(Path(public_key_path)) if public_key_path is not None else None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        keys_dir: Path | None = None,
        checkpoint_every: int = 1000,
        durable: bool = False,
        reach: ReachRecord | None = None,
        signer: CheckpointSigner | None = None,
        anchor_sink: AnchorSink | None = None,
    ) -> AuditLog:
        """Open (creating if needed) a log with a signing key in ``keys_dir``, or with ``signer``.

        ``keys_dir`` defaults to ``directory.parent / "keys"``, which is the partner home's
        ``keys/`` when ``directory`` is its ``audit/``. The key is created with mode 0600 if
        absent; its public key is written beside the log and into ``keys_dir``. Each
        checkpoint signed is also handed to ``anchor_sink`` (a second location, see
        :mod:`.anchors`).
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
        key = signer if signer is not None else load_or_create_signing_key(key_path)
        ensure_public_key_file(keys / PUBLIC_KEY_NAME, key.public_key())
        ensure_public_key_file(directory / PUBLIC_KEY_NAME, key.public_key())
        return cls(
            directory,
            signing_key_path=key_path,
            checkpoint_every=checkpoint_every,
            durable=durable,
            reach=reach,
            signer=key,
            anchor_sink=anchor_sink,
        )

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- head ----------------------------------------------------------------------------------
    def reach_now(self) -> tuple[tuple[int, str, int], tuple[int, str] | None]:
        """(seq, hash, end offset) of the newest complete entry and (number, digest) of the
        last checkpoint: what a reach record starts from."""
        with self._exclusive():
            assert self._log_fd is not None
            seq, h, size, _ = self._refresh_head()
            end = last_line(self._log_fd, size)[2] if size else 0
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
        sign: bool = False,
    ) -> AuditEntry:
        """Append one entry and return it (with its seq and hash). Safe across processes.

        May write a signed checkpoint when ``checkpoint_every`` entries have accumulated;
        raises IntegrityError if the entries to be signed were tampered with. ``sign=True``
        signs a checkpoint over the entry at once, under the same lock (a reply whose anchor
        must cover it): one fsync of the log serves both, and the reach record takes the
        entry and the checkpoint in one update.
        """
        rec = entry_record(
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
            if self._signing_key is not None and (sign or self._due_for_checkpoint(rec["seq"])):
                cp = self._checkpoint_locked()
        self._record_reach(rec, end, cp)
        return AuditEntry.from_valid_dict(rec)

    def _append_locked(self, rec: dict[str, Any], *, repairing: bool = False) -> int:
        """Number, chain and write ``rec`` (under the lock); returns the offset after its line."""
        assert self._log_fd is not None
        seq, prev, size, torn = self._refresh_head()
        if torn:
            raise IntegrityError(torn_message(self.log_path))
        if self.repair_pending_path.exists() and not repairing:
            raise IntegrityError(pending_message(self.log_path))
        rec["seq"] = seq + 1
        rec["time"] = now_iso()
        h = entry_hash(prev, rec)
        rec["prev_hash"], rec["hash"] = prev, h
        line = canonical_json(rec) + b"\n"
        append_bytes(self._log_fd, line, size)
        if self.durable:
            os.fsync(self._log_fd)
        self._head = (seq + 1, h)
        self._head_key = (os.fstat(self._log_fd).st_ino, size + len(line))
        return size + len(line)

    def _record_reach(self, rec: dict[str, Any] | None, end: int, cp: Checkpoint | None) -> None:
        """Tell the reach record and the anchor sink (outside the lock: they may wait on another
        database or volume)."""
        if cp is not None and self.anchor_sink is not None and self._signing_key is not None:
            self.anchor_sink.write(cp, self._signing_key.public_key())
        if self.reach is None:
            return
        if rec is not None and cp is not None and cp.last_seq >= rec["seq"]:
            # signed over this entry: the checkpoint fsynced the log first, under the same lock
            self.reach.record_entry_and_checkpoint(rec["seq"], rec["hash"], end, cp.number, cp.digest())
            return
        if rec is not None:
            if not self.durable and self._log_fd is not None and self._pid == os.getpid():
                os.fsync(self._log_fd)  # the record must never be ahead of what a power cut keeps
            self.reach.record_entry(rec["seq"], rec["hash"], end)
        if cp is not None:
            self.reach.record_checkpoint(cp.number, cp.digest())

    # --- checkpoints ---------------------------------------------------------------------------
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
            raise IntegrityError(torn_message(self.log_path))
        last = self._last_checkpoint()
        hashes = unsigned_hashes(
            self._log_fd, self.log_path, last, head_seq, head_hash, size, "refusing to sign"
        )
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
            time=now_iso(),
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
            append_bytes(fd, line, cp_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cp_size, self._cp_last = cp_size + len(line), cp
        return cp

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
                raise IntegrityError(pending_message(self.log_path))
            head_seq, head_hash, size, torn = self._refresh_head()
            if torn:
                raise IntegrityError(torn_message(self.log_path))
            last = self._last_checkpoint()
            unsigned_hashes(self._log_fd, self.log_path, last, head_seq, head_hash, size, "refusing to act")
            if reach is not None:
                problem = reach_problem(self._log_fd, self.directory, reach, head_seq, size, last)
                if problem:
                    raise IntegrityError(f"{problem}; refusing to act. Run `fedcustomer audit verify`")

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
        rec = entry_record(
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
            pending = read_pending(self.repair_pending_path)
            if pending is None:
                _, torn, end = last_line(fd, size)
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
                report = verify_log(
                    self.directory,
                    trusted=self._key_to_trust(),
                    reach=self._recorded_reach(),
                    sizes=(end, cp_size),
                )
                if not report.ok:
                    raise IntegrityError(
                        f"{self.log_path} has damage besides its incomplete last line ({report.problem}, entry "
                        f"{report.first_bad_seq}: {report.message}); `audit repair` cuts only a torn last line"
                    )
                fragment = os.pread(fd, size - end, end)
                pending = (end, base64.b64encode(fragment).decode("ascii"))
                write_new_file(self.repair_pending_path, pending_bytes(*pending), 0o640)
            cut_at, cut_base64 = pending
            fragment = base64.b64decode(cut_base64)
            done = repair_entry_at_end(fd, size, cut_at, fragment)
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
            rec["details"] = cut_details(cut_at, cut_base64)
            end = self._append_locked(rec, repairing=True)
            os.fsync(fd)
            self.repair_pending_path.unlink()
            cp = self._checkpoint_locked() if self._signing_key is not None else None
        self._record_reach(rec, end, cp)
        return AuditEntry.from_valid_dict(rec)

    # --- closing -------------------------------------------------------------------------------
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
        yield from read_entries(self.directory)

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
        run: str | None = None,
        sets: SetLookup | None = None,
    ) -> list[AuditEntry]:
        """Entries matching every given filter (``field``/``pseudonym``: contained in the entry;
        ``run``: the job the entry served; ``sets`` checks reads' customer sets, by default the
        ones this log's store gave it in :attr:`customer_sets`).

        ``since`` and ``until`` are inclusive; naive datetimes are taken as UTC.
        """
        return select_entries(
            self,
            actor=actor,
            role=role,
            field=field,
            purpose=purpose,
            decision=decision,
            action=action,
            since=since,
            until=until,
            dataset=dataset,
            pseudonym=pseudonym,
            run=run,
            sets=sets if sets is not None else self.customer_sets,
        )

    def checkpoints(self) -> list[Checkpoint]:
        """All checkpoints in file order (not verified: use :meth:`verify`)."""
        return read_checkpoints(self.directory)

    # --- verification --------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Check the chain, sequence numbers, every checkpoint's signature and Merkle root,
        and truncation past the last checkpoint; the report names the first bad entry."""
        return verify_log(self.directory, trusted=self._key_to_trust(), reach=self._recorded_reach())

    def _key_to_trust(self) -> Ed25519PublicKey | None:
        """The key checkpoints must carry: the one given, else this node's; None: the one beside the log."""
        return self._trusted_key or (self._signing_key.public_key() if self._signing_key else None)

    def _recorded_reach(self) -> Reach | None:
        return self.reach.recorded() if self.reach is not None else None
