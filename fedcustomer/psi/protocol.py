"""PSI through the coordinator: Flower query handlers on the partners, streamed in chunks.

The coordinator (:mod:`fedcustomer.psi.relay`) drives one session and relays only blinded
group elements between the two partners, each set in chunks of ``chunk-size`` values (default
1,000,000, one message per chunk and step), so neither a partner nor a message grows with the
set size::

    query.psi_blind    {session-id, dataset, role, peer, chunk-size}   -> {chunk 0 of H(id)^s, chunks, count}
    query.psi_reblind  {session-id, peer, peer-blinded, index, chunks, count} -> {doubly: chunk ^ s}
    query.psi_accept   {session-id, my-doubly?, index, want-next}      -> {our next chunk}
    query.psi_answer   {session-id, index}                             -> {doubly: answer chunk} (count-only)
    query.psi_finish   {session-id, my-doubly, index}                  -> {size, digest, set-size, ...}
    query.psi_abort    {session-id}                                    -> {} (drop the session's secret state)

A set of one chunk takes three messages per partner (blind, reblind, finish), as before
chunking. Between messages a partner keeps its session on disk (:mod:`fedcustomer.psi.chunked`:
secret scalar and counters in ``<home>/state/psi/<session>.party.json``, values in
``<session>.work/``; never an id), deleted at finish, abort, expiry or when a customer it lists
is erased, so a node whose ClientApp runs in a fresh process per message completes the session
holding one chunk in memory at a time. At finish it writes the alignment, its own pseudonyms of
the shared customers in the agreed order, to ``<home>/state/psi/<session>.alignment.json`` for
the vertical trainer (:func:`load_alignment`). The coordinator learns the two set sizes, the
intersection size and the alignment digest (checked equal on both sides), nothing else.

What a partner enforces, whatever the coordinator sends (:class:`PartyLimits`, set in the
partner's own node config):

* a session is opened with one named peer (not itself; one of ``psi-peers`` when set);
  the partner reblinds values only inside a session it opened, only for that peer's name,
  each chunk of the peer's set once and in order (the set's size is fixed by its first chunk),
  so a coordinator cannot test guesses beyond one set per session;
* at most ``psi-max-set-size`` values per set, its own and its peer's (default 20,000,000),
  checked before any work; a message holds at most 4,000,000 values;
* open sessions expire after ``psi-session-ttl-s`` (default 3600 s) and are removed;
* a malformed message (missing field, wrong type, ragged or invalid values) gets an error
  reply naming the field, never a traceback.

Signed end to end (:mod:`fedcustomer.psi.signing`): each party signs every chunk it sends
(of its blinded set; of its answer to the peer's set) with its link key over the run id,
session, step, mode, both names, the digests of the values (and a hash chain over the chunks
answered), the chunk's index, the chunk count and the set's size. A party that pinned its
peer's link key refuses unsigned, altered, dropped, reordered, spliced or replayed chunks, so
the coordinator cannot test guessed ids under the peer's name. A party without a pin for its
peer runs unauthenticated: then a coordinator posing as the peer can still test one guessed set
per session (each session is an audited ``record_linkage`` read).

Count-only (``reveal="count"``): each party answers the peer's set only once all of it has
arrived, sorted by value (an order the peer cannot relate to its customers), so matching its own
values tells it how many are shared and not which; no alignment is kept. What each side learns
per mode is in docs/TWO-PARTY.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, FederationError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.chunked import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_NODE_MAX_SET_SIZE,
    LoadIds,
    LocalLabels,
    accept_chunk,
    answer_chunk,
    check_chunk_size,
    finish_session,
    load_session,
    open_session,
    reblind_chunk,
)
from fedcustomer.psi.chunked import REVEAL_COUNT as REVEAL_COUNT  # re-exported for callers
from fedcustomer.psi.chunked import REVEAL_IDS as REVEAL_IDS
from fedcustomer.psi.core import DEFAULT_MAX_SET_SIZE, POINT_BYTES, check_max_set_size
from fedcustomer.psi.noisy_count import check_count_epsilon
from fedcustomer.psi.state import DEFAULT_SESSION_TTL_S, check_session_id, drop_session
from fedcustomer.psi.state import alignment_path as alignment_path  # re-exported for callers
from fedcustomer.psi.state import party_path as party_path

MSG_BLIND, MSG_REBLIND, MSG_FINISH, MSG_ABORT = "psi_blind", "psi_reblind", "psi_finish", "psi_abort"
MSG_ACCEPT, MSG_ANSWER = "psi_accept", "psi_answer"
REVEALS = (REVEAL_IDS, REVEAL_COUNT)
RECORD = "psi"
PSI_ERROR_CODE = 4100  # same Flower error code as the partner's training handlers
MAX_WORKERS = 64
# Node-config keys a partner sets for itself (the coordinator cannot change them).
NODE_MAX_SET_SIZE, NODE_SESSION_TTL, NODE_PEERS = "psi-max-set-size", "psi-session-ttl-s", "psi-peers"


@dataclass(frozen=True)
class PartyLimits:
    """What a partner accepts in a PSI session, set on the partner's own node.

    ``peers``: partner names this node links records with (``None``: any name but its own).
    ``sum_max_set_size``: the same cap for the intersection-sum, whose sets carry a Paillier
    ciphertext per id (``psi-max-set-size`` when set, else 1,000,000).
    """

    max_set_size: int = DEFAULT_NODE_MAX_SET_SIZE
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    peers: frozenset[str] | None = None
    sum_max_set_size: int = DEFAULT_MAX_SET_SIZE

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> PartyLimits:
        size = node_config.get(NODE_MAX_SET_SIZE, DEFAULT_NODE_MAX_SET_SIZE)
        ttl = node_config.get(NODE_SESSION_TTL, DEFAULT_SESSION_TTL_S)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ConfigError(f"node config {NODE_SESSION_TTL} must be a number of seconds > 0, got {ttl!r}")
        peers = node_config.get(NODE_PEERS)
        if peers is not None and not isinstance(peers, str):
            raise ConfigError(
                f"node config {NODE_PEERS} must be comma-separated partner names, got {peers!r}"
            )
        allowed = None if peers is None else frozenset(p.strip() for p in peers.split(",") if p.strip())
        size = check_max_set_size(size)
        summed = size if NODE_MAX_SET_SIZE in node_config else DEFAULT_MAX_SET_SIZE
        return cls(max_set_size=size, session_ttl_s=float(ttl), peers=allowed, sum_max_set_size=summed)


# --- message fields: anything else than the expected type is a clear error -------------------
def _malformed(key: str, expected: str) -> IntegrityError:
    return IntegrityError(f"PSI message field {key!r} is missing or not {expected}; the message is malformed")


def _text(cfg: Mapping[str, object], key: str) -> str:
    value = cfg.get(key)
    if not isinstance(value, str) or not value:
        raise _malformed(key, "text")
    return value


def _blob(cfg: Mapping[str, object], key: str) -> bytes:
    value = cfg.get(key)
    if not isinstance(value, bytes):
        raise _malformed(key, "bytes")
    return value


def _whole(cfg: Mapping[str, object], key: str, default: int | None = None, minimum: int = 0) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _malformed(key, f"a whole number >= {minimum}")
    return value


def _workers(cfg: Mapping[str, object]) -> int:
    """Worker processes asked for, capped by this node's cores (the coordinator cannot exhaust them)."""
    return min(_whole(cfg, "workers", 1, 1), MAX_WORKERS, os.cpu_count() or 1)


