"""A ClientApp mod that reads packed messages and answers them packed.

Why: the coordinator's deployed grid may send a message's records as one object
(:mod:`fedcustomer.common.packed_content`) to save HTTP requests per exchange. Handlers (and the
mods inside this one, e.g. the audit anchor) see the ordinary records; the reply to a packed
message is packed in turn, so the coordinator pulls three objects instead of one per record and
array. A message that was not packed, and its reply, pass unchanged.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedcustomer.common.packed_content import is_packed, pack, unpack


def packed_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Unpack ``msg`` for the handlers; pack their reply when ``msg`` came packed (and fits the limit)."""
    if not msg.has_content() or not is_packed(msg.content):
        return call_next(msg, context)
    msg.content = unpack(msg.content)  # a malformed one raises FederationError: an error reply
    reply = call_next(msg, context)
    if reply.has_content():
        packed = pack(reply.content)
        if packed is not None:
            reply.content = packed
    return reply
