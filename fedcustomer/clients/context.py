"""Which partner a Flower node is, and how it reports a product error to the coordinator.

Deployment nodes name their home in node config; simulated ones are indexed by partition
through the federation index the coordinator writes. Error replies carry the message only.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Error, Message

from fedcustomer.errors import ConfigError, FedCustomerError
from fedcustomer.partner.federation import FEDERATION_INDEX, read_index
from fedcustomer.partner.home import PartnerHome

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
        indexed = read_index(homes_dir)
        if indexed is None:
            raise ConfigError(
                f"{homes_dir / FEDERATION_INDEX} not found: the coordinator has not set up the simulated partners"
            )
        homes = [str(h.root) for h in indexed]
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
