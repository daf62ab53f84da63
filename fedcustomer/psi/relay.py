"""The coordinator's side of a two-party PSI: it relays signed chunks between the partners, learns sizes.

Each partner's blinded set travels in chunks (:mod:`fedcustomer.psi.chunked`); the relay holds
at most a few chunks in memory, whatever the set sizes. Per pass it sends each side's next
chunk to the peer for reblinding, delivers the answers back to their owners (asking each owner
for its next chunk in the same message), and, count-only, fetches the sorted answers once a
peer has all of a set. The last answer chunk of each side travels with ``psi_finish``, so a set
of one chunk takes three messages per partner. Progress lines (chunks relayed and answered per
side, never a value) go to the ``progress`` callback and this module's logger.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcustomer.errors import ConfigError, FedCustomerError, IntegrityError
from fedcustomer.psi.chunked import DEFAULT_CHUNK_SIZE, check_chunk_size
from fedcustomer.psi.noisy_count import check_count_epsilon
from fedcustomer.psi.protocol import (
    MSG_ABORT,
    MSG_ACCEPT,
    MSG_ANSWER,
    MSG_BLIND,
    MSG_FINISH,
    MSG_REBLIND,
    RECORD,
    REVEAL_COUNT,
    REVEAL_IDS,
    REVEALS,
    _exchange,
)
from fedcustomer.psi.state import check_session_id

log = logging.getLogger(__name__)
Chunk = tuple[int, bytes, dict[str, bytes]]  # index, values, the sender's signature (relayed as is)


@dataclass
class PSIServerView:
    """All the coordinator learns from a session (besides opaque blinded values it relayed)."""

    session_id: str
    node_a: int
    node_b: int
    set_size_a: int
    set_size_b: int
    intersection_size: int
    digest: str
    bytes_relayed: int
    reveal: str = REVEAL_IDS
    chunks_a: int = 1
    chunks_b: int = 1
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Side:
    """One partner's set as the relay sees it: chunks fetched, relayed to the peer, answered back."""

    node: int
    name: str
    chunks: int
    total: int
    own: deque[Chunk] = field(default_factory=deque)  # fetched, not yet sent to the peer
    answers: deque[Chunk] = field(default_factory=deque)  # the peer's answers, not yet delivered
    fetched: int = 0
    relayed: int = 0
    answered: int = 0
    delivered: int = 0

    def take_own(self, reply: dict[str, Any]) -> None:
        index = next_own_index(self.name, reply, self.fetched, self.chunks)
        self.own.append((index, bytes(reply["blinded"]), _signature(reply)))
        self.fetched += 1

    def take_answer(self, reply: dict[str, Any]) -> None:
        self.answers.append((int(reply["index"]), bytes(reply["doubly"]), _signature(reply)))
        self.answered += 1

    def waiting_for_finish(self) -> bool:
        """All chunks reblinded and answered; only the last answer is left, for ``psi_finish``."""
        return self.relayed == self.chunks and self.delivered == self.chunks - 1 and len(self.answers) == 1


def next_own_index(name: str, reply: dict[str, Any], fetched: int, chunks: int) -> int:
    """The index of a chunk a partner handed out, refused unless it is the next one of the agreed count."""
    index = int(reply["index"])
    if index != fetched or int(reply["chunks"]) != chunks:
        raise IntegrityError(f"partner {name!r} handed out chunk {index} out of order; run a new session")
    return index


def _signature(reply: dict[str, Any]) -> dict[str, bytes]:
    """The sender's signature, relayed unchanged to its peer (absent for an unsigned party)."""
    sig = reply.get("signature")
    return {"peer-signature": bytes(sig)} if isinstance(sig, bytes) and sig else {}


def _progress_line(session: str, sides: Sequence[_Side]) -> str:
    parts = [
        f"{x.name} {x.relayed}/{x.chunks} chunks reblinded by its peer, "
        f"{x.delivered + (len(x.answers) if x.waiting_for_finish() else 0)}/{x.chunks} answered"
        for x in sides
    ]
    return f"PSI {session}: " + "; ".join(parts)


def _pump(
    grid: Grid,
    session: str,
    sides: tuple[_Side, _Side],
    count_only: bool,
    timeout: float | None,
    report: Callable[[str], None],
) -> int:
    """Relay every chunk both ways until only the two last answers are left; returns bytes relayed."""
    relayed = 0
    peer = {sides[0].node: sides[1], sides[1].node: sides[0]}
    for _ in range(4 * (sides[0].chunks + sides[1].chunks) + 4):  # every pass moves at least one chunk
        if all(x.waiting_for_finish() for x in sides):
            return relayed
        cfg: dict[int, dict[str, Any]] = {}
        for x in sides:  # each side's next chunk to its peer, which reblinds it
            if x.own:
                k, blob, sig = x.own.popleft()
                cfg[peer[x.node].node] = {"session-id": session, "peer": x.name, "peer-blinded": blob,
                                          "index": k, "chunks": x.chunks, "count": x.total} | sig  # fmt: skip
                x.relayed += 1
                relayed += len(blob)
        for node, reply in (_exchange(grid, MSG_REBLIND, cfg, timeout) if cfg else {}).items():
            if "doubly" in reply:
                peer[node].take_answer(reply)
        pulls = {  # count-only: the sorted answer, chunk by chunk, once the peer has the whole set
            peer[x.node].node: {"session-id": session, "index": x.answered}
            for x in sides
            if count_only and x.relayed == x.chunks and x.answered < x.chunks and not x.answers
        }
        for node, reply in (_exchange(grid, MSG_ANSWER, pulls, timeout) if pulls else {}).items():
            peer[node].take_answer(reply)
        cfg, wants = {}, set()
        for x in sides:  # answers back to their owners (not the last), and each owner's next chunk
            msg: dict[str, Any] = {}
            if x.answers and x.answers[0][0] < x.chunks - 1:
                j, blob, sig = x.answers.popleft()
                msg |= {"my-doubly": blob, "index": j} | sig
                x.delivered += 1
                relayed += len(blob)
            if x.fetched < x.chunks and not x.own:
                msg["want-next"] = True
                wants.add(x.node)
            if msg:
                cfg[x.node] = {"session-id": session} | msg
        for node, reply in (_exchange(grid, MSG_ACCEPT, cfg, timeout) if cfg else {}).items():
            if node in wants:
                next(x for x in sides if x.node == node).take_own(reply)
        report(_progress_line(session, sides))
    raise IntegrityError(f"PSI session {session!r}: the relay stopped making progress; run a new session")


