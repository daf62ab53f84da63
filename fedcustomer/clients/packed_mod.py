"""A ClientApp mod that reads packed messages and answers them packed.

Why: the coordinator's deployed grid may send a message's records as one object
(:mod:`fedcustomer.common.packed_content`) to save HTTP requests per exchange. Handlers (and the
mods inside this one, e.g. the audit anchor) see the ordinary records; the reply to a packed
message is packed in turn, so the coordinator pulls three objects instead of one per record and
array. The coordinator packs only to a node that said it can: a request asking which packed formats
this node reads is answered, beside the handler's records, with the formats this release reads. A
packed message this node cannot read gets an error reply saying which side to update (never its
data). A message that was not packed, and its reply, pass otherwise unchanged.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcustomer.common.packed_content import (
    PACKING_ERROR_CODE,
    add_formats,
    is_packed,
    pack,
    take_formats,
    unpack,
)
from fedcustomer.errors import FederationError


def packed_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Unpack ``msg`` for the handlers; pack their reply when ``msg`` came packed (and fits the limit)."""
    if not msg.has_content():
        return call_next(msg, context)
    asked = take_formats(msg.content) is not None  # the handlers never see the question
    if not is_packed(msg.content):
        reply = call_next(msg, context)
        if asked and reply.has_content():
            add_formats(reply.content)  # from now on the coordinator may pack to this node
        return reply
    try:
        msg.content = unpack(msg.content, here="this node", there="the coordinator")
    except FederationError as exc:  # the message names a format and which side to update, no data
        return Message(Error(code=PACKING_ERROR_CODE, reason=f"FederationError: {exc}"), reply_to=msg)
    reply = call_next(msg, context)
    if reply.has_content():
        packed = pack(reply.content)
        if packed is not None:
            reply.content = packed
    return reply
