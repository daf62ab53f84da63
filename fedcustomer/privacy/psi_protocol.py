"""PSI through the coordinator: Flower query handlers on the partners, a relay on the server.

The coordinator drives one session (see :mod:`fedcustomer.privacy.psi` for the maths and
who learns what) with three query messages to each of the two partners and relays only
blinded group elements between them::

    query.psi_blind    {session-id, dataset, role}  -> {blinded: packed H(id)^s, count}
    query.psi_reblind  {session-id, peer-blinded}   -> {doubly: peer values ^ s, same order}
    query.psi_finish   {session-id, my-doubly}      -> {size, digest, set-size, peer-set-size, duplicates-removed}
    query.psi_abort    {session-id}                 -> {} (drop the session's secret state)

Between messages a partner keeps its session (secret scalar, shuffled order) in
``<home>/state/psi/<session>.party.json`` (0600), deleted at finish or abort, so a node whose
ClientApp runs in a fresh process per message still completes the session. At finish it
writes the alignment, its own local labels of the shared customers in the agreed order,
to ``<home>/state/psi/<session>.alignment.json`` for the vertical trainer
(:func:`load_alignment`). The coordinator learns the two set sizes, the intersection size
and the alignment digest (checked equal on both sides), nothing else.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.clients.home import PartnerHome
from fedcustomer.errors import ConfigError, DataError, FedCustomerError, FederationError, IntegrityError
from fedcustomer.privacy.psi import PSIParty, PSIResult, pack, unpack

MSG_BLIND, MSG_REBLIND, MSG_FINISH, MSG_ABORT = "psi_blind", "psi_reblind", "psi_finish", "psi_abort"
RECORD = "psi"
PSI_ERROR_CODE = 4100  # same Flower error code as the partner's training handlers
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

LoadIds = Callable[[PartnerHome, str], list[str]]
LocalLabels = Callable[[PartnerHome, str, list[str]], list[str]]


# --- node-local files ------------------------------------------------------------------
def check_session_id(session_id: str) -> str:
    """Session ids become file names: letters, digits, ``_.-``, at most 64, no path tricks."""
    if not isinstance(session_id, str) or not _SESSION_RE.match(session_id):
        raise ConfigError(f"PSI session id {session_id!r} is invalid: use 1-64 letters, digits, '_', '.', '-'")
    return session_id


def _psi_dir(home: PartnerHome) -> Path:
    return home.state_dir / "psi"


def party_path(home: PartnerHome, session_id: str) -> Path:
    return _psi_dir(home) / f"{check_session_id(session_id)}.party.json"


def alignment_path(home: PartnerHome, session_id: str) -> Path:
    return _psi_dir(home) / f"{check_session_id(session_id)}.alignment.json"


def _write_private(path: Path, payload: dict) -> None:
    """Owner-only file written whole or not at all (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} not found at {path}: was the PSI session run on this partner?") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{what} at {path} is unreadable or damaged ({exc}); run the PSI session again") from None


def save_alignment(home: PartnerHome, session_id: str, result: PSIResult, *, dataset: str, role: str) -> Path:
    """Keep this side's aligned local labels for the vertical trainer."""
    path = alignment_path(home, session_id)
    _write_private(path, {"session_id": session_id, "dataset": dataset, "role": role, **result.to_dict()})
    return path


def load_alignment(home: PartnerHome, session_id: str) -> list[str]:
    """This partner's local labels of the shared customers, in the order both partners agreed on."""
    return list(load_alignment_result(home, session_id).local_ids)


