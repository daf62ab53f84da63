"""Flower message handlers of split learning, on a partner's ClientApp.

Every step of the protocol is one named Message API action routed by the coordinator:

=============================  ==========  ==================================================
message type                   to          carries in -> out
=============================  ==========  ==================================================
``query.vertical_hello``       any         -> the node's partner name (and what of its declared
                                           own data the protocol needs: ``declared`` record)
``query.vertical_align``       both        PSI session -> keep its order as the alignment (align)
``query.vertical_setup``       both        job config -> aligned/train/test counts
``query.vertical_check``       both        round -> ok or refusal (nothing charged)
``train.vertical_begin``       both        round -> charge; the label owner returns the public batches
``train.vertical_forward``     passive     batch positions -> embeddings
``train.vertical_step``        active      step, embeddings -> gradients from the label head
``train.vertical_backward``    passive     step, positions, gradients -> ok (a round's last step,
                                           ``then-embed``: and the embeddings ``vertical_embed`` sends)
``query.vertical_embed``       passive     round -> embeddings of all aligned customers
``train.vertical_fit``         active      all embeddings -> joint model trained; held-out metrics
``train.vertical_finish``      both        -> final model part kept at home; accounting
=============================  ==========  ==================================================

Positions index the PSI's canonical order of shared customers; no raw feature or label
ever crosses: the passive party sends embeddings only, the label owner gradients of its
label head only (see :mod:`fedcustomer.vertical.party` for what protects each).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.errors import DataError, FedCustomerError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.vertical.align import align_handler_content
from fedcustomer.vertical.declaration import hello_content
from fedcustomer.vertical.party import PartySession, session_for
from fedcustomer.vertical.session_config import SessionConfig

PARTNER_ERROR_CODE = 4100
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
            session = session_for(resolve_home(context), SessionConfig.from_config(cfg_raw))
            content = _HANDLERS[action](session, cfg_raw, msg.content)
        except FedCustomerError as exc:
            return Message(
                error=Error(code=PARTNER_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg
            )
        content["partner"] = ConfigRecord({"name": session.name, "role": session.cfg.role})
        return Message(content=content, reply_to=msg)

    return handler


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
    return RecordDict({"metrics": MetricRecord(s.describe())})


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
    return _decision(s.begin_round(int(cfg["round"])))


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
    out = RecordDict({"metrics": MetricRecord({"step": float(cfg["step"])})})
    if cfg.get("then-embed"):  # the round's last step: what vertical_embed would send next, one exchange less
        out["arrays"] = ArrayRecord({"embeddings": s.embed_all(int(cfg["round"]))})
    return out


def _embed(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"embeddings": s.embed_all(int(cfg["round"]))})})


def _fit(s: PartySession, cfg: dict[str, Any], content: RecordDict) -> RecordDict:
    passive = _arrays(content, "embeddings")["embeddings"] if "arrays" in content else None
    metrics = s.fit(int(cfg["round"]), passive)
    return RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})


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
