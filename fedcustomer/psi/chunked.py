"""One partner's side of a two-party PSI streamed in chunks, in bounded memory, message by message.

The maths is :mod:`fedcustomer.psi.core`'s and the engine :class:`~fedcustomer.psi.stream.StreamingParty`
(on-disk buckets): a session's values live in ``<home>/state/psi/<session>.work/`` (0700; blinded
values, row numbers and ``labels.jsonl``, the store's pseudonyms by row, never an id) and its
counters and SECRET scalar in ``<session>.party.json`` (0600), so a node whose ClientApp runs in a
fresh process per message keeps only one chunk in memory at a time, whatever the set size.

Steps (the coordinator relays, :mod:`fedcustomer.psi.relay`):

``open``     blind and seal this side's ids; answer chunk 0 of its values and the chunk count.
``reblind``  raise the peer's chunk ``k`` to our secret (chunks strictly in order, each once);
             plain mode answers it at once, in the order received; count-only answers nothing
             until the last chunk, then the whole answer sorted by value (the peer cannot tell which
             of its values matched), chunk by chunk (``answer``).
``accept``   take back chunk ``j`` of our own values as the peer answered them; hand out our next
             chunk.
``finish``   the last answer chunk, then match bucket by bucket; keep the alignment (plain) or
             release the count (count-only, optionally with DP noise).

Every chunk is signed by its sender's link key over the run, session, mode, both names, the
chunk's index, the chunk count and the set's size, and (answers) a hash chain over the chunks
answered, so a relay cannot drop, reorder, splice or replay chunks: an out-of-place chunk is
refused before any work and leaves the session as it was; a missing one stops ``finish``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.errors import AccessDenied, ConfigError, DataError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import signing
from fedcustomer.psi.core import POINT_BYTES, PSIResult, make_executor
from fedcustomer.psi.noisy_count import finish_count
from fedcustomer.psi.state import (
    LABELS_FILE,
    alignment_path,
    drop_session,
    expire_sessions,
    party_path,
    psi_dir,
    read_json,
    save_alignment,
    work_path,
    write_private,
)
from fedcustomer.psi.stream import StreamingParty

DEFAULT_CHUNK_SIZE = 1_000_000  # values per message: ~32 MB, one message per million ids and step
MAX_CHUNK_SIZE = 4_000_000  # what a node accepts in one message (~128 MB), whatever the coordinator asks
# Most distinct ids one side brings or accepts in one session (node config psi-max-set-size): bounds
# the CPU and disk a peer or coordinator can make a party spend and the guesses one session tests.
DEFAULT_NODE_MAX_SET_SIZE = 20_000_000
REVEAL_IDS, REVEAL_COUNT, REVEAL_SUM = "ids", "count", "sum"
SORTED_ANSWERS = (REVEAL_COUNT, REVEAL_SUM)  # modes whose answers come after the whole set, sorted
VALUES_DIR = "values"
POOL_MIN_VALUES = (
    8192  # fewer values per message are blinded in the handler itself: a pool costs seconds to start
)
log = logging.getLogger(__name__)

LoadIds = Callable[[PartnerHome, str], list[str]]
LocalLabels = Callable[[PartnerHome, str, list[str]], list[str]]


def check_chunk_size(value: object) -> int:
    """Values per message: a whole number from 1 to :data:`MAX_CHUNK_SIZE`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"the PSI chunk size must be a whole number from 1 to {MAX_CHUNK_SIZE:,}, got {value!r}"
        )
    return value


