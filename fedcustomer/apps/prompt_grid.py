"""A Deployment Engine grid that notices replies promptly.

Flower 1.42's ``send_and_receive`` on the Deployment Engine (``GrpcGrid``/``HttpGrid``,
``flwr/superlink/grid/http_grid.py``) pushes the messages, pulls once, then sleeps 3 s between
pulls: the first pull comes right after the push, before any node could answer, so every
exchange costs at least 3 s however fast the partners reply. A two-party vertical job is a chain
of dozens of such exchanges. This grid does the same with Flower's public ``push_messages`` /
``pull_messages``, pulling again after 0.05 s, then doubling the pause, up to 0.2 s for the first
10 s (most replies of a job come within seconds: each is seen within a fifth of a second), then
up to 1 s: a long round costs one small request per second.
A reply's objects asked for before they reached the SuperLink are asked for again within
milliseconds (:mod:`fedcustomer.apps.flower_waits`). With ``pack=True`` a message's records travel
as one object (:mod:`fedcustomer.common.packed_content`; the partners' ClientApp answers packed):
an exchange then takes a few HTTP requests instead of one per record and array. Everything else is
the wrapped grid's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedcustomer.apps.flower_waits import prompt_retries
from fedcustomer.common.backoff import Backoff
from fedcustomer.common.packed_content import pack, unpack
from fedcustomer.server.wrapped_grid import WrappedGrid

DEPLOYED_GRID_MODULE = "flwr.superlink.grid.http_grid"  # the ServerApp's grid on the Deployment Engine

FIRST_PAUSE_S = 0.05
BUSY_PAUSE_S = 0.2  # the longest pause within BUSY_S of the push
BUSY_S = 10.0
MAX_PAUSE_S = 1.0


class PromptGrid(WrappedGrid):
    """``grid`` with a prompter ``send_and_receive`` (same semantics: replies until all or timeout)."""

    def __init__(
        self,
        grid: Grid,
        first_pause: float = FIRST_PAUSE_S,
        max_pause: float = MAX_PAUSE_S,
        busy_pause: float = BUSY_PAUSE_S,
        busy_s: float = BUSY_S,
        *,
        pack: bool = False,
    ) -> None:
        super().__init__(grid)
        self.pack = pack
        if type(grid).__module__ == DEPLOYED_GRID_MODULE:  # a reply pulled early: retried within ms
            prompt_retries(DEPLOYED_GRID_MODULE, "pull_objects")
        self.first_pause, self.max_pause = first_pause, max_pause
        self.busy_pause, self.busy_s = busy_pause, busy_s

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push (packed when ``pack``); the caller's messages keep their own records afterwards."""
        if not self.pack:
            return self.grid.push_messages(messages)
        sent = list(messages)
        kept = {}
        for i, msg in enumerate(sent):
            packed = pack(msg.content) if msg.has_content() else None
            if packed is not None:
                kept[i] = msg.content
                msg.content = packed
        try:
            return list(self.grid.push_messages(sent))
        finally:
            for i, content in kept.items():  # the message id stays the packed message's
                sent[i].content = content

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull; a packed reply's records are restored (any reply: a packed request is answered packed)."""
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if reply.has_content():
                reply.content = unpack(reply.content)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        pauses = Backoff(self.first_pause, busy=self.busy_pause, window=self.busy_s, most=self.max_pause)
        end = None if timeout is None else pauses.last_activity + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            pause = pauses.next_pause()
            time.sleep(pause if left is None else min(pause, left))
        return replies