def load_alignment_result(home: PartnerHome, session_id: str) -> PSIResult:
    """The full stored result (size, labels, digest, set sizes) of a finished session."""
    data = _read_json(alignment_path(home, session_id), f"PSI alignment for session {session_id!r}")
    try:
        res = PSIResult(size=int(data["size"]), local_ids=[str(x) for x in data["local_ids"]],
                        duplicates_removed=int(data["duplicates_removed"]), set_size=int(data["set_size"]),
                        peer_set_size=int(data["peer_set_size"]), digest=str(data["digest"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"PSI alignment for session {session_id!r} is damaged ({exc}); run it again") from None
    if res.size != len(res.local_ids):
        raise IntegrityError(f"PSI alignment for session {session_id!r} lists {len(res.local_ids)} ids "
                             f"but records size {res.size}; run the session again")
    return res


# --- partner side ------------------------------------------------------------------------
def _config(msg: Message) -> dict:
    if RECORD not in msg.content:
        raise ConfigError(f"PSI message {msg.metadata.message_type} has no '{RECORD}' record")
    return dict(msg.content[RECORD])


def _reply(msg: Message, values: dict) -> Message:
    return Message(content=RecordDict({RECORD: ConfigRecord(values)}), reply_to=msg)


def _error_reply(msg: Message, exc: FedCustomerError) -> Message:
    return Message(error=Error(code=PSI_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def handle_blind(home: PartnerHome, cfg: dict, load_ids: LoadIds, local_labels: LocalLabels | None) -> dict:
    """Start a session: fresh secret, shuffled blinded ids. A session id is never reused."""
    session, dataset, role = check_session_id(str(cfg.get("session-id"))), str(cfg.get("dataset")), str(cfg.get("role"))
    path = party_path(home, session)
    if path.exists() or alignment_path(home, session).exists():
        raise ConfigError(f"PSI session {session!r} was already started on this partner; use a new session id")
    ids = list(load_ids(home, dataset))
    labels = local_labels(home, dataset, ids) if local_labels is not None else None
    party = PSIParty(ids, role=role, labels=labels, workers=int(cfg.get("workers", 1)))
    blinded = party.blinded()
    _write_private(path, {"dataset": dataset, **party.session_state()})
    return {"blinded": pack(blinded), "count": len(blinded), "duplicates-removed": party.duplicates_removed}


def _load_party(home: PartnerHome, session: str) -> tuple[dict, PSIParty]:
    state = _read_json(party_path(home, session), f"PSI session {session!r}")
    return state, PSIParty.restore(state)


def handle_reblind(home: PartnerHome, cfg: dict) -> dict:
    """Raise the peer's blinded values to our secret; remember them for the match."""
    session = check_session_id(str(cfg.get("session-id")))
    state, party = _load_party(home, session)
    doubly = party.reblind(unpack(bytes(cfg.get("peer-blinded", b""))))
    _write_private(party_path(home, session), {**state, "their_doubly": pack(doubly).hex()})
    return {"doubly": pack(doubly), "count": len(doubly)}


def handle_finish(home: PartnerHome, cfg: dict) -> dict:
    """Match, keep the alignment, forget the secret; report only sizes and the digest."""
    session = check_session_id(str(cfg.get("session-id")))
    state, party = _load_party(home, session)
    if "their_doubly" not in state:
        raise ConfigError(f"PSI session {session!r}: finish came before reblind; run the session in order")
    result = party.intersect(unpack(bytes(cfg.get("my-doubly", b""))), unpack(bytes.fromhex(state["their_doubly"])))
    save_alignment(home, session, result, dataset=state["dataset"], role=state["role"])
    party_path(home, session).unlink(missing_ok=True)
    return {"size": result.size, "digest": result.digest, "set-size": result.set_size,
            "peer-set-size": result.peer_set_size, "duplicates-removed": result.duplicates_removed}


def handle_abort(home: PartnerHome, cfg: dict) -> dict:
    party_path(home, check_session_id(str(cfg.get("session-id")))).unlink(missing_ok=True)
    return {"aborted": True}


def register_psi_handlers(app: ClientApp, resolve_home: Callable[[Context], PartnerHome], load_ids: LoadIds,
                          *, local_labels: LocalLabels | None = None) -> None:
    """Add the ``query.psi_*`` handlers to a partner's ClientApp.

    ``load_ids(home, dataset)`` returns the customer ids to match (read them through the
    governed store so the read is audited). ``local_labels(home, dataset, ids)``, if given,
    returns what the stored alignment lists per id instead of the raw id (e.g. the store's
    pseudonyms), so no raw id is written to the state directory.
    """

    def wrap(step: Callable[[PartnerHome, dict], dict]) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            try:
                return _reply(msg, step(resolve_home(context), _config(msg)))
            except FedCustomerError as exc:
                return _error_reply(msg, exc)

        return handler

    app.query(MSG_BLIND)(wrap(lambda home, cfg: handle_blind(home, cfg, load_ids, local_labels)))
    app.query(MSG_REBLIND)(wrap(handle_reblind))
    app.query(MSG_FINISH)(wrap(handle_finish))
    app.query(MSG_ABORT)(wrap(handle_abort))


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

    def to_dict(self) -> dict:
        return asdict(self)


def _exchange(grid: Grid, step: str, configs: dict[int, dict], timeout: float | None) -> dict[int, dict]:
    msgs = [Message(content=RecordDict({RECORD: ConfigRecord(cfg)}), dst_node_id=node, message_type=f"query.{step}")
            for node, cfg in configs.items()]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout)}
    out = {}
    for node in configs:
        reply = replies.get(node)
        if reply is None:
            raise FederationError(f"PSI step {step}: partner node {node} did not answer; run the session again")
        if reply.has_error():
            raise FederationError(f"PSI step {step} failed on partner node {node}: {reply.error.reason}")
        out[node] = dict(reply.content[RECORD])
    return out


def run_psi_on_grid(grid: Grid, node_a: int, node_b: int, dataset_a: str, dataset_b: str, *,
                    session_id: str | None = None, timeout: float | None = None, workers: int = 1) -> PSIServerView:
    """Drive one PSI session between two partner nodes, relaying blinded values only.

    Raises FederationError when a partner fails or does not answer (both are told to drop
    the session) and IntegrityError when the two sides end with different alignments.
    """
    if node_a == node_b:
        raise ConfigError("PSI needs two different partner nodes")
    session = check_session_id(session_id or f"psi-{secrets.token_hex(8)}")
    relayed = 0
    try:
        blind = _exchange(grid, MSG_BLIND, {
            node_a: {"session-id": session, "dataset": dataset_a, "role": "initiator", "workers": workers},
            node_b: {"session-id": session, "dataset": dataset_b, "role": "responder", "workers": workers},
        }, timeout)
        blob_a, blob_b = bytes(blind[node_a]["blinded"]), bytes(blind[node_b]["blinded"])
        relayed += len(blob_a) + len(blob_b)
        reblind = _exchange(grid, MSG_REBLIND, {node_a: {"session-id": session, "peer-blinded": blob_b},
                                                node_b: {"session-id": session, "peer-blinded": blob_a}}, timeout)
        doubly_b, doubly_a = bytes(reblind[node_a]["doubly"]), bytes(reblind[node_b]["doubly"])
        relayed += len(doubly_a) + len(doubly_b)
        finish = _exchange(grid, MSG_FINISH, {node_a: {"session-id": session, "my-doubly": doubly_a},
                                              node_b: {"session-id": session, "my-doubly": doubly_b}}, timeout)
    except FedCustomerError:
        _abort(grid, session, (node_a, node_b), timeout)
        raise
    fa, fb = finish[node_a], finish[node_b]
    if int(fa["size"]) != int(fb["size"]) or fa["digest"] != fb["digest"]:
        raise IntegrityError(f"PSI session {session!r}: the partners ended with different alignments "
                             f"({fa['size']} vs {fb['size']} shared); discard it and run a new session")
    return PSIServerView(session_id=session, node_a=node_a, node_b=node_b, set_size_a=int(fa["set-size"]),
                         set_size_b=int(fb["set-size"]), intersection_size=int(fa["size"]), digest=str(fa["digest"]),
                         bytes_relayed=relayed)


def _abort(grid: Grid, session: str, nodes: Sequence[int], timeout: float | None) -> None:
    """Best effort: ask both partners to forget the session's secret."""
    msgs = [Message(content=RecordDict({RECORD: ConfigRecord({"session-id": session})}), dst_node_id=n,
                    message_type=f"query.{MSG_ABORT}") for n in nodes]
    try:
        grid.send_and_receive(msgs, timeout=timeout)
    except Exception:  # noqa: BLE001 - the original failure is what the caller must see
        pass
