"""Every reply a partner node sends carries its audit anchor: one Flower mod around all handlers.

Round and query handlers that write audit entries put the anchor of the checkpoint covering
them into their own reply (:mod:`fedcustomer.apps.client`, :mod:`fedcustomer.analytics.federated`).
Other replies (the PSI steps, the split-learning steps, the SecAgg+ stages, evaluation) get it
here, after the handler ran, so the checkpoint an entry of that step closed is included. The
anchor goes into the reply's ``partner`` ConfigRecord under
:data:`~fedcustomer.privacy.audit.anchors.WIRE_KEY`, with the partner's name, which the
coordinator records (:mod:`fedcustomer.server.anchor_grid`). An error reply carries nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedcustomer.errors import FedCustomerError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import WIRE_KEY, current_anchor_json

log = logging.getLogger(__name__)
PARTNER_RECORD = "partner"


def has_anchor(msg: Message) -> bool:
    """Whether a handler already put an anchor into one of the reply's ConfigRecords."""
    return any(WIRE_KEY in record for record in msg.content.config_records.values())


def anchor_mod(home_of: Callable[[Context], PartnerHome]) -> Mod:
    """A mod adding the partner's current anchor to every content reply that lacks one.

    ``home_of(context)`` names this node's home. A node without a home or without a signed
    checkpoint yet sends its reply unchanged: the reply matters more than its anchor, and the
    next reply's anchor covers everything before it.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content() or has_anchor(reply):
            return reply
        try:
            home = home_of(context)
            name = home.config().name
            anchor = current_anchor_json(home.audit_dir, home.keys_dir, name)
        except FedCustomerError as exc:
            log.debug("reply sent without an audit anchor: %s", exc)
            return reply
        if anchor is None:
            return reply
        content = reply.content
        record = content.config_records.get(PARTNER_RECORD)
        values = dict(record) if record is not None else {}
        values.setdefault("name", name)
        values[WIRE_KEY] = anchor
        content[PARTNER_RECORD] = ConfigRecord(values)
        return Message(content=content, reply_to=msg)

    return mod
