"""Flower ClientApp: the partner node's wire interface (Message API).

A thin shell: decode the coordinator's records, call :class:`PartnerNode`, encode
what may leave (weights after a paid DP charge, metrics, or a refusal). Product
errors go back as Flower error replies carrying the message only, never data.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.analytics.federated import register_analytics_handlers
from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.clients.context import partner_error, resolve_home
from fedcustomer.clients.linkage import register_governed_psi_handlers
from fedcustomer.clients.node import PartnerNode
from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.clients.round_audit import record_evaluation, record_round, release_log
from fedcustomer.errors import FedCustomerError
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import WIRE_KEY as ANCHOR_WIRE_KEY
from fedcustomer.privacy.audit.anchors import current_anchor_json
from fedcustomer.vertical.align import align_check_mod
from fedcustomer.vertical.protocol import register_vertical_handlers

log = logging.getLogger(__name__)


class PartnerClientApp(ClientApp):
    """The partners' ClientApp, pickled as the homes it serves rather than as its handlers.

    Flower's simulation engine pickles the ClientApp into every message it hands a Ray worker.
    By value, this app's nested handlers and mods are about 40 kB of code objects and cost
    about 20 ms of the coordinator process's CPU per message; by reference, the worker builds
    the app for the same homes once per process (:func:`client_app_for`) and reuses it. The app
    keeps no state between messages (each handler resolves its partner's home from the
    message's context), so one built app serves every message, as in a deployed SuperNode.
    A worker rebuilds the app from ``homes`` alone: anything added to an app after
    :func:`make_client_app` returns (a handler, a mod) would not reach the workers, so add it there.
    """

    def __init__(self, homes: list[str] | None, mods: list[Any]) -> None:
        super().__init__(mods=mods)
        self.homes = None if homes is None else tuple(homes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (client_app_for, (self.homes,))


@lru_cache(maxsize=8)
def client_app_for(homes: tuple[str, ...] | None) -> ClientApp:
    """This process's ClientApp for ``homes`` (built at its first use; what a pickled app loads as)."""
    return make_client_app(None if homes is None else list(homes))


def make_client_app(homes: list[str] | None = None) -> ClientApp:
    """Build the ClientApp; ``homes`` maps simulation partition ids to partner homes."""

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    # packed messages read and answered packed (outermost: the anchor goes inside the packed reply);
    # every reply carries the partner's audit anchor; a vertical alignment check riding on a PSI message
    # is answered innermost, after the PSI step (fedcustomer.vertical.align)
    app = PartnerClientApp(homes, mods=[packed_mod, anchor_mod(home_of), align_check_mod(home_of)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
        held: tuple[PartnerHome, str] | None = None
        try:
            node = PartnerNode(resolve_home(context, homes))
            ins = TrainInstructions.from_config(dict(msg.content["config"]))
            held = (node.home, ins.run_id)
            outcome = node.train_round(msg.content["arrays"].to_torch_state_dict(), ins)
            record_round(node.home, outcome, ins)  # every round taken part in, refused or not
            anchor = current_anchor_json(node.home.audit_dir, node.home.keys_dir, node.name)
        except BaseException as exc:
            if held is not None:
                release_log(*held)  # the audit log held for the job's rounds
            if isinstance(exc, FedCustomerError):
                return partner_error(msg, exc, context, homes)
            raise
        info = {"name": outcome.partner, "accounting-json": json.dumps(outcome.accounting)}
        if anchor is not None:  # the signed checkpoint covering this round's entry leaves with the reply
            info[ANCHOR_WIRE_KEY] = anchor
        if outcome.refused_reason:
            info["refused-reason"] = outcome.refused_reason
        content = RecordDict({"metrics": MetricRecord(outcome.metrics), "partner": ConfigRecord(info)})
        if outcome.state_dict is not None:
            content["arrays"] = ArrayRecord(outcome.state_dict)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
        try:
            node = PartnerNode(resolve_home(context, homes))
            ins = TrainInstructions.from_config(dict(msg.content["config"]))
            metrics = node.evaluate(msg.content["arrays"].to_torch_state_dict(), ins)
            record_evaluation(node.home, node.name, ins, metrics)  # which read, which job and round
        except FedCustomerError as exc:
            return partner_error(msg, exc, context, homes)
        content = RecordDict({"metrics": MetricRecord(metrics), "partner": ConfigRecord({"name": node.name})})
        return Message(content=content, reply_to=msg)

    _register_query_handlers(app, homes)
    return app


def _register_query_handlers(app: ClientApp, homes: list[str] | None) -> None:
    """Federated features beyond horizontal training answer their own message types."""

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    register_analytics_handlers(app, home_of)
    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)


# `flwr run .` entry point (see [tool.flwr.app.components] in pyproject.toml).
app = make_client_app()