def run_psi_on_grid(
    grid: Grid,
    node_a: int,
    node_b: int,
    dataset_a: str,
    dataset_b: str,
    *,
    name_a: str,
    name_b: str,
    session_id: str | None = None,
    timeout: float | None = None,
    workers: int = 1,
    run_id: str | None = None,
    reveal: str = REVEAL_IDS,
    count_epsilon: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[str], None] | None = None,
) -> PSIServerView:
    """Drive one PSI session between two named partner nodes, relaying blinded chunks only.

    Each partner is told its peer's name and answers only that peer's chunks, each once and in
    order. Raises FederationError when a partner fails or does not answer (both are told to
    drop the session) and IntegrityError when the two sides end with different alignments.
    """
    if node_a == node_b or name_a == name_b:
        raise ConfigError("PSI needs two different partner nodes")
    session = check_session_id(session_id or f"psi-{secrets.token_hex(8)}")
    if reveal not in REVEALS:
        raise ConfigError(f"--reveal must be one of {', '.join(REVEALS)}, got {reveal!r}")
    bound: dict[str, Any] = {
        "run-id": run_id or session,
        "reveal": reveal,
        "chunk-size": check_chunk_size(chunk_size),
    }
    if count_epsilon is not None:
        bound["count-epsilon"] = check_count_epsilon(count_epsilon)

    def report(line: str) -> None:
        log.info("%s", line)
        if progress is not None:
            progress(line)

    common = {"session-id": session, "workers": workers, **bound}
    try:
        blind = _exchange(grid, MSG_BLIND, {
            node_a: {**common, "dataset": dataset_a, "role": "initiator", "peer": name_b},
            node_b: {**common, "dataset": dataset_b, "role": "responder", "peer": name_a},
        }, timeout)  # fmt: skip
        sides = (
            _Side(node_a, name_a, int(blind[node_a]["chunks"]), int(blind[node_a]["count"])),
            _Side(node_b, name_b, int(blind[node_b]["chunks"]), int(blind[node_b]["count"])),
        )
        for x in sides:
            x.take_own(blind[x.node])
        relayed = _pump(grid, session, sides, reveal == REVEAL_COUNT, timeout, report)
        last = {x.node: x.answers.popleft() for x in sides}
        finish = _exchange(grid, MSG_FINISH, {
            node: {"session-id": session, "my-doubly": blob, "index": j} | sig
            for node, (j, blob, sig) in last.items()
        }, timeout)  # fmt: skip
        relayed += sum(len(blob) for _, blob, _ in last.values())
        for x in sides:
            x.delivered += 1
        report(_progress_line(session, sides))
    except FedCustomerError:
        _abort(grid, session, (node_a, node_b), timeout)
        raise
    fa, fb = finish[node_a], finish[node_b]
    if count_epsilon is not None:  # only the initiator publishes the noisy count
        fb = fb | {"size": fa["size"]}
    if int(fa["size"]) != int(fb["size"]) or fa["digest"] != fb["digest"]:  # count: both digests ""
        raise IntegrityError(
            f"PSI session {session!r}: the partners ended with different alignments "
            f"({fa['size']} vs {fb['size']} shared); discard it and run a new session"
        )
    return PSIServerView(
        session_id=session,
        node_a=node_a,
        node_b=node_b,
        set_size_a=int(fa["set-size"]),
        set_size_b=int(fb["set-size"]),
        intersection_size=int(fa["size"]),
        digest=str(fa["digest"]),
        bytes_relayed=relayed,
        reveal=reveal,
        chunks_a=sides[0].chunks,
        chunks_b=sides[1].chunks,
        chunk_size=chunk_size,
    )


def _abort(grid: Grid, session: str, nodes: Sequence[int], timeout: float | None) -> None:
    """Best effort: ask both partners to forget the session's secret."""
    msgs = [
        Message(
            content=RecordDict({RECORD: ConfigRecord({"session-id": session})}),
            dst_node_id=n,
            message_type=f"query.{MSG_ABORT}",
        )
        for n in nodes
    ]
    try:
        grid.send_and_receive(msgs, timeout=timeout)
    except Exception:
        pass