def _peer(cfg: Mapping[str, object], home: PartnerHome, limits: PartyLimits) -> str:
    peer = _text(cfg, "peer")
    if len(peer) > 128 or not peer.isprintable():
        raise _malformed("peer", "a partner name")
    if peer == home.config().name:
        raise AccessDenied(
            f"PSI peer {peer!r} is this partner itself; a session links two different partners"
        )
    if limits.peers is not None and peer not in limits.peers:
        raise AccessDenied(
            f"PSI peer {peer!r} is not among this partner's linkage peers ({NODE_PEERS}); refused"
        )
    return peer


# --- partner side ------------------------------------------------------------------------
def _config(msg: Message) -> dict:
    record = msg.content.config_records.get(RECORD) if msg.has_content() else None
    if record is None:
        raise IntegrityError(f"PSI message {msg.metadata.message_type} has no '{RECORD}' config record")
    return dict(record)


def _reply(msg: Message, values: dict) -> Message:
    return Message(content=RecordDict({RECORD: ConfigRecord(values)}), reply_to=msg)


def _error_reply(msg: Message, exc: FedCustomerError) -> Message:
    return Message(error=Error(code=PSI_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def handle_blind(
    home: PartnerHome,
    cfg: dict,
    load_ids: LoadIds,
    local_labels: LocalLabels | None,
    limits: PartyLimits = PartyLimits(),
    now: float | None = None,
) -> dict:
    """Start a session with a named peer: fresh secret, its ids blinded and sealed on disk; chunk 0."""
    session = check_session_id(_text(cfg, "session-id"))
    bound: dict[str, Any] = {
        "session": session,
        "dataset": _text(cfg, "dataset"),
        "role": _text(cfg, "role"),
        "peer": _peer(cfg, home, limits),
        "workers": _workers(cfg),
        "run_id": str(cfg.get("run-id") or session),
        "mode": str(cfg.get("reveal") or REVEAL_IDS),
        "me": home.config().name,
        "chunk_size": check_chunk_size(cfg.get("chunk-size", DEFAULT_CHUNK_SIZE)),
    }
    if bound["mode"] not in REVEALS:
        raise _malformed("reveal", f"one of {', '.join(REVEALS)}")
    if bound["role"] not in ("initiator", "responder"):
        raise _malformed("role", "initiator or responder")
    bound["count_epsilon"] = check_count_epsilon(cfg["count-epsilon"]) if "count-epsilon" in cfg else None
    if bound["count_epsilon"] is not None and bound["mode"] != REVEAL_COUNT:
        raise ConfigError("a DP count (count-epsilon) needs reveal=count")
    now = time.time() if now is None else now
    return open_session(
        home,
        bound,
        load_ids,
        local_labels,
        max_set_size=limits.max_set_size,
        ttl_s=limits.session_ttl_s,
        now=now,
    )


def handle_reblind(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """Raise chunk ``index`` of the named peer's set to our secret, once and in order."""
    session = check_session_id(_text(cfg, "session-id"))
    peer, blob = _text(cfg, "peer"), _blob(cfg, "peer-blinded")
    if len(blob) % POINT_BYTES:
        raise IntegrityError(
            f"PSI message of {len(blob)} bytes is not a whole number of {POINT_BYTES}-byte group elements; "
            "the message was truncated or corrupted"
        )
    index, chunks = _whole(cfg, "index", 0), _whole(cfg, "chunks", 1, 1)
    total = _whole(cfg, "count", len(blob) // POINT_BYTES, 1)
    s = load_session(home, session, limits.session_ttl_s, time.time() if now is None else now)
    if s.state.get("peer") != peer:
        raise AccessDenied(f"PSI session {session!r} was opened with another peer, not {peer!r}; refused")
    return reblind_chunk(
        s, blob, index, chunks, total, cfg.get("peer-signature"), max_set_size=limits.max_set_size
    )


def _answer_in(cfg: Mapping[str, object]) -> tuple[bytes | None, int]:
    blob = _blob(cfg, "my-doubly") if "my-doubly" in cfg else None
    return blob, _whole(cfg, "index", 0)


def handle_accept(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """Take back one chunk of our values as the peer answered them; hand out our next chunk."""
    session = check_session_id(_text(cfg, "session-id"))
    blob, index = _answer_in(cfg)
    want_next = cfg.get("want-next", False)
    if not isinstance(want_next, bool):
        raise _malformed("want-next", "true or false")
    s = load_session(home, session, limits.session_ttl_s, time.time() if now is None else now)
    return accept_chunk(s, blob, index, cfg.get("peer-signature"), want_next)


def handle_answer(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """Count-only: the next chunk of our sorted answer to the peer's set."""
    session = check_session_id(_text(cfg, "session-id"))
    index = _whole(cfg, "index", 0)
    return answer_chunk(
        load_session(home, session, limits.session_ttl_s, time.time() if now is None else now), index
    )


def handle_finish(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """The last answer chunk, then match; keep the alignment, forget the secret; report sizes and the digest."""
    session = check_session_id(_text(cfg, "session-id"))
    blob, index = _answer_in(cfg)
    s = load_session(home, session, limits.session_ttl_s, time.time() if now is None else now)
    return finish_session(s, blob, index, cfg.get("peer-signature"))


def handle_abort(home: PartnerHome, cfg: dict) -> dict:
    drop_session(home, check_session_id(_text(cfg, "session-id")))
    return {"aborted": True}


def register_psi_handlers(
    app: ClientApp,
    resolve_home: Callable[[Context], PartnerHome],
    load_ids: LoadIds,
    *,
    local_labels: LocalLabels | None = None,
) -> None:
    """Add the ``query.psi_*`` handlers to a partner's ClientApp.

    ``load_ids(home, dataset)`` returns the customer ids to match (read them through the
    governed store so the read is audited). ``local_labels(home, dataset, ids)``, if given,
    returns what the session state and the alignment list per id (e.g. the store's
    pseudonyms); without it they list positions in the loaded list. No raw id is written to
    the state directory either way. Limits come from the node's own config
    (:class:`PartyLimits`). A malformed message gets an error reply, never a traceback.
    """

    def wrap(step: Callable[[PartnerHome, dict, PartyLimits], dict]) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            try:
                limits = PartyLimits.from_node_config(context.node_config)
                return _reply(msg, step(resolve_home(context), _config(msg), limits))
            except FedCustomerError as exc:
                return _error_reply(msg, exc)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                return _error_reply(msg, IntegrityError(f"malformed PSI message ({type(exc).__name__})"))

        return handler

    app.query(MSG_BLIND)(
        wrap(lambda home, cfg, limits: handle_blind(home, cfg, load_ids, local_labels, limits))
    )
    app.query(MSG_REBLIND)(wrap(handle_reblind))
    app.query(MSG_ACCEPT)(wrap(handle_accept))
    app.query(MSG_ANSWER)(wrap(handle_answer))
    app.query(MSG_FINISH)(wrap(handle_finish))
    app.query(MSG_ABORT)(wrap(lambda home, cfg, limits: handle_abort(home, cfg)))


def _exchange(grid: Grid, step: str, configs: dict[int, dict], timeout: float | None) -> dict[int, dict]:
    """One message per node, all replies or a FederationError naming the node and its reason."""
    msgs = [
        Message(
            content=RecordDict({RECORD: ConfigRecord(cfg)}), dst_node_id=node, message_type=f"query.{step}"
        )
        for node, cfg in configs.items()
    ]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout)}
    out = {}
    for node in configs:
        reply = replies.get(node)
        if reply is None:
            raise FederationError(_no_answer(step, node, timeout))
        if reply.has_error():
            raise FederationError(f"PSI step {step} failed on partner node {node}: {reply.error.reason}")
        out[node] = dict(reply.content[RECORD])
    return out


def _no_answer(step: str, node: int, timeout: float | None) -> str:
    """Why a step got no reply, and what to change before running it again.

    A node still working (the intersection-sum encrypts each id with Paillier, minutes per few
    thousand ids on a busy machine) looks the same as a lost one; running the session again with
    the same timeout would fail the same way, so the message names both remedies.
    """
    waited = f" within {timeout:g} s (--round-timeout)" if timeout is not None else ""
    return (
        f"PSI step {step}: partner node {node} did not answer{waited}. If its log shows it still working "
        "on the step, run the session again with a longer --round-timeout or a smaller --psi-chunk-size; "
        "if the node stopped, start it again and run the session again"
    )
