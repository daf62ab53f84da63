"""Flower ClientApp: the partner node's wire interface (Message API).

A thin shell: decode the coordinator's records, call :class:`PartnerNode`, encode
what may leave (weights after a paid DP charge, metrics, or a refusal). Product
errors go back as Flower error replies carrying the message only, never data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.clients.home import PartnerHome
from fedcustomer.clients.node import PartnerNode, TrainInstructions
from fedcustomer.errors import ConfigError, FedCustomerError

log = logging.getLogger(__name__)

FEDERATION_INDEX = "federation.json"
PARTNER_ERROR_CODE = 4100  # Flower error code for a partner-side product error
PARTNER_PREFIX = "partner "  # error replies start "partner NAME: " when the node knows its partner


def resolve_home(context: Context, homes: list[str] | None = None) -> PartnerHome:
    """Deployment nodes name their home in node config; simulated ones are indexed by partition."""
    node_cfg = context.node_config
    if "partner-home" in node_cfg:
        return PartnerHome(str(node_cfg["partner-home"]))
    if "partition-id" not in node_cfg:
        raise ConfigError("this node has neither 'partner-home' nor 'partition-id' in its node config")
    pid = int(node_cfg["partition-id"])
    if homes is None:
        homes_dir = Path(
            str(
                context.run_config.get("homes")
                or Path(str(context.run_config.get("out", "runs/flwr-run"))) / "partners"
            )
        )
        index = homes_dir / FEDERATION_INDEX
        if not index.exists():
            raise ConfigError(f"{index} not found: the coordinator has not set up the simulated partners")
        homes = [str(homes_dir / name) for name in json.loads(index.read_text())["partners"]]
    if not 0 <= pid < len(homes):
        raise ConfigError(f"partition {pid} has no partner home ({len(homes)} partners set up)")
    return PartnerHome(homes[pid])


def partner_error(msg: Message, exc: FedCustomerError, context: Context, homes: list[str] | None) -> Message:
    """An error reply naming the partner (``partner NAME: ...``), so the coordinator can say who failed."""
    try:
        name = resolve_home(context, homes).config().name
    except FedCustomerError:
        name = None
    prefix = (
        f"{PARTNER_PREFIX}{name}: " if name and ":" not in name and not any(c.isspace() for c in name) else ""
    )
    return Message(
        error=Error(code=PARTNER_ERROR_CODE, reason=f"{prefix}{type(exc).__name__}: {exc}"), reply_to=msg
    )


def make_client_app(homes: list[str] | None = None) -> ClientApp:
    """Build the ClientApp; ``homes`` maps simulation partition ids to partner homes."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
        try:
            node = PartnerNode(resolve_home(context, homes))
            ins = TrainInstructions.from_config(dict(msg.content["config"]))
            outcome = node.train_round(msg.content["arrays"].to_torch_state_dict(), ins)
            from fedcustomer.deploy.audit import record_round

            record_round(node.home, outcome, ins)  # every round taken part in, refused or not
        except FedCustomerError as exc:
            return partner_error(msg, exc, context, homes)
        info = {"name": outcome.partner, "accounting-json": json.dumps(outcome.accounting)}
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
        except FedCustomerError as exc:
            return partner_error(msg, exc, context, homes)
        content = RecordDict({"metrics": MetricRecord(metrics), "partner": ConfigRecord({"name": node.name})})
        return Message(content=content, reply_to=msg)

    _register_query_handlers(app, homes)
    return app


def _register_query_handlers(app: ClientApp, homes: list[str] | None) -> None:
    """Federated features beyond horizontal training answer their own message types."""
    from fedcustomer.analytics.federated import register_analytics_handlers
    from fedcustomer.clients.data_access import PartnerDataAccess
    from fedcustomer.privacy.psi_protocol import register_psi_handlers
    from fedcustomer.vertical.protocol import register_vertical_handlers

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    register_analytics_handlers(app, home_of)
    register_vertical_handlers(app, home_of)
    register_psi_handlers(
        app,
        home_of,
        lambda home, dataset: PartnerDataAccess(home).linkage_ids(dataset),
        local_labels=lambda home, dataset, ids: PartnerDataAccess(home).pseudonyms(ids),
    )


# `flwr run .` entry point (see [tool.flwr.app.components] in pyproject.toml).
app = make_client_app()
