"""The private intersection-sum between two partner nodes over Flower messages, signed end to end.

The same four messages as :mod:`fedcustomer.psi.intersection_sum`, each partner on its own
node, the coordinator relaying:

1. ``psi_sum_open`` to both: the value holder answers its offer (public key, blinded ids,
   ciphertexts), the predicate holder its padded blinded set. Each first checks that its
   budget can pay, so a refusal costs nobody anything.
2. ``psi_sum_reblind`` to the value holder: the predicate holder's set, raised and shuffled.
3. ``psi_sum_answer`` to the predicate holder: the offer and the re-blinded set; it pays its
   ledger and answers the encrypted noisy sum and the noisy count.
4. ``psi_sum_finish`` to the value holder: it pays its ledger, decrypts and releases the rate.

Every relayed value set is signed by its sender's link key (:mod:`fedcustomer.psi.signing`,
mode ``sum``) and checked by the receiver when it pinned its peer, so the coordinator cannot
alter, splice or replay them. Between messages a node keeps its secrets (scalar, Paillier
key) in ``state/psi/<session>.sum.json`` (0600); the file goes when the session ends.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.errors import AccessDenied, ConfigError, FedCustomerError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import signing
from fedcustomer.psi.intersection_sum import (
    Payer,
    PredicateHolder,
    SumParams,
    ValueHolder,
    make_rate,
    paid_results,
    parse_flags,
    parse_values,
    sum_step,
)
from fedcustomer.psi.protocol import (
    PartyLimits,
    _config,
    _error_reply,
    _exchange,
    _malformed,
    _peer,
    _reply,
    _text,
)
from fedcustomer.psi.state import check_session_id, psi_dir, read_json, write_private

MSG_OPEN, MSG_REBLIND, MSG_ANSWER = "psi_sum_open", "psi_sum_reblind", "psi_sum_answer"
MSG_FINISH, MSG_ABORT = "psi_sum_finish", "psi_sum_abort"
ROLE_VALUE, ROLE_PREDICATE = "value", "predicate"
MODE = REVEAL_SUM = "sum"  # what the parties learn: a DP rate, never which customers
LoadColumn = Callable[[PartnerHome, str, str], tuple[list[str], list[object]]]


def _path(home: PartnerHome, session: str) -> Any:
    return psi_dir(home) / f"{session}.sum.json"


def _blob(cfg: dict[str, Any], key: str) -> bytes:
    value = cfg.get(key)
    if not isinstance(value, bytes):
        raise _malformed(key, "bytes")
    return value


def offer_digest(offer: dict[str, bytes]) -> bytes:
    """One digest over the offer's parts (length-prefixed): what its signature covers."""
    h = hashlib.sha256()
    for key in ("public-key", "blinded", "ciphertexts"):
        h.update(len(offer[key]).to_bytes(8, "big") + offer[key])
    return h.digest()


def answer_digest(total: bytes, count: int) -> bytes:
    return hashlib.sha256(total + b"|" + str(count).encode()).digest()


def _statement(
    state: dict[str, Any], kind: str, values: bytes, answers: bytes | None, outgoing: bool
) -> bytes:
    return signing.session_statement(kind, state, values, outgoing=outgoing, answers=answers, mode=MODE)


def _params(state: dict[str, Any]) -> SumParams:
    return SumParams(epsilon=state["epsilon"], value_max=state["value_max"])


def _session(
    home: PartnerHome, cfg: dict[str, Any], role: str, limits: PartyLimits, now: float
) -> dict[str, Any]:
    session = check_session_id(_text(cfg, "session-id"))
    path = _path(home, session)
    if not path.exists():
        raise AccessDenied(f"no open intersection-sum session {session!r} on this partner; refused")
    state = read_json(path, f"intersection-sum session {session!r}")
    if state.get("role") != role:
        raise AccessDenied(f"intersection-sum session {session!r}: this partner is not the {role} holder")
    if now - float(state.get("started_at", 0)) > limits.session_ttl_s:
        path.unlink(missing_ok=True)
        raise AccessDenied(f"intersection-sum session {session!r} has expired; run a new session")
    return state