def chunk_count(total: int, size: int) -> int:
    return -(-total // size)


def _chain(previous: bytes, blob: bytes) -> bytes:
    """Hash chain over a set's chunks: link ``k`` commits to chunks 0..k in order."""
    return hashlib.sha256(previous + hashlib.sha256(blob).digest()).digest()


def chunk_digest(blob: bytes, extras: Mapping[str, bytes]) -> bytes:
    """What a chunk's signature covers: its values, or, with parts beside them (an intersection-sum's
    ciphertexts and key), one digest over all of them, each named and length-prefixed."""
    if not extras:
        return blob
    h = hashlib.sha256()
    for key, part in [("blinded", blob), *sorted(extras.items())]:
        h.update(key.encode() + b"\0" + len(part).to_bytes(8, "big") + part)
    return h.digest()


def _statement(
    kind: str,
    state: dict[str, Any],
    values: bytes,
    chunk: tuple[int, int, int],
    *,
    answers: bytes | None,
    outgoing: bool,
) -> bytes:
    return signing.session_statement(kind, state, values, outgoing=outgoing, answers=answers, chunk=chunk)


class _Session:
    """An open session on this partner: its state file, its work directory, its party."""

    def __init__(self, home: PartnerHome, session: str, state: dict[str, Any]) -> None:
        self.home, self.session, self.state = home, session, state
        self.work = work_path(home, session)
        self.size = int(state["chunk_size"])

    def party(self, executor: Any = None) -> StreamingParty:
        return StreamingParty.resume(
            self.state["party"], self.work, workers=int(self.state.get("workers", 1)), executor=executor
        )

    def save(self, party: StreamingParty) -> None:
        self.state["party"] = party.to_state()
        write_private(party_path(self.home, self.session), self.state)

    def extras(self, party: StreamingParty, index: int) -> dict[str, bytes]:
        """Parts that travel beside chunk ``index`` of our values, under the same signature (none here)."""
        return {}

    def own_chunk(self, party: StreamingParty) -> dict[str, Any]:
        """Our next chunk for the peer, signed; counted as handed out."""
        k, n = int(self.state["sent"]), int(self.state["chunks"])
        if k >= n:
            raise ConfigError(f"PSI session {self.session!r} has handed out all {n} chunks of its values")
        blob = party.own_chunk(k, self.size)
        extras = self.extras(party, k)
        covered = chunk_digest(blob, extras)
        signed = _statement(
            "blinded", self.state, covered, (k, n, party.set_size), answers=None, outgoing=True
        )
        self.state["sent"] = k + 1
        # what was handed out, in order: an answer about our whole set (a sum) is signed over it
        self.state["sent_chain"] = _chain(bytes.fromhex(str(self.state.get("sent_chain", ""))), covered).hex()
        self._log(
            f"sent chunk {k + 1}/{n} of its values ({min((k + 1) * self.size, party.set_size):,} "
            f"of {party.set_size:,})"
        )
        return {
            "blinded": blob,
            **extras,
            "index": k,
            "chunks": n,
            "count": party.set_size,
            "signature": signing.sign(self.home, signed),
        }

    def _log(self, text: str) -> None:
        log.info("PSI %s (%s): %s", self.session, self.state["me"], text)


def load_session(
    home: PartnerHome, session: str, ttl_s: float, now: float, *, summing: bool = False
) -> _Session:
    """The state of a session this partner opened and that is still alive, else a refusal.

    ``summing``: the caller is an intersection-sum step; a sum session answers only those, and
    the other sessions only the PSI steps."""
    path = party_path(home, session)
    if not path.exists():
        raise AccessDenied(
            f"no open PSI session {session!r} on this partner: a partner answers only inside a "
            "session it opened (finished, aborted and expired sessions are closed)"
        )
    state = read_json(path, f"PSI session {session!r}")
    started = state.get("started_at")
    if not isinstance(started, (int, float)) or now - float(started) > ttl_s:
        drop_session(home, session)
        raise AccessDenied(f"PSI session {session!r} has expired (older than {ttl_s:g} s); run a new session")
    if not isinstance(state.get("party"), dict):
        raise IntegrityError(f"PSI session {session!r} state is damaged; run a new session")
    if (state.get("mode") == REVEAL_SUM) != summing:
        raise AccessDenied(
            f"PSI session {session!r} is a {state.get('mode')!r} session; this message belongs to "
            "another mode, refused"
        )
    return _Session(home, session, state)


def _write_labels(path: Path, labels: list[str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for label in labels:
            out.write(json.dumps(label) + "\n")


def _batches(ids: list[str], size: int = 65_536) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def open_session(
    home: PartnerHome,
    bound: dict[str, Any],
    load_ids: LoadIds,
    local_labels: LocalLabels | None,
    *,
    max_set_size: int,
    ttl_s: float,
    now: float,
) -> dict[str, Any]:
    """Start a session: read, blind and seal our ids on disk; answer chunk 0. A session id is never reused."""
    session, dataset = str(bound["session"]), str(bound["dataset"])
    check_fresh(home, session, ttl_s, now)
    ids = list(load_ids(home, dataset))
    if len(ids) > max_set_size:
        raise DataError(
            f"dataset {dataset!r} has {len(ids)} ids, more than this partner's PSI maximum of "
            f"{max_set_size} (psi-max-set-size)"
        )
    # What the alignment keeps per customer: the caller's labels (the store's pseudonyms), else
    # the position in the loaded id list; never the id itself.
    labels = (
        local_labels(home, dataset, ids) if local_labels is not None else [str(k) for k in range(len(ids))]
    )
    if len(labels) != len(ids):
        raise DataError(f"PSI input has {len(ids)} ids but {len(labels)} local labels; they must pair up")
    return start_session(home, bound, ids, labels, max_set_size=max_set_size, now=now)


def check_fresh(home: PartnerHome, session: str, ttl_s: float, now: float) -> None:
    """Drop expired sessions; refuse a session id this partner has already used."""
    expire_sessions(home, ttl_s, now)
    paths = (party_path(home, session), alignment_path(home, session), work_path(home, session))
    if any(path.exists() for path in paths):
        raise ConfigError(
            f"PSI session {session!r} was already started on this partner; use a new session id"
        )


def start_session(
    home: PartnerHome,
    bound: dict[str, Any],
    ids: list[str] | Iterable[Sequence[str]],
    labels: list[str] | None,
    *,
    max_set_size: int,
    now: float,
    prepare: Callable[[StreamingParty, Path], None] | None = None,
    make: type[_Session] = _Session,
) -> dict[str, Any]:
    """Blind and seal ``ids`` into the session's work directory, save its state, answer chunk 0.

    ``ids`` is a list, or batches of ids read as they are blinded (an intersection-sum's batched
    read, which may write beside the ids into the work directory, made by then).
    ``prepare(party, work)`` runs once the ids are blinded and before the set is cut into chunks
    (an intersection-sum keeps its values beside them, or pads its set); ``make`` is the session
    type, whose :meth:`_Session.extras` travel beside each chunk. ``ids`` and ``labels`` are consumed
    (emptied once on disk, so the caller's copy does not stay in memory). A failure leaves nothing behind."""
    session, work = str(bound["session"]), work_path(home, str(bound["session"]))
    psi_dir(home).mkdir(parents=True, exist_ok=True)
    work.mkdir(mode=0o700)
    workers = int(bound.get("workers", 1))
    many = not isinstance(ids, list) or len(ids) > POOL_MIN_VALUES
    pool = make_executor(workers) if workers > 1 and many else None
    try:
        if labels is not None:
            _write_labels(work / LABELS_FILE, labels)
            labels.clear()
        party = StreamingParty(
            str(bound["role"]),
            work,
            side=VALUES_DIR,
            workers=workers,
            executor=pool,
            max_set_size=max_set_size,
        )
        if isinstance(ids, list):
            party.blind(_batches(ids), len(ids))
            ids.clear()
        else:
            party.blind(ids)
        if prepare is not None:
            prepare(party, work)
        size, link, chain = int(bound["chunk_size"]), b"", []
        for blob in party.sealed_chunks(size):
            link = _chain(link, blob)
            chain.append(link.hex())
        state = {
            **bound,
            "started_at": now,
            "workers": workers,
            "chunks": len(chain),
            "chain": chain,
            "sent": 0,
            "accepted": 0,
            "reblinded": 0,
            "peer_total": None,
            "peer_chunks": None,
            "peer_chain": "",
            "answers_sent": 0,
        }
        opened = make(home, session, state)
        opened._log(f"blinded {party.set_size:,} distinct ids, {len(chain)} chunks of up to {size:,}")
        first = opened.own_chunk(party)
        opened.save(party)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        party_path(home, session).unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {**first, "duplicates-removed": party.duplicates_removed}


def _check_peer_chunk(
    s: _Session, index: int, chunks: int, total: int, blob: bytes, max_set_size: int
) -> None:
    """Refuse a chunk of the peer's set that is out of place, oversize or inconsistent, before any work."""
    state, size = s.state, s.size
    expected = int(state["reblinded"])
    if index < expected:
        raise AccessDenied(
            f"PSI session {s.session!r} already answered chunk {index} of its peer's values; a second "
            "request for it is refused (run a new session)"
        )
    if index > expected or index >= chunks:
        raise AccessDenied(
            f"PSI session {s.session!r} expected chunk {expected} of its peer's values, got chunk {index}: "
            "chunks were dropped or reordered on the way; refused"
        )
    if state["peer_total"] is None:
        if total > max_set_size:
            raise AccessDenied(
                f"PSI peer set holds {total} values, more than this partner's maximum of {max_set_size} "
                "(psi-max-set-size); refused"
            )
        if total < 1 or chunks != chunk_count(total, size):
            raise IntegrityError(
                f"PSI peer set of {total} values in chunks of {size} cannot come in {chunks} chunks; "
                "the message is malformed"
            )
    elif (total, chunks) != (state["peer_total"], state["peer_chunks"]):
        raise IntegrityError(
            f"PSI chunk {index} announces {total} values in {chunks} chunks, earlier chunks "
            f"{state['peer_total']} in {state['peer_chunks']}; refused"
        )
    if len(blob) != min(size, total - index * size) * POINT_BYTES:
        raise IntegrityError(
            f"PSI chunk {index} holds {len(blob)} bytes, not {min(size, total - index * size)} values; "
            "the message was truncated or corrupted"
        )


def admit_peer_chunk(
    s: _Session,
    covered: bytes,
    blob: bytes,
    chunk: tuple[int, int, int],
    signature: object,
    *,
    max_set_size: int,
    check: Callable[[], None] | None = None,
) -> None:
    """Check chunk ``(index, chunks, total)`` of the peer's set (signed over ``covered``, in its
    place, of a consistent size, and ``check``'s own test) and claim it, before any work: refused,
    the session is as it was."""
    index, chunks, total = chunk
    signed = _statement("blinded", s.state, covered, chunk, answers=None, outgoing=False)
    signing.check(s.home, str(s.state["peer"]), signature, signed, "blinded set")
    _check_peer_chunk(s, index, chunks, total, blob, max_set_size)
    if check is not None:
        check()
    try:  # claim the chunk atomically, before any work: a concurrent duplicate is refused
        os.close(os.open(s.work / f"reblind-{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise AccessDenied(
            f"PSI session {s.session!r} already answered chunk {index} of its peer's values; a second "
            "request for it is refused (run a new session)"
        ) from None


def note_peer_chunk(s: _Session, covered: bytes, chunk: tuple[int, int, int]) -> bytes:
    """Count chunk ``(index, chunks, total)`` of the peer's set as done; returns the chain's new link."""
    index, chunks, total = chunk
    link = _chain(bytes.fromhex(str(s.state["peer_chain"])), covered)
    s.state |= {"peer_total": total, "peer_chunks": chunks, "peer_chain": link.hex(), "reblinded": index + 1}
    s._log(
        f"reblinded chunk {index + 1}/{chunks} of its peer's values "
        f"({min((index + 1) * s.size, total):,} of {total:,})"
    )
    return link


def reblind_chunk(
    s: _Session, blob: bytes, index: int, chunks: int, total: int, signature: object, *, max_set_size: int
) -> dict[str, Any]:
    """Raise chunk ``index`` of the peer's set to our secret (once, in order); answer it or store it."""
    admit_peer_chunk(s, blob, blob, (index, chunks, total), signature, max_set_size=max_set_size)
    workers = int(s.state.get("workers", 1))
    pool = make_executor(workers) if workers > 1 and len(blob) > POOL_MIN_VALUES * POINT_BYTES else None
    try:
        party = s.party(pool)
        out = b"".join(party.answer([blob]))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    link = note_peer_chunk(s, blob, (index, chunks, total))
    reply: dict[str, Any] = {"index": index, "chunks": chunks}
    if s.state["mode"] not in SORTED_ANSWERS:  # plain: the answer goes back at once, in the order received
        signed = _statement("doubly", s.state, out, (index, chunks, total), answers=link, outgoing=True)
        reply |= {"doubly": out, "signature": signing.sign(s.home, signed)}
    elif index + 1 == chunks:  # count-only, sum: the whole answer, sorted by value, once all chunks are in
        party.write_sorted_answers()
        reply |= _answer(s, party, 0)
    s.save(party)
    return reply


def _answer(s: _Session, party: StreamingParty, index: int) -> dict[str, Any]:
    """Chunk ``index`` of our sorted answer to the peer's set (count-only), signed."""
    chunks, total = int(s.state["peer_chunks"]), int(s.state["peer_total"])
    blob = party.answer_chunk(index, s.size)
    link = bytes.fromhex(str(s.state["peer_chain"]))
    signed = _statement("doubly", s.state, blob, (index, chunks, total), answers=link, outgoing=True)
    s.state["answers_sent"] = index + 1
    return {"doubly": blob, "index": index, "chunks": chunks, "signature": signing.sign(s.home, signed)}


def answer_chunk(s: _Session, index: int) -> dict[str, Any]:
    """Count-only, sum: the next chunk of our sorted answer (after the last chunk of the peer's set)."""
    if s.state["mode"] not in SORTED_ANSWERS or s.state["peer_chunks"] is None:
        raise ConfigError(f"PSI session {s.session!r} has no answer to hand out chunk by chunk")
    if int(s.state["reblinded"]) != int(s.state["peer_chunks"]):
        raise ConfigError(f"PSI session {s.session!r} has not received all of its peer's chunks yet")
    if index != int(s.state["answers_sent"]) or index >= int(s.state["peer_chunks"]):
        raise AccessDenied(
            f"PSI session {s.session!r} hands out its answer in order: chunk {s.state['answers_sent']} is "
            f"next, not {index}; refused"
        )
    party = s.party()
    reply = _answer(s, party, index)
    s.save(party)
    return reply


def take_answer(s: _Session, party: StreamingParty, blob: bytes, index: int, signature: object) -> None:
    """Chunk ``index`` of our own values as the peer answered them (in order, each once, signed)."""
    n, total, expected = int(s.state["chunks"]), party.set_size, int(s.state["accepted"])
    chain = s.state["chain"]
    count_only = s.state["mode"] in SORTED_ANSWERS  # answered in an order unlinkable to ours
    link = bytes.fromhex(str(chain[-1] if count_only else chain[min(max(index, 0), n - 1)]))
    signed = _statement("doubly", s.state, blob, (index, n, total), answers=link, outgoing=False)
    signing.check(s.home, str(s.state["peer"]), signature, signed, "answer to our blinded set")
    if index != expected:
        raise AccessDenied(
            f"PSI session {s.session!r} expected answer chunk {expected}, got chunk {index}: chunks were "
            "dropped, reordered or replayed on the way; refused"
        )
    sent = int(s.state["sent"])
    if (sent < n) if count_only else (index >= sent):
        raise IntegrityError(
            f"PSI session {s.session!r}: an answer to values this partner has not sent; refused"
        )
    if len(blob) != min(s.size, total - index * s.size) * POINT_BYTES:
        raise IntegrityError(
            f"the other party returned {len(blob) // POINT_BYTES} doubly-blinded values for chunk {index}, "
            f"not {min(s.size, total - index * s.size)}; the session is inconsistent, run it again"
        )
    party.accept_part(blob, index * s.size, ordered=not count_only)
    s.state["accepted"] = index + 1
    s._log(f"took back chunk {index + 1}/{n} of its values")


def accept_chunk(
    s: _Session, blob: bytes | None, index: int, signature: object, want_next: bool
) -> dict[str, Any]:
    """Take back one answer chunk (if any) and hand out our next chunk (if asked)."""
    if want_next and int(s.state["sent"]) >= int(s.state["chunks"]):
        raise ConfigError(
            f"PSI session {s.session!r} has handed out all {s.state['chunks']} chunks of its values"
        )
    party = s.party()
    if blob is not None:
        take_answer(s, party, blob, index, signature)
    reply: dict[str, Any] = {"accepted": int(s.state["accepted"])}
    if want_next:
        reply |= s.own_chunk(party)
    s.save(party)
    return reply


def _labels_of(work: Path, rows: np.ndarray) -> list[str]:
    """The labels of ``rows`` (in that order), reading the labels file once, in bounded memory."""
    order = np.argsort(rows, kind="stable")
    wanted, out, p = rows[order], [""] * len(rows), 0
    with (work / LABELS_FILE).open(encoding="utf-8") as lines:
        for row, line in enumerate(lines):
            if p == len(wanted):
                break
            while p < len(wanted) and int(wanted[p]) == row:
                out[int(order[p])] = str(json.loads(line))
                p += 1
    if p != len(wanted):
        raise IntegrityError("PSI session labels are damaged; run a new session")
    return out


def finish_session(s: _Session, blob: bytes | None, index: int, signature: object) -> dict[str, Any]:
    """Take the last answer chunk, check nothing is missing, match, keep the alignment or the count."""
    party = s.party()
    if blob is not None:
        take_answer(s, party, blob, index, signature)
    n, got = int(s.state["chunks"]), int(s.state["accepted"])
    if got != n:
        raise IntegrityError(
            f"PSI session {s.session!r}: {got} of the {n} chunks of our values came back answered; "
            "chunks were dropped on the way, refused"
        )
    peer_chunks, done = s.state["peer_chunks"], int(s.state["reblinded"])
    if peer_chunks is None or done != int(peer_chunks):
        raise IntegrityError(
            f"PSI session {s.session!r}: {done} of the {peer_chunks or '?'} chunks of the peer's values "
            "arrived; chunks were dropped on the way, refused"
        )
    if s.state["mode"] == REVEAL_COUNT:
        result = party.finish(None)
        return finish_count(
            s.home,
            s.session,
            s.state,
            size=result.size,
            role=party.role,
            set_size=result.set_size,
            peer_set_size=result.peer_set_size,
            duplicates=result.duplicates_removed,
        )
    shared: list[np.ndarray] = []
    result = party.finish(shared.append)
    rows = np.concatenate(shared) if shared else np.empty(0, dtype="<u8")
    labels: list[str | None] = list(_labels_of(s.work, rows))
    aligned = PSIResult(
        size=result.size,
        local_ids=labels,
        duplicates_removed=result.duplicates_removed,
        set_size=result.set_size,
        peer_set_size=result.peer_set_size,
        digest=result.digest,
    )
    save_alignment(s.home, s.session, aligned, dataset=str(s.state["dataset"]), role=party.role)
    drop_session(s.home, s.session)
    s._log(f"matched: {result.size:,} shared of {result.set_size:,}")
    return {
        "size": result.size,
        "digest": result.digest,
        "set-size": result.set_size,
        "peer-set-size": result.peer_set_size,
        "duplicates-removed": result.duplicates_removed,
    }
