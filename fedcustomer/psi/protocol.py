"""PSI through the coordinator: Flower query handlers on the partners, a relay on the server.

The coordinator drives one session (see :mod:`fedcustomer.psi.core` for the maths and
who learns what) with three query messages to each of the two partners and relays only
blinded group elements between them::

    query.psi_blind    {session-id, dataset, role, peer}  -> {blinded: packed H(id)^s, count}
    query.psi_reblind  {session-id, peer, peer-blinded}   -> {doubly: peer values ^ s, same order}
    query.psi_finish   {session-id, my-doubly}            -> {size, digest, set-size, peer-set-size, ...}
    query.psi_abort    {session-id}                       -> {} (drop the session's secret state)

Between messages a partner keeps its session (secret scalar, its pseudonyms and blinded
values; never an id) in ``<home>/state/psi/<session>.party.json`` (0600, see
:mod:`fedcustomer.psi.state`), deleted at finish, abort, expiry or when a customer it
lists is erased, so a node whose ClientApp runs in a fresh process per message still completes
the session. At finish it writes the alignment, its own pseudonyms of the shared customers in
the agreed order, to ``<home>/state/psi/<session>.alignment.json`` for the vertical trainer
(:func:`load_alignment`). The coordinator learns the two set sizes, the intersection size and
the alignment digest (checked equal on both sides), nothing else.

What a partner enforces, whatever the coordinator sends (:class:`PartyLimits`, set in the
partner's own node config):

* a session is opened with one named peer (not itself; one of ``psi-peers`` when set);
  the partner reblinds values only inside a session it opened, only for that peer's name,
  and only once: a second reblind request in the same session is refused, so a coordinator
  cannot test guesses adaptively within a session;
* at most ``psi-max-set-size`` values per set (default 1,000,000), checked before any work;
* open sessions expire after ``psi-session-ttl-s`` (default 3600 s) and are removed;
* a malformed message (missing field, wrong type, ragged or invalid values) gets an error
  reply naming the field, never a traceback.

Signed end to end (:mod:`fedcustomer.psi.signing`): each party signs the values it sends
(its blinded set; its answer to the peer's set) with its link key over the run id, session,
step, mode, both names and the digests of the values (and of the set answered). A party that
pinned its peer's link key refuses unsigned, altered, spliced or replayed values, so the
coordinator cannot test guessed ids under the peer's name. A party without a pin for its
peer runs unauthenticated: then a coordinator posing as the peer can still test one guessed set
per session (each session is an audited ``record_linkage`` read).

Count-only (``reveal="count"``): each party shuffles its answer to the peer's set, so matching
its own values tells it how many are shared and not which; no alignment is kept. What each
side learns per mode is in docs/TWO-PARTY.md.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.errors import (
    AccessDenied,
    ConfigError,
    DataError,
    FedCustomerError,
    FederationError,
    IntegrityError,
)
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import signing
from fedcustomer.psi.core import (
    DEFAULT_MAX_SET_SIZE,
    POINT_BYTES,
    PSIParty,
    check_max_set_size,
    pack,
    secure_shuffle,
    unpack,
)
from fedcustomer.psi.noisy_count import check_count_epsilon, finish_count
from fedcustomer.psi.state import (
    DEFAULT_SESSION_TTL_S,
    alignment_path,
    answered_path,
    check_session_id,
    drop_session,
    expire_sessions,
    party_path,
    read_json,
    save_alignment,
    write_private,
)

MSG_BLIND, MSG_REBLIND, MSG_FINISH, MSG_ABORT = "psi_blind", "psi_reblind", "psi_finish", "psi_abort"
REVEAL_IDS, REVEAL_COUNT = "ids", "count"  # what the two parties learn: the shared customers, or how many
REVEALS = (REVEAL_IDS, REVEAL_COUNT)
RECORD = "psi"
PSI_ERROR_CODE = 4100  # same Flower error code as the partner's training handlers
MAX_WORKERS = 64
# Node-config keys a partner sets for itself (the coordinator cannot change them).
NODE_MAX_SET_SIZE, NODE_SESSION_TTL, NODE_PEERS = "psi-max-set-size", "psi-session-ttl-s", "psi-peers"

LoadIds = Callable[[PartnerHome, str], list[str]]
LocalLabels = Callable[[PartnerHome, str, list[str]], list[str]]


@dataclass(frozen=True)
class PartyLimits:
    """What a partner accepts in a PSI session, set on the partner's own node.

    ``peers``: partner names this node links records with (``None``: any name but its own).
    """

    max_set_size: int = DEFAULT_MAX_SET_SIZE
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    peers: frozenset[str] | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> PartyLimits:
        size = node_config.get(NODE_MAX_SET_SIZE, DEFAULT_MAX_SET_SIZE)
        ttl = node_config.get(NODE_SESSION_TTL, DEFAULT_SESSION_TTL_S)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ConfigError(f"node config {NODE_SESSION_TTL} must be a number of seconds > 0, got {ttl!r}")
        peers = node_config.get(NODE_PEERS)
        if peers is not None and not isinstance(peers, str):
            raise ConfigError(
                f"node config {NODE_PEERS} must be comma-separated partner names, got {peers!r}"
            )
        allowed = None if peers is None else frozenset(p.strip() for p in peers.split(",") if p.strip())
        return cls(max_set_size=check_max_set_size(size), session_ttl_s=float(ttl), peers=allowed)


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


def _workers(cfg: Mapping[str, object]) -> int:
    """Worker processes asked for, capped by this node's cores (the coordinator cannot exhaust them)."""
    value = cfg.get("workers", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _malformed("workers", "a whole number >= 1")
    return min(value, MAX_WORKERS, os.cpu_count() or 1)


def _values(blob: bytes, limits: PartyLimits, what: str) -> list[bytes]:
    """Group elements of a blob, refusing more than the node's maximum before splitting it."""
    count = len(blob) // POINT_BYTES
    if count > limits.max_set_size:
        raise AccessDenied(
            f"PSI {what} holds {count} values, more than this partner's maximum of "
            f"{limits.max_set_size} ({NODE_MAX_SET_SIZE}); refused"
        )
    return unpack(blob)


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


def _open_session(home: PartnerHome, session: str, limits: PartyLimits, now: float) -> dict:
    """The state of a session this partner opened and that is still alive, else a refusal."""
    path = party_path(home, session)
    if not path.exists():
        raise AccessDenied(
            f"no open PSI session {session!r} on this partner: a partner answers only inside a "
            "session it opened (finished, aborted and expired sessions are closed)"
        )
    state = read_json(path, f"PSI session {session!r}")
    started = state.get("started_at")
    if not isinstance(started, (int, float)) or now - float(started) > limits.session_ttl_s:
        drop_session(home, session)
        raise AccessDenied(
            f"PSI session {session!r} has expired (older than {limits.session_ttl_s:g} s); run a new session"
        )
    return state


def handle_blind(
    home: PartnerHome,
    cfg: dict,
    load_ids: LoadIds,
    local_labels: LocalLabels | None,
    limits: PartyLimits = PartyLimits(),
    now: float | None = None,
) -> dict:
    """Start a session with a named peer: fresh secret, shuffled blinded ids. A session id is never reused."""
    now = time.time() if now is None else now
    session = check_session_id(_text(cfg, "session-id"))
    dataset, role, peer, workers = (
        _text(cfg, "dataset"),
        _text(cfg, "role"),
        _peer(cfg, home, limits),
        _workers(cfg),
    )
    run_id = str(cfg.get("run-id") or session)
    mode = str(cfg.get("reveal") or REVEAL_IDS)
    if mode not in REVEALS:
        raise _malformed("reveal", f"one of {', '.join(REVEALS)}")
    count_epsilon = check_count_epsilon(cfg["count-epsilon"]) if "count-epsilon" in cfg else None
    if count_epsilon is not None and mode != REVEAL_COUNT:
        raise ConfigError("a DP count (count-epsilon) needs reveal=count")
    expire_sessions(home, limits.session_ttl_s, now)
    path = party_path(home, session)
    if path.exists() or alignment_path(home, session).exists():
        raise ConfigError(
            f"PSI session {session!r} was already started on this partner; use a new session id"
        )
    ids = list(load_ids(home, dataset))
    if len(ids) > limits.max_set_size:
        raise DataError(
            f"dataset {dataset!r} has {len(ids)} ids, more than this partner's PSI maximum of "
            f"{limits.max_set_size} ({NODE_MAX_SET_SIZE})"
        )
    # What the state and the alignment keep per customer: the caller's labels (the store's
    # pseudonyms), else the position in the loaded id list; never the id itself.
    labels = (
        local_labels(home, dataset, ids) if local_labels is not None else [str(k) for k in range(len(ids))]
    )
    party = PSIParty(ids, role=role, labels=labels, workers=workers, max_set_size=limits.max_set_size)
    blob = pack(party.blinded())
    bound = {"run_id": run_id, "mode": mode, "me": home.config().name, "count_epsilon": count_epsilon}
    write_private(
        path, {"dataset": dataset, "peer": peer, "started_at": now, **bound, **party.session_state()}
    )
    signature = signing.sign(home, _statement("blinded", session, bound, peer, blob, outgoing=True))
    return {
        "blinded": blob,
        "count": len(blob) // POINT_BYTES,
        "duplicates-removed": party.duplicates_removed,
        "signature": signature,
    }


def handle_reblind(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """Raise the named peer's blinded values to our secret, once per session; remember them for the match."""
    now = time.time() if now is None else now
    session = check_session_id(_text(cfg, "session-id"))
    peer, blob = _text(cfg, "peer"), _blob(cfg, "peer-blinded")
    state = _open_session(home, session, limits, now)
    if state.get("peer") != peer:
        raise AccessDenied(f"PSI session {session!r} was opened with another peer, not {peer!r}; refused")
    signing.check(
        home,
        peer,
        cfg.get("peer-signature"),
        _statement("blinded", session, state, peer, blob),
        "blinded set",
    )
    values = _values(blob, limits, "peer set")
    try:  # claim the one answer of this session atomically, before any work
        os.close(os.open(answered_path(home, session), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise AccessDenied(
            f"PSI session {session!r} already answered its peer's values; a second request in "
            "the same session is refused (run a new session)"
        ) from None
    party = PSIParty.restore(state, max_set_size=limits.max_set_size)
    doubly = party.reblind(values)
    write_private(party_path(home, session), {**state, "their_doubly": pack(doubly).hex()})
    if state.get("mode") == REVEAL_COUNT:  # the peer gets its values back unlinkable to its own order
        secure_shuffle(doubly)
    out = pack(doubly)
    signed = _statement("doubly", session, state, peer, out, answers=blob, outgoing=True)
    return {"doubly": out, "count": len(doubly), "signature": signing.sign(home, signed)}


def handle_finish(
    home: PartnerHome, cfg: dict, limits: PartyLimits = PartyLimits(), now: float | None = None
) -> dict:
    """Match, keep the alignment, forget the secret; report only sizes and the digest."""
    now = time.time() if now is None else now
    session = check_session_id(_text(cfg, "session-id"))
    blob = _blob(cfg, "my-doubly")
    state = _open_session(home, session, limits, now)
    if not isinstance(state.get("their_doubly"), str):
        raise ConfigError(f"PSI session {session!r}: finish came before reblind; run the session in order")
    party = PSIParty.restore(state, max_set_size=limits.max_set_size)
    try:
        theirs = unpack(bytes.fromhex(state["their_doubly"]))
    except ValueError:
        raise IntegrityError(f"PSI session {session!r} state is damaged; run a new session") from None
    peer = str(state.get("peer"))
    mine = pack(party.blinded())
    signed = _statement("doubly", session, state, peer, blob, answers=mine)
    signing.check(home, peer, cfg.get("peer-signature"), signed, "answer to our blinded set")
    if state.get("mode") == REVEAL_COUNT:
        return finish_count(home, session, state, party, _values(blob, limits, "reply"), theirs)
    result = party.intersect(_values(blob, limits, "reply"), theirs)
    save_alignment(home, session, result, dataset=str(state.get("dataset")), role=party.role)
    drop_session(home, session)
    return {
        "size": result.size,
        "digest": result.digest,
        "set-size": result.set_size,
        "peer-set-size": result.peer_set_size,
        "duplicates-removed": result.duplicates_removed,
    }


def _statement(
    kind: str,
    session: str,
    state: Mapping[str, object],
    peer: str,
    values: bytes,
    *,
    answers: bytes | None = None,
    outgoing: bool = False,
) -> bytes:
    """What one side signs (``outgoing``) or expects its peer to have signed, bound to this session."""
    me = str(state.get("me") or "")
    return signing.statement(
        kind,
        run_id=str(state.get("run_id") or session),
        session=session,
        mode=str(state.get("mode") or REVEAL_IDS),
        sender=me if outgoing else peer,
        recipient=peer if outgoing else me,
        values=values,
        answers=answers,
    )


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
    app.query(MSG_FINISH)(wrap(handle_finish))
    app.query(MSG_ABORT)(wrap(lambda home, cfg, limits: handle_abort(home, cfg)))


# --- coordinator side --------------------------------------------------------------------
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

    def to_dict(self) -> dict:
        return asdict(self)


def _exchange(grid: Grid, step: str, configs: dict[int, dict], timeout: float | None) -> dict[int, dict]:
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
            raise FederationError(
                f"PSI step {step}: partner node {node} did not answer; run the session again"
            )
        if reply.has_error():
            raise FederationError(f"PSI step {step} failed on partner node {node}: {reply.error.reason}")
        out[node] = dict(reply.content[RECORD])
    return out


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
) -> PSIServerView:
    """Drive one PSI session between two named partner nodes, relaying blinded values only.

    Each partner is told its peer's name and answers only that peer's values, once.
    Raises FederationError when a partner fails or does not answer (both are told to drop
    the session) and IntegrityError when the two sides end with different alignments.
    """
    if node_a == node_b or name_a == name_b:
        raise ConfigError("PSI needs two different partner nodes")
    session = check_session_id(session_id or f"psi-{secrets.token_hex(8)}")
    if reveal not in REVEALS:
        raise ConfigError(f"--reveal must be one of {', '.join(REVEALS)}, got {reveal!r}")
    bound: dict = {"run-id": run_id or session, "reveal": reveal}
    if count_epsilon is not None:
        bound["count-epsilon"] = check_count_epsilon(count_epsilon)
    relayed = 0
    try:
        blind = _exchange(
            grid,
            MSG_BLIND,
            {
                node_a: {
                    "session-id": session,
                    "dataset": dataset_a,
                    "role": "initiator",
                    "peer": name_b,
                    "workers": workers,
                    **bound,
                },
                node_b: {
                    "session-id": session,
                    "dataset": dataset_b,
                    "role": "responder",
                    "peer": name_a,
                    "workers": workers,
                    **bound,
                },
            },
            timeout,
        )
        blob_a, blob_b = bytes(blind[node_a]["blinded"]), bytes(blind[node_b]["blinded"])
        relayed += len(blob_a) + len(blob_b)
        reblind = _exchange(
            grid,
            MSG_REBLIND,
            {
                node_a: {"session-id": session, "peer": name_b, "peer-blinded": blob_b}
                | _signature(blind[node_b]),
                node_b: {"session-id": session, "peer": name_a, "peer-blinded": blob_a}
                | _signature(blind[node_a]),
            },
            timeout,
        )
        doubly_b, doubly_a = bytes(reblind[node_a]["doubly"]), bytes(reblind[node_b]["doubly"])
        relayed += len(doubly_a) + len(doubly_b)
        finish = _exchange(
            grid,
            MSG_FINISH,
            {
                node_a: {"session-id": session, "my-doubly": doubly_a} | _signature(reblind[node_b]),
                node_b: {"session-id": session, "my-doubly": doubly_b} | _signature(reblind[node_a]),
            },
            timeout,
        )
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
    )


def _signature(reply: dict) -> dict:
    """The sender's signature, relayed unchanged to its peer (absent for an unsigned party)."""
    sig = reply.get("signature")
    return {"peer-signature": bytes(sig)} if isinstance(sig, bytes) and sig else {}


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
