"""Flower message handlers of split learning, on a partner's ClientApp.

Every step of the protocol is one named Message API action routed by the coordinator; a message
may also carry what its party does next without waiting for the other one (``then-*`` flags, so
a deployed round is few sequential exchanges, see :mod:`fedcustomer.vertical.rounds`):

=============================  ==========  ==================================================
message type                   to          carries in -> out
=============================  ==========  ==================================================
``query.vertical_hello``       any         -> the node's partner name (and what of its declared
                                           own data the protocol needs: ``declared`` record)
``query.vertical_align``       both        PSI session -> keep its order as the alignment (align)
``query.vertical_setup``       both        job config -> aligned/train/test counts; ``then-check``: and
                                           its check of the first round at the public rate it computes
                                           from its counts (returned too, for the coordinator to compare);
                                           with a keep record: first keeps the PSI's order as its
                                           alignment (the ``save`` of ``vertical_align``); an
                                           ``alongside`` record: it can run a job beside another
``query.vertical_check``       both        round -> ok or refusal (nothing charged)
``train.vertical_begin``       both        round -> charge; the label owner returns the public batches
                                           (passive, ``then-forward``: and batch 0's embeddings)
``train.vertical_forward``     passive     batch positions -> embeddings
``train.vertical_step``        active      step, embeddings -> gradients from the label head
``train.vertical_backward``    passive     step, positions, gradients -> ok; ``then-forward``: and step
                                           t+1's embeddings; ``then-embed`` (a round's last step): and
                                           the embeddings of all aligned customers; ``then-check``:
                                           and its check of the next round
``query.vertical_embed``       passive     round -> embeddings of all aligned customers
``train.vertical_fit``         active      all embeddings -> joint model trained; held-out metrics;
                                           ``then-begin`` / ``then-check``: and its begin (batches) or
                                           check of the next round; ``then-finish``: and its finish
``train.vertical_finish``      both        -> final model part kept at home; accounting; the label
                                           owner's, with a ``next-job`` record: and the first begin
                                           of its own next job (its comparison model)
=============================  ==========  ==================================================

A follow-up runs only after the message's own step succeeded (a begin only when the charge was
accepted), in the same order as two messages would: nothing is released before it is paid.
The next round's answer comes back as ``next-decision`` and ``next-metrics``.

Positions index the PSI's canonical order of shared customers; no raw feature or label
ever crosses: the passive party sends embeddings only, the label owner gradients of its
label head only (see :mod:`fedcustomer.vertical.party` for what protects each).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.errors import ConfigError, DataError, FedCustomerError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.vertical.align import ALIGN_ERROR_CODE, KEEP_RECORD, align_handler_content, keep_with_setup
from fedcustomer.vertical.data import ACTIVE
from fedcustomer.vertical.declaration import hello_content
from fedcustomer.vertical.party import PartySession, session_for
from fedcustomer.vertical.session_config import SessionConfig
from fedcustomer.vertical.spend import public_sampling

log = logging.getLogger(__name__)
PARTNER_ERROR_CODE = 4100
NEXT_JOB_RECORD = "next-job"  # a finish's follow-up: the label owner's next job's session config and round
# In a setup's reply: this node calibrates a job run beside another (``alongside-run``), so the
# coordinator may run the comparison model in the joint job's idle slots; an older node's reply lacks it.
ALONGSIDE_RECORD = "alongside"
# In the joint job's open to the label owner: its comparison model's session config and round, whose
# noise it calibrates in the background while idle (nothing charged); an older node ignores it.
PRECALIBRATE_RECORD = "precalibrate"
ResolveHome = Callable[[Context], PartnerHome]
ACTIONS = (
    "vertical_hello",
    "vertical_align",
    "vertical_setup",
    "vertical_check",
    "vertical_begin",
    "vertical_forward",
    "vertical_step",
    "vertical_backward",
    "vertical_embed",
    "vertical_fit",
    "vertical_finish",
)
TRAIN_ACTIONS = (
    "vertical_begin",
    "vertical_forward",
    "vertical_step",
    "vertical_backward",
    "vertical_fit",
    "vertical_finish",
)


def message_type(action: str) -> str:
    return f"{'train' if action in TRAIN_ACTIONS else 'query'}.{action}"


def register_vertical_handlers(app: ClientApp, resolve_home: ResolveHome) -> ClientApp:
    """Add the split-learning actions to ``app``; ``resolve_home(context)`` names this node's home."""
    for action in ACTIONS:
        handler = _make_handler(action, resolve_home)
        decorator = app.train(action) if action in TRAIN_ACTIONS else app.query(action)
        decorator(handler)
    return app


