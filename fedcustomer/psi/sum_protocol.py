"""The private intersection-sum between two partner nodes over Flower messages, in signed chunks.

The protocol of :mod:`fedcustomer.psi.intersection_sum`, each partner on its own node and each
set streamed in chunks of ``chunk-size`` ids (:mod:`fedcustomer.psi.sum_chunked`), the
coordinator relaying::

    query.psi_sum_open    {session-id, dataset, role, column, peer, epsilon, value-max, chunk-size}
                          -> {chunk 0 of our set (value holder: with ciphertexts and key), chunks, count}
    query.psi_sum_step    {session-id, peer, peer-blinded?, peer-ciphertexts?, peer-public-key?,
                           index, chunks, count, want-next?}  -> {our next chunk?, doubly? (answer 0)}
    query.psi_sum_pull    {session-id, index}                 -> {doubly: answer chunk} (value holder)
    query.psi_sum_accept  {session-id, my-doubly, index}      -> {} (predicate holder)
    query.psi_sum_answer  {session-id, my-doubly, index}      -> {sum, count} (predicate holder pays)
    query.psi_sum_finish  {session-id, sum, count}            -> {noisy-count, noisy-sum, rate} (value holder pays)
    query.psi_sum_abort   {session-id}                        -> {} (drop the session's secrets)

Each partner first checks that its budget can pay, so a refusal costs nobody anything. Every
chunk is signed by its sender's link key over the run, session, mode ``sum``, both names, the
chunk's index, the chunk count and the set's size (the value holder's over its ciphertexts and
key too), and taken once and in order; the answer is signed over the chain of the chunks it is
about. A dropped, reordered, replayed, relabelled or altered chunk is refused before any work,
the coordinator aborts, and both partners drop the session with nothing kept or charged. A set
of one chunk takes four exchanges, as before chunking. Progress lines (chunks per side, never a
value) go to the ``progress`` callback and this module's logger.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import sum_chunked as chunks_
from fedcustomer.psi.chunked import REVEAL_SUM as REVEAL_SUM  # re-exported for callers
from fedcustomer.psi.chunked import accept_chunk, answer_chunk, check_chunk_size, check_fresh
from fedcustomer.psi.chunked import reblind_chunk as reblind_peer_chunk
from fedcustomer.psi.core import POINT_BYTES
from fedcustomer.psi.intersection_sum import SUM_KIND, Payer, SumParams, sum_step
from fedcustomer.psi.protocol import (
    PartyLimits,
    _blob,
    _config,
    _error_reply,
    _exchange,
    _malformed,
    _peer,
    _reply,
    _text,
    _whole,
    _workers,
)
from fedcustomer.psi.relay import _signature, next_own_index
from fedcustomer.psi.release_audit import audited_check
from fedcustomer.psi.state import check_session_id, drop_session, psi_dir, read_json
from fedcustomer.psi.sum_chunked import DEFAULT_SUM_CHUNK_SIZE as DEFAULT_SUM_CHUNK_SIZE
from fedcustomer.psi.sum_chunked import ROLE_PREDICATE, ROLE_VALUE
from fedcustomer.psi.sum_input import ColumnBatches

MSG_OPEN, MSG_STEP, MSG_PULL = "psi_sum_open", "psi_sum_step", "psi_sum_pull"
MSG_ACCEPT, MSG_ANSWER, MSG_FINISH, MSG_ABORT = (
    "psi_sum_accept",
    "psi_sum_answer",
    "psi_sum_finish",
    "psi_sum_abort",
)
MODE = REVEAL_SUM  # what the parties learn: a DP rate, never which customers
# load_column(home, dataset, column, batch): (ids, cells) batches of at most ``batch`` rows, row for row
LoadColumn = Callable[[PartnerHome, str, str, int], ColumnBatches]
READ_BATCH = 65_536  # rows per batch of a session's read (fewer with a smaller chunk size)
log = logging.getLogger(__name__)


def _expire_legacy(home: PartnerHome, limits: PartyLimits, now: float) -> None:
    """Secrets of sessions of the one-message protocol (``<session>.sum.json``) go once abandoned."""
    directory = psi_dir(home)
    for path in directory.glob("*.sum.json") if directory.exists() else ():
        try:
            started = float(read_json(path, "intersection-sum session").get("started_at", 0))
        except (FedCustomerError, TypeError, ValueError):
            started = 0.0
        if now - started > limits.session_ttl_s:
            _drop_legacy(home, path.name.removesuffix(".sum.json"))


def _drop_legacy(home: PartnerHome, session: str) -> None:
    for suffix in ("sum.json", "sum.reblind", "sum.answer", "sum.finish"):
        (psi_dir(home) / f"{session}.{suffix}").unlink(missing_ok=True)


def handle_open(
    home: PartnerHome, cfg: dict[str, Any], load_column: LoadColumn, limits: PartyLimits, now: float
) -> dict[str, Any]:
    """Check the budget, read the column, start the session: chunk 0 of our set."""
    session = check_session_id(_text(cfg, "session-id"))
    dataset, role, column = _text(cfg, "dataset"), _text(cfg, "role"), _text(cfg, "column")
    peer = _peer(cfg, home, limits)
    if role not in (ROLE_VALUE, ROLE_PREDICATE):
        raise _malformed("role", f"{ROLE_VALUE} or {ROLE_PREDICATE}")
    params = SumParams(epsilon=cfg.get("epsilon"), value_max=cfg.get("value-max"))  # type: ignore[arg-type]
    run_id = str(cfg.get("run-id") or session)
    size = check_chunk_size(cfg.get("chunk-size", DEFAULT_SUM_CHUNK_SIZE))
    _expire_legacy(home, limits, now)
    check_fresh(home, session, limits.session_ttl_s, now)
    audited_check(
        home, Payer(home, dataset).ledger(), sum_step(run_id, session), params.mechanism(), kind=SUM_KIND
    )
    batches = load_column(home, dataset, column, min(size, READ_BATCH))
    bound: dict[str, Any] = {
        "session": session, "dataset": dataset, "peer": peer, "me": home.config().name, "run_id": run_id,
        "mode": MODE, "sum_role": role, "role": "initiator" if role == ROLE_VALUE else "responder",
        "workers": _workers(cfg), "chunk_size": size, "epsilon": params.epsilon, "value_max": params.value_max,
    }  # fmt: skip
    try:
        return chunks_.open_sum(home, bound, batches, column, max_set_size=limits.sum_max_set_size, now=now)
    finally:
        close = getattr(batches, "close", None)  # a reader stopped early lets go of its store now
        if close is not None:
            close()


def _load(
    home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float, role: str | None
) -> chunks_.SumSession:
    return chunks_.load(home, check_session_id(_text(cfg, "session-id")), limits.session_ttl_s, now, role)


def handle_step(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Take the peer's next chunk (the value holder reblinds it, the predicate holder keeps it with its
    ciphertexts) and/or hand out our own next chunk."""
    want_next = cfg.get("want-next", False)
    if not isinstance(want_next, bool):
        raise _malformed("want-next", "true or false")
    s = _load(home, cfg, limits, now, None)
    reply: dict[str, Any] = {}
    if "peer-blinded" in cfg:
        peer, blob = _text(cfg, "peer"), _blob(cfg, "peer-blinded")
        if s.state.get("peer") != peer:
            raise AccessDenied(
                f"PSI session {s.session!r} was opened with another peer, not {peer!r}; refused"
            )
        if len(blob) % POINT_BYTES:
            raise IntegrityError(
                f"PSI message of {len(blob)} bytes is not a whole number of {POINT_BYTES}-byte group "
                "elements; the message was truncated or corrupted"
            )
        chunk = (_whole(cfg, "index", 0), _whole(cfg, "chunks", 1, 1), _whole(cfg, "count", 1, 1))
        signature, cap = cfg.get("peer-signature"), limits.sum_max_set_size
        if s.role == ROLE_VALUE:  # the predicate holder's padded set: answered sorted, after its last chunk
            out = reblind_peer_chunk(s, blob, *chunk, signature, max_set_size=cap)
            if "doubly" in out:
                reply |= {"doubly": out["doubly"], "answer-index": out["index"]}
                reply["answer-signature"] = out["signature"]
        else:
            parts = {key: _blob(cfg, f"peer-{key}") for key in chunks_.OFFER_PARTS}
            chunks_.take_offer(s, blob, parts, chunk, signature, max_set_size=cap)
    if want_next:
        reply |= accept_chunk(s, None, 0, None, want_next=True)
    return reply


