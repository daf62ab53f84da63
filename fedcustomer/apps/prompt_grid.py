"""A Deployment Engine grid that notices replies promptly.

Flower 1.42's ``send_and_receive`` on the Deployment Engine (``GrpcGrid``/``HttpGrid``,
``flwr/superlink/grid/http_grid.py``) pushes the messages, pulls once, then sleeps 3 s between
pulls: the first pull comes right after the push, before any node could answer, so every
exchange costs at least 3 s however fast the partners reply. A two-party vertical job is a chain
of dozens of such exchanges. This grid does the same with Flower's public ``push_messages`` /
``pull_messages``, pulling again after 0.05 s, then doubling the pause up to 1 s: a quick reply
is seen within a few tenths of a second, and a long round costs one small request per second.
Everything else is the wrapped grid's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedcustomer.server.wrapped_grid import WrappedGrid

FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 1.0


class PromptGrid(WrappedGrid):
    """``grid`` with a prompter ``send_and_receive`` (same semantics: replies until all or timeout)."""

    def __init__(
        self, grid: Grid, first_pause: float = FIRST_PAUSE_S, max_pause: float = MAX_PAUSE_S
    ) -> None:
        super().__init__(grid)
        self.first_pause, self.max_pause = first_pause, max_pause

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = self.first_pause
        while waiting:
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, self.max_pause)
        return replies