def _make_handler(action: str, resolve_home: ResolveHome) -> Callable[[Message, Context], Message]:
    def handler(msg: Message, context: Context) -> Message:
        torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
        try:
            if action == "vertical_hello":  # its name; of its own declared data, what the protocol needs
                return Message(content=hello_content(resolve_home(context)), reply_to=msg)
            if action == "vertical_align":
                content = align_handler_content(resolve_home(context), dict(msg.content["config"]))
                return Message(content=content, reply_to=msg)
            cfg_raw = dict(msg.content["config"])
            kept = _keep_first(action, resolve_home(context), msg.content)
            session = session_for(resolve_home(context), SessionConfig.from_config(cfg_raw))
            _check_follow_ups(action, session, cfg_raw)  # refused before the message's own step runs
            following = _following_job(action, session, msg.content)
            content = _HANDLERS[action](session, cfg_raw, msg.content)
            if kept is not None:
                content[KEEP_RECORD] = MetricRecord(kept)
            if action == "vertical_begin" and PRECALIBRATE_RECORD in msg.content:
                _precalibrate(session, msg.content, content)
            if following is not None:  # after this job's finish: the next job's first begin
                nxt = _decision(following[0].begin_round(following[1]))
                content["next-job-decision"], content["next-job-metrics"] = nxt["decision"], nxt["metrics"]
        except _AlignmentRefused as exc:  # what the operator must change (seed, changed customers)
            return Message(error=Error(code=ALIGN_ERROR_CODE, reason=f"ConfigError: {exc}"), reply_to=msg)
        except FedCustomerError as exc:
            return Message(
                error=Error(code=PARTNER_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg
            )
        content["partner"] = ConfigRecord({"name": session.name, "role": session.cfg.role})
        return Message(content=content, reply_to=msg)

    return handler


class _AlignmentRefused(Exception):
    """A save riding on the setup refused (its ConfigError's message)."""


def _keep_first(action: str, home: PartnerHome, content: RecordDict) -> dict[str, Any] | None:
    """The PSI's order kept as the alignment before the setup reads it, when the setup carries it."""
    if KEEP_RECORD not in content:
        return None
    if action != "vertical_setup":
        raise DataError(f"only vertical_setup may carry an alignment to keep, not {action}")
    try:
        return dict(keep_with_setup(home, content[KEEP_RECORD]))
    except ConfigError as exc:
        raise _AlignmentRefused(str(exc)) from None


def _arrays(content: RecordDict, *names: str) -> dict[str, torch.Tensor]:
    if "arrays" not in content:
        raise DataError(f"message carries no arrays; expected {', '.join(names)}")
    tensors = content["arrays"].to_torch_state_dict()
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataError(f"message lacks array(s) {', '.join(missing)}")
    return {n: tensors[n] for n in names}


def _positions(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.int64).numpy()


def _setup(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    out = RecordDict(
        {"metrics": MetricRecord(s.describe()), ALONGSIDE_RECORD: ConfigRecord({"calibrates": True})}
    )
    if cfg.get("then-check"):  # the first round's check: at the rate the coordinator will announce
        q, steps = public_sampling(int(cfg["batch-size"]), s.n_train, int(cfg.get("steps-asked", 0)))
        planned = session_for(
            s.home, SessionConfig.from_config(cfg | {"sample-rate": q, "steps-per-round": steps})
        )
        nxt = _decision(planned.check_round(int(cfg["round"])))
        out["next-decision"], out["next-metrics"] = nxt["decision"], nxt["metrics"]
        out["sampling"] = MetricRecord({"sample-rate": q, "steps-per-round": steps})
    return out


def _decision(decision: Any) -> RecordDict:
    info = {"ok": decision.ok, "reason": decision.reason or ""}
    out = RecordDict(
        {
            "metrics": MetricRecord({k: float(v) for k, v in decision.metrics.items()}),
            "decision": ConfigRecord(info),
        }
    )
    if decision.batches is not None:
        sizes = torch.as_tensor([len(b) for b in decision.batches], dtype=torch.int64)
        flat = torch.as_tensor(
            np.concatenate(decision.batches) if decision.batches else np.zeros(0), dtype=torch.int64
        )
        out["arrays"] = ArrayRecord({"batch-positions": flat, "batch-sizes": sizes})
    return out


def _check(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    return _decision(s.check_round(int(cfg["round"])))


def _begin(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    decision = s.begin_round(int(cfg["round"]))
    out = _decision(decision)
    return _then(s, cfg, content, out) if decision.ok else out  # nothing more before the charge


def _then(s: PartySession, cfg: dict[str, Any], content: RecordDict, out: RecordDict) -> RecordDict:
    """What the message asks for after its own step, in the order separate messages would have."""
    rnd = int(cfg["round"])
    if cfg.get("then-forward"):  # the next public batch: its embeddings
        pos = _positions(_arrays(content, "forward-positions")["forward-positions"])
        _put(out, "embeddings", s.forward(rnd, pos))
    if cfg.get("then-embed"):  # the round's passive steps are done: all customers' embeddings
        _put(out, "embeddings", s.embed_all(rnd))
    follow = [k for k in ("then-check", "then-begin") if cfg.get(k)]
    if follow:
        act = s.check_round if follow[0] == "then-check" else s.begin_round
        nxt = _decision(act(rnd + 1))
        out["next-decision"], out["next-metrics"] = nxt["decision"], nxt["metrics"]
        if "arrays" in nxt:
            for name, tensor in nxt["arrays"].to_torch_state_dict().items():
                _put(out, name, tensor)
    if cfg.get("then-finish"):
        out["accounting"] = ConfigRecord({"json": json.dumps(s.finish())})
    return out


def _check_follow_ups(action: str, s: PartySession, cfg: dict[str, Any]) -> None:
    """A follow-up of the next round needs one (a setup's check is of the round it names)."""
    follow = [k for k in ("then-check", "then-begin") if cfg.get(k)]
    if len(follow) > 1:
        raise DataError("a message may check or begin the next round, not both")
    if follow and action != "vertical_setup" and int(cfg.get("round", 0)) >= s.cfg.rounds:
        raise DataError(
            f"round {cfg.get('round')} is the job's last; there is no next round to check or begin"
        )


def _following_job(action: str, s: PartySession, content: RecordDict) -> tuple[PartySession, int] | None:
    """The label owner's own next job (its comparison model), begun once this job's finish is done.

    Its session is its own (run id, config, charges); refused before the finish runs when malformed.
    """
    if NEXT_JOB_RECORD not in content:
        return None
    if action != "vertical_finish":
        raise DataError(f"only vertical_finish may begin a following job, not {action}")
    raw = dict(content[NEXT_JOB_RECORD])
    try:
        rnd = int(raw["round"])
    except (KeyError, TypeError, ValueError):
        raise DataError("a following job needs the round to begin") from None
    cfg = SessionConfig.from_config(raw)
    if cfg.run_id == s.cfg.run_id or cfg.role != ACTIVE or cfg.name != s.name or s.cfg.role != ACTIVE:
        raise DataError("a following job must be another run of the same label owner")
    if not 1 <= rnd <= cfg.rounds:
        raise DataError(f"a following job has no round {rnd} (it has {cfg.rounds})")
    return session_for(s.home, cfg), rnd


def _precalibrate(s: PartySession, content: RecordDict, out: RecordDict) -> None:
    """After a begin that paid: start the label owner's next job's calibration in the background.

    Only a speed-up: whatever goes wrong is logged without data, and that job's begin calibrates
    in line; nothing is charged or pinned here.
    """
    if not bool(dict(out["decision"]).get("ok")):
        return
    try:
        raw = dict(content[PRECALIBRATE_RECORD])
        rnd = int(raw["round"])
        cfg = SessionConfig.from_config(raw)
        if cfg.run_id == s.cfg.run_id or cfg.role != ACTIVE or cfg.name != s.name or s.cfg.role != ACTIVE:
            raise DataError("a job to precalibrate must be another run of the same label owner")
        if not 1 <= rnd <= cfg.rounds:
            raise DataError(f"a job to precalibrate has no round {rnd}")
        nxt = session_for(s.home, cfg)
        if nxt.spend is not None:
            nxt.spend.precalibrate(rnd)
    except (FedCustomerError, KeyError, TypeError, ValueError) as exc:
        log.warning("no background calibration (%s); the begin calibrates in line", type(exc).__name__)


def _put(out: RecordDict, name: str, tensor: torch.Tensor) -> None:
    tensors = out["arrays"].to_torch_state_dict() if "arrays" in out else {}
    if name in tensors:
        raise DataError(f"a message asked for {name} twice")
    out["arrays"] = ArrayRecord(tensors | {name: tensor})


def _forward(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    pos = _positions(_arrays(content, "positions")["positions"])
    return RecordDict({"arrays": ArrayRecord({"embeddings": s.forward(int(cfg["round"]), pos)})})


def _step(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    grads = s.step(int(cfg["round"]), int(cfg["step"]), _arrays(content, "embeddings")["embeddings"].float())
    return RecordDict(
        {"arrays": ArrayRecord({"gradients": grads}), "metrics": MetricRecord({"step": float(cfg["step"])})}
    )


def _backward(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    got = _arrays(content, "positions", "gradients")
    s.backward(int(cfg["round"]), int(cfg["step"]), _positions(got["positions"]), got["gradients"].float())
    return _then(s, cfg, content, RecordDict({"metrics": MetricRecord({"step": float(cfg["step"])})}))


def _embed(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"embeddings": s.embed_all(int(cfg["round"]))})})


def _fit(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    passive = _arrays(content, "embeddings")["embeddings"] if "arrays" in content else None
    metrics = s.fit(int(cfg["round"]), passive)
    return _then(
        s, cfg, content, RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})
    )


def _finish(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    return RecordDict({"accounting": ConfigRecord({"json": json.dumps(s.finish())})})


_HANDLERS: dict[str, Callable[[PartySession, dict[str, Any], RecordDict], RecordDict]] = {
    "vertical_setup": _setup,
    "vertical_check": _check,
    "vertical_begin": _begin,
    "vertical_forward": _forward,
    "vertical_step": _step,
    "vertical_backward": _backward,
    "vertical_embed": _embed,
    "vertical_fit": _fit,
    "vertical_finish": _finish,
}