def handle_pull(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Value holder: the next chunk of its sorted answer to the predicate holder's set."""
    return answer_chunk(_load(home, cfg, limits, now, ROLE_VALUE), _whole(cfg, "index", 0))


def handle_accept(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Predicate holder: one chunk of its own set as the value holder answered it (not the last)."""
    s = _load(home, cfg, limits, now, ROLE_PREDICATE)
    return accept_chunk(s, _blob(cfg, "my-doubly"), _whole(cfg, "index", 0), cfg.get("peer-signature"), False)


def handle_answer(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Predicate holder: the last answer chunk, then match, pay, and answer the encrypted noisy sum."""
    s = _load(home, cfg, limits, now, ROLE_PREDICATE)
    blob = _blob(cfg, "my-doubly") if "my-doubly" in cfg else None
    return chunks_.answer_sum(s, blob, _whole(cfg, "index", 0), cfg.get("peer-signature"))


def handle_finish(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Value holder: pay, decrypt, add our own noise and release the count, the sum and the rate."""
    s = _load(home, cfg, limits, now, ROLE_VALUE)
    total, count = _blob(cfg, "sum"), cfg.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise _malformed("count", "a whole number")
    return chunks_.finish_sum(s, total, count, cfg.get("peer-signature"))


def handle_abort(home: PartnerHome, cfg: dict[str, Any]) -> dict[str, Any]:
    session = check_session_id(_text(cfg, "session-id"))
    drop_session(home, session)
    _drop_legacy(home, session)
    return {"aborted": True}


def register_sum_handlers(
    app: ClientApp, resolve_home: Callable[[Context], PartnerHome], load_column: LoadColumn
) -> None:
    """Add the ``query.psi_sum_*`` handlers; ``load_column(home, dataset, column, batch)`` returns the
    (ids, cells) batches of at most ``batch`` rows, row for row, which a session reads one at a time."""

    def wrap(step: Callable[[PartnerHome, dict[str, Any], PartyLimits, float], dict[str, Any]]) -> Any:
        def handler(msg: Message, context: Context) -> Message:
            try:
                limits = PartyLimits.from_node_config(context.node_config)
                return _reply(msg, step(resolve_home(context), _config(msg), limits, time.time()))
            except FedCustomerError as exc:
                return _error_reply(msg, exc)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                return _error_reply(
                    msg, IntegrityError(f"malformed intersection-sum message ({type(exc).__name__})")
                )

        return handler

    app.query(MSG_OPEN)(wrap(lambda home, cfg, limits, now: handle_open(home, cfg, load_column, limits, now)))
    for name, step in ((MSG_STEP, handle_step), (MSG_PULL, handle_pull), (MSG_ACCEPT, handle_accept),
                       (MSG_ANSWER, handle_answer), (MSG_FINISH, handle_finish)):  # fmt: skip
        app.query(name)(wrap(step))
    app.query(MSG_ABORT)(wrap(lambda home, cfg, _limits, _now: handle_abort(home, cfg)))


# --- the coordinator's side ----------------------------------------------------------------
@dataclass
class SumView:
    """What the coordinator relays and learns: sizes, chunk counts, the noisy count, the released rate."""

    session_id: str
    noisy_count: int
    noisy_sum: float
    rate: float | None
    set_size_a: int
    set_size_b: int
    bytes_relayed: int
    chunks_a: int = 1
    chunks_b: int = 1
    chunk_size: int = DEFAULT_SUM_CHUNK_SIZE


@dataclass
class _Side:
    """One partner's set as the relay sees it: chunks fetched from it and relayed to its peer."""

    node: int
    name: str
    chunks: int
    total: int
    own: deque[dict[str, Any]] = field(default_factory=deque)  # fetched, not yet relayed
    fetched: int = 0
    relayed: int = 0

    def take_own(self, reply: dict[str, Any]) -> None:
        index = next_own_index(self.name, reply, self.fetched, self.chunks)
        fields = {"peer-blinded": bytes(reply["blinded"]), "index": index, "chunks": self.chunks,
                  "count": self.total} | _signature(reply)  # fmt: skip
        for key in chunks_.OFFER_PARTS:
            if key in reply:
                fields[f"peer-{key}"] = bytes(reply[key])
        self.own.append(fields)
        self.fetched += 1


def _size(fields: dict[str, Any]) -> int:
    return sum(len(v) for k, v in fields.items() if isinstance(v, bytes) and k != "peer-signature")


def _relay_sets(grid: Grid, session: str, a: _Side, b: _Side, timeout: float | None,
                report: Callable[[str], None]) -> tuple[deque[tuple[int, bytes, dict[str, bytes]]], int]:  # fmt: skip
    """Each set to its peer chunk by chunk; returns the value holder's first answer chunk(s) and bytes."""
    answers: deque[tuple[int, bytes, dict[str, bytes]]] = deque()
    peer, side, relayed = {a.node: b, b.node: a}, {a.node: a, b.node: b}, 0
    for _ in range(max(a.chunks, b.chunks) + 2):  # every pass relays one chunk each way
        msgs: dict[int, dict[str, Any]] = {a.node: {}, b.node: {}}
        for x in (a, b):  # each side's next chunk goes to its peer...
            if x.own:
                fields = x.own.popleft()
                msgs[peer[x.node].node] |= fields
                x.relayed += 1
                relayed += _size(fields)
        for x in (a, b):  # ...which hands out its own next one in the same reply
            if x.fetched < x.chunks and not x.own:
                msgs[x.node]["want-next"] = True
        cfg = {n: {"session-id": session, "peer": peer[n].name} | msg for n, msg in msgs.items() if msg}
        if not cfg:
            return answers, relayed
        for node, reply in _exchange(grid, MSG_STEP, cfg, timeout).items():
            if "blinded" in reply:
                side[node].take_own(reply)
            if "doubly" in reply:
                sig = reply.get("answer-signature")
                answers.append((int(reply["answer-index"]), bytes(reply["doubly"]),
                                {"peer-signature": bytes(sig)} if isinstance(sig, bytes) and sig else {}))  # fmt: skip
        report(f"PSI {session} (sum): {a.name} {a.relayed}/{a.chunks} chunks to {b.name}, "
               f"{b.name} {b.relayed}/{b.chunks} chunks to {a.name}")  # fmt: skip
    raise IntegrityError(f"intersection-sum session {session!r}: the relay stopped making progress")


def run_sum_on_grid(
    grid: Grid,
    node_a: int,
    node_b: int,
    dataset_a: str,
    dataset_b: str,
    *,
    value: str,
    where: str,
    name_a: str,
    name_b: str,
    params: SumParams,
    session_id: str | None = None,
    run_id: str | None = None,
    timeout: float | None = None,
    chunk_size: int = DEFAULT_SUM_CHUNK_SIZE,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> SumView:
    """Drive one intersection-sum between the value holder (a) and the predicate holder (b)."""
    if node_a == node_b or name_a == name_b:
        raise ConfigError("an intersection-sum needs two different partner nodes")
    session = check_session_id(session_id or f"psum-{secrets.token_hex(8)}")
    common = {"session-id": session, "run-id": run_id or session, "epsilon": params.epsilon,
              "value-max": params.value_max, "chunk-size": check_chunk_size(chunk_size),
              "workers": workers}  # fmt: skip

    def report(line: str) -> None:
        log.info("%s", line)
        if progress is not None:
            progress(line)

    try:
        opened = _exchange(grid, MSG_OPEN, {
            node_a: {**common, "dataset": dataset_a, "role": ROLE_VALUE, "column": value, "peer": name_b},
            node_b: {**common, "dataset": dataset_b, "role": ROLE_PREDICATE, "column": where, "peer": name_a},
        }, timeout)  # fmt: skip
        a, b = (_Side(n, name, int(opened[n]["chunks"]), int(opened[n]["count"]))
                for n, name in ((node_a, name_a), (node_b, name_b)))  # fmt: skip
        a.take_own(opened[node_a])
        b.take_own(opened[node_b])
        answers, relayed = _relay_sets(grid, session, a, b, timeout, report)
        for j in range(1, b.chunks):  # the value holder's sorted answer, back to the predicate holder
            if not answers:
                raise IntegrityError(f"intersection-sum session {session!r}: an answer chunk is missing")
            k, blob, sig = answers.popleft()
            _exchange(grid, MSG_ACCEPT, {node_b: {"session-id": session, "my-doubly": blob, "index": k} | sig},
                      timeout)  # fmt: skip
            pulled = _exchange(grid, MSG_PULL, {node_a: {"session-id": session, "index": j}}, timeout)[node_a]
            answers.append((int(pulled["index"]), bytes(pulled["doubly"]), _signature(pulled)))
            relayed += len(blob)
            report(f"PSI {session} (sum): {j}/{b.chunks} answer chunks back to {name_b}")
        if not answers:
            raise IntegrityError(f"intersection-sum session {session!r}: the last answer chunk is missing")
        k, blob, sig = answers.popleft()
        answer = _exchange(grid, MSG_ANSWER, {node_b: {"session-id": session, "my-doubly": blob, "index": k}
                           | sig}, timeout)[node_b]  # fmt: skip
        done = _exchange(grid, MSG_FINISH, {node_a: {"session-id": session, "sum": bytes(answer["sum"]),
                         "count": int(answer["count"])} | _signature(answer)}, timeout)[node_a]  # fmt: skip
        relayed += len(blob) + len(bytes(answer["sum"]))
        report(f"PSI {session} (sum): {b.chunks}/{b.chunks} answer chunks back to {name_b}; released")
    except FedCustomerError:
        _abort_sum(grid, session, (node_a, node_b), timeout)
        raise
    return SumView(
        session_id=session,
        noisy_count=int(done["noisy-count"]),
        noisy_sum=float(done["noisy-sum"]),
        rate=float(done["rate"]) if "rate" in done else None,
        set_size_a=a.total,
        set_size_b=b.total,
        bytes_relayed=relayed,
        chunks_a=a.chunks,
        chunks_b=b.chunks,
        chunk_size=chunk_size,
    )


def _abort_sum(grid: Grid, session: str, nodes: tuple[int, int], timeout: float | None) -> None:
    """Best effort: both partners forget the session's secrets."""
    try:
        _exchange(grid, MSG_ABORT, {n: {"session-id": session} for n in nodes}, timeout)
    except FedCustomerError:
        pass