def _once(home: PartnerHome, session: str, step: str) -> None:
    """Claim one step of the session atomically: a second request for it is refused."""
    try:
        os.close(
            os.open(psi_dir(home) / f"{session}.sum.{step}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        )
    except FileExistsError:
        raise AccessDenied(f"intersection-sum session {session!r} already answered {step}; refused") from None


def _drop(home: PartnerHome, session: str) -> None:
    for suffix in ("sum.json", "sum.reblind", "sum.answer", "sum.finish"):
        (psi_dir(home) / f"{session}.{suffix}").unlink(missing_ok=True)


def _expire(home: PartnerHome, limits: PartyLimits, now: float) -> None:
    """Abandoned sessions (older than the node's TTL) lose their secrets."""
    for path in psi_dir(home).glob("*.sum.json") if psi_dir(home).exists() else ():
        try:
            started = float(read_json(path, "intersection-sum session").get("started_at", 0))
        except (FedCustomerError, TypeError, ValueError):
            started = 0.0
        if now - started > limits.session_ttl_s:
            _drop(home, path.name.removesuffix(".sum.json"))


def handle_open(
    home: PartnerHome, cfg: dict[str, Any], load_column: LoadColumn, limits: PartyLimits, now: float
) -> dict[str, Any]:
    """Check the budget, read the column, start the session: the offer or the padded blinded set."""
    session = check_session_id(_text(cfg, "session-id"))
    dataset, role, column, peer = (
        _text(cfg, "dataset"),
        _text(cfg, "role"),
        _text(cfg, "column"),
        _peer(cfg, home, limits),
    )
    if role not in (ROLE_VALUE, ROLE_PREDICATE):
        raise _malformed("role", f"{ROLE_VALUE} or {ROLE_PREDICATE}")
    params = SumParams(epsilon=cfg.get("epsilon"), value_max=cfg.get("value-max"))  # type: ignore[arg-type]
    run_id = str(cfg.get("run-id") or session)
    _expire(home, limits, now)
    path = _path(home, session)
    if path.exists() or (psi_dir(home) / f"{session}.sum.reblind").exists():
        raise ConfigError(
            f"intersection-sum session {session!r} was already started here; use a new session id"
        )
    from fedcustomer.privacy.dp.release import check

    check(Payer(home, dataset).ledger(), sum_step(run_id, session), params.mechanism())
    ids, cells = load_column(home, dataset, column)
    state: dict[str, Any] = {"session": session, "run_id": run_id, "me": home.config().name, "peer": peer,
                             "role": role, "dataset": dataset, "epsilon": params.epsilon,
                             "value_max": params.value_max, "started_at": now}  # fmt: skip
    if role == ROLE_VALUE:
        holder = ValueHolder(
            ids, parse_values(cells, f"column {column!r}"), params, max_set_size=limits.sum_max_set_size
        )
        out: dict[str, Any] = holder.offer()
        signed = offer_digest(out)
        state |= {"holder": holder.to_state(), "offer": signed.hex()}
    else:
        pred = PredicateHolder(
            ids, parse_flags(cells, f"column {column!r}"), params, max_set_size=limits.sum_max_set_size
        )
        out = pred.blinded()
        signed = out["blinded"]
        state |= {"holder": pred.to_state(), "sent": signed.hex()}
    psi_dir(home).mkdir(parents=True, exist_ok=True)
    write_private(path, state)
    return {**out, "signature": signing.sign(home, _statement(state, "blinded", signed, None, True))}


def handle_reblind(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Value holder: the peer's padded set raised to our secret and shuffled, once per session."""
    state = _session(home, cfg, ROLE_VALUE, limits, now)
    blob = _blob(cfg, "peer-blinded")
    signing.check(home, str(state["peer"]), cfg.get("peer-signature"),
                  _statement(state, "blinded", blob, None, False), "padded set")  # fmt: skip
    _once(home, str(state["session"]), "reblind")
    holder = ValueHolder.from_state(state["holder"], _params(state), limits.sum_max_set_size)
    out = holder.reblind({"blinded": blob})
    signed = _statement(state, "doubly", out["doubly"], blob, True)
    return {**out, "signature": signing.sign(home, signed)}


def handle_answer(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Predicate holder: pay, match, sum under encryption with our noise; answer one ciphertext and a count."""
    state = _session(home, cfg, ROLE_PREDICATE, limits, now)
    offer = {k: _blob(cfg, k) for k in ("public-key", "blinded", "ciphertexts")}
    doubly, peer = _blob(cfg, "doubly"), str(state["peer"])
    signing.check(home, peer, cfg.get("offer-signature"),
                  _statement(state, "blinded", offer_digest(offer), None, False), "offer")  # fmt: skip
    sent = bytes.fromhex(str(state["sent"]))  # the re-blinded set must answer exactly what we sent
    signing.check(home, peer, cfg.get("doubly-signature"),
                  _statement(state, "doubly", doubly, sent, False), "re-blinded set")  # fmt: skip
    _once(home, str(state["session"]), "answer")
    holder = PredicateHolder.from_state(state["holder"], _params(state), limits.sum_max_set_size)
    payer, step, params = (
        Payer(home, str(state["dataset"])),
        sum_step(str(state["run_id"]), str(state["session"])),
        _params(state),
    )

    def produce() -> tuple[dict[str, Any], Any]:
        reply = holder.answer(offer, {"doubly": doubly})
        return {"sum": reply["sum"].hex(), "count": reply["count"]}, params.mechanism()

    from fedcustomer.privacy.dp.release import release

    paid = release(payer.ledger(), step, paid_results(payer), produce).result
    total, count = bytes.fromhex(paid["sum"]), int(paid["count"])
    _drop(home, str(state["session"]))
    out = _statement(state, "doubly", answer_digest(total, count), offer_digest(offer), True)
    return {"sum": total, "count": count, "signature": signing.sign(home, out)}


def handle_finish(home: PartnerHome, cfg: dict[str, Any], limits: PartyLimits, now: float) -> dict[str, Any]:
    """Value holder: pay, decrypt, add our own noise and release the count, the sum and the rate."""
    state = _session(home, cfg, ROLE_VALUE, limits, now)
    total, count = _blob(cfg, "sum"), cfg.get("count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise _malformed("count", "a whole number")
    offer = bytes.fromhex(str(state["offer"]))
    signing.check(home, str(state["peer"]), cfg.get("peer-signature"),
                  _statement(state, "doubly", answer_digest(total, count), offer, False), "answer")  # fmt: skip
    holder = ValueHolder.from_state(state["holder"], _params(state), limits.sum_max_set_size)
    payer, params = Payer(home, str(state["dataset"])), _params(state)

    def produce() -> tuple[dict[str, Any], Any]:
        fixed, noisy_count = holder.decrypt({"sum": total, "count": count})
        noisy_sum, rate = make_rate(fixed, noisy_count, params)
        return {"noisy_count": noisy_count, "noisy_sum": noisy_sum, "rate": rate}, params.mechanism()

    from fedcustomer.privacy.dp.release import release

    step = sum_step(str(state["run_id"]), str(state["session"]))
    out = release(payer.ledger(), step, paid_results(payer), produce).result
    _drop(home, str(state["session"]))
    reply: dict[str, Any] = {"noisy-count": int(out["noisy_count"]), "noisy-sum": float(out["noisy_sum"])}
    if out["rate"] is not None:
        reply["rate"] = float(out["rate"])
    return reply


def handle_abort(home: PartnerHome, cfg: dict[str, Any]) -> dict[str, Any]:
    _drop(home, check_session_id(_text(cfg, "session-id")))
    return {"aborted": True}


def register_sum_handlers(
    app: ClientApp, resolve_home: Callable[[Context], PartnerHome], load_column: LoadColumn
) -> None:
    """Add the ``query.psi_sum_*`` handlers; ``load_column(home, dataset, column)`` returns (ids, cells)."""

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
    app.query(MSG_REBLIND)(wrap(handle_reblind))
    app.query(MSG_ANSWER)(wrap(handle_answer))
    app.query(MSG_FINISH)(wrap(handle_finish))
    app.query(MSG_ABORT)(wrap(lambda home, cfg, _limits, _now: handle_abort(home, cfg)))


@dataclass
class SumView:
    """What the coordinator relays and learns: sizes, the noisy count, and the released rate."""

    session_id: str
    noisy_count: int
    noisy_sum: float
    rate: float | None
    set_size_a: int
    set_size_b: int
    bytes_relayed: int


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
) -> SumView:
    """Drive one intersection-sum between the value holder (a) and the predicate holder (b)."""
    if node_a == node_b or name_a == name_b:
        raise ConfigError("an intersection-sum needs two different partner nodes")
    session = check_session_id(session_id or f"psum-{secrets.token_hex(8)}")
    common = {"session-id": session, "run-id": run_id or session, "epsilon": params.epsilon,
              "value-max": params.value_max}  # fmt: skip
    try:
        opened = _exchange(grid, MSG_OPEN, {
            node_a: {**common, "dataset": dataset_a, "role": ROLE_VALUE, "column": value, "peer": name_b},
            node_b: {**common, "dataset": dataset_b, "role": ROLE_PREDICATE, "column": where, "peer": name_a},
        }, timeout)  # fmt: skip
        offer = {k: bytes(opened[node_a][k]) for k in ("public-key", "blinded", "ciphertexts")}
        padded = bytes(opened[node_b]["blinded"])
        reblind = _exchange(grid, MSG_REBLIND, {node_a: {"session-id": session, "peer-blinded": padded,
                            "peer-signature": bytes(opened[node_b]["signature"])}}, timeout)[node_a]  # fmt: skip
        answer = _exchange(grid, MSG_ANSWER, {node_b: {"session-id": session, **offer,
                           "offer-signature": bytes(opened[node_a]["signature"]),
                           "doubly": bytes(reblind["doubly"]),
                           "doubly-signature": bytes(reblind["signature"])}}, timeout)[node_b]  # fmt: skip
        done = _exchange(grid, MSG_FINISH, {node_a: {"session-id": session, "sum": bytes(answer["sum"]),
                         "count": int(answer["count"]),
                         "peer-signature": bytes(answer["signature"])}}, timeout)[node_a]  # fmt: skip
    except FedCustomerError:
        _abort_sum(grid, session, (node_a, node_b), timeout)
        raise
    relayed = (
        sum(len(v) for v in offer.values())
        + len(padded)
        + len(bytes(reblind["doubly"]))
        + len(bytes(answer["sum"]))
    )
    return SumView(
        session_id=session,
        noisy_count=int(done["noisy-count"]),
        noisy_sum=float(done["noisy-sum"]),
        rate=float(done["rate"]) if "rate" in done else None,
        set_size_a=len(offer["blinded"]) // 32,
        set_size_b=len(padded) // 32,
        bytes_relayed=relayed,
    )


def _abort_sum(grid: Grid, session: str, nodes: tuple[int, int], timeout: float | None) -> None:
    """Best effort: both partners forget the session's secrets."""
    try:
        _exchange(grid, MSG_ABORT, {n: {"session-id": session} for n in nodes}, timeout)
    except FedCustomerError:
        pass
