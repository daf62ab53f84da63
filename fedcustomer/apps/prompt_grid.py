"""A Deployment Engine grid that notices replies promptly.

Flower 1.42's ``send_and_receive`` on the Deployment Engine (``GrpcGrid``/``HttpGrid``,
``flwr/superlink/grid/http_grid.py``) pushes the messages, pulls once, then sleeps 3 s between
pulls: the first pull comes right after the push, before any node could answer, so every
exchange costs at least 3 s however fast the partners reply. A two-party vertical job is a chain
of dozens of such exchanges. This grid does the same with Flower's public ``push_messages`` /
``pull_messages``, pulling again every 0.1 s for the first second after the push (a vertical job's
replies mostly exist 0.15-0.6 s after it: in a traced quiet job a reply then waited 0.05 s on average
for the pull that found it, against 0.1 s with pauses doubling from 0.05 s, for about one more pull
per exchange), then every 0.2 s up to 10 s, then up to 1 s apart: a long round costs one small
request per second.
A reply's objects asked for before they reached the SuperLink are asked for again within
milliseconds (:mod:`fedcustomer.apps.flower_waits`). With ``pack=True`` a message's records travel
as one object (:mod:`fedcustomer.common.packed_content`; the partners' ClientApp answers packed):
an exchange then takes a few HTTP requests instead of one per record and array. Packing is
negotiated per node: the first message to a node goes unpacked and asks which formats it reads;
only a node whose reply names the format this release writes is sent packed messages, any other
(an older fedcustomer) keeps getting ordinary ones. Everything else is the wrapped grid's.

On a coordinator whose SuperLink rings the reply bell (:mod:`fedcustomer.deploy.reply_bell`) the grid
waits on the bell between pulls and pulls as soon as it rings; once it has heard a ring it pulls
unasked only at the safety-net pace (``BELL_PAUSE_S``). Without a bell, or before any ring, the
pace above applies unchanged (the wait merely ends early on a ring).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedcustomer.apps.flower_waits import prompt_retries
from fedcustomer.common.backoff import Backoff
from fedcustomer.common.packed_content import FORMAT, add_formats, pack, take_formats, unpack
from fedcustomer.common.pipe_bell import Bell, open_pipe_fd
from fedcustomer.server.wrapped_grid import WrappedGrid

DEPLOYED_GRID_MODULE = "flwr.superlink.grid.http_grid"  # the ServerApp's grid on the Deployment Engine

FIRST_PAUSE_S = 0.1  # the pace of pulls within STEP_WINDOW_S of the push
STEP_WINDOW_S = 1.0  # most replies exist within it
BUSY_PAUSE_S = 0.2  # the pace after that, up to BUSY_S after the push
BUSY_S = 10.0
MAX_PAUSE_S = 1.0
BELL_PAUSE_S = 1.0  # with a bell that rings: the safety-net pull's pace (a missed ring costs this)
REPLY_BELL_ENV = "FEDCUSTOMER_REPLY_BELL_READ_FD"  # the reply bell's read end, inherited from the executor

log = logging.getLogger(__name__)


def reply_bell(environ: Mapping[str, str] | None = None) -> Bell | None:
    """The reply bell's read end named in ``environ`` (this process's by default), if an open pipe."""
    fd = open_pipe_fd((os.environ if environ is None else environ).get(REPLY_BELL_ENV))
    return None if fd is None else Bell(fd)


class PromptGrid(WrappedGrid):
    """``grid`` with a prompter ``send_and_receive`` (same semantics: replies until all or timeout).

    Pulls are ``first_pause`` apart for ``step_window`` s after the push, then ``busy_pause`` apart up to
    ``busy_s`` s after it, then doubling up to ``max_pause``; no pause is longer than ``max_pause``.
    """

    def __init__(
        self,
        grid: Grid,
        first_pause: float = FIRST_PAUSE_S,
        max_pause: float = MAX_PAUSE_S,
        busy_pause: float = BUSY_PAUSE_S,
        busy_s: float = BUSY_S,
        *,
        step_window: float = STEP_WINDOW_S,
        pack: bool = False,
        bell: Bell | None = None,
        bell_pause: float = BELL_PAUSE_S,
    ) -> None:
        super().__init__(grid)
        self.bell, self.bell_pause = bell, bell_pause
        self.pack = pack
        self.readers: set[int] = set()  # nodes that said they read the format this release writes
        self.answered: set[int] = set()  # nodes whose reply to the question has come (either way)
        if type(grid).__module__ == DEPLOYED_GRID_MODULE:  # a reply pulled early: retried within ms
            prompt_retries(DEPLOYED_GRID_MODULE, "pull_objects")
        self.first_pause, self.max_pause = first_pause, max_pause
        self.busy_pause, self.busy_s, self.step_window = busy_pause, busy_s, step_window

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push (packed when ``pack`` and the node said it reads packed messages, else asking it); the
        caller's messages keep their own records afterwards."""
        if not self.pack:
            return self.grid.push_messages(messages)
        sent = list(messages)
        kept = {}
        for i, msg in enumerate(sent):
            if not msg.has_content():
                continue
            node = msg.metadata.dst_node_id
            if node in self.readers:
                packed = pack(msg.content)
            elif node not in self.answered:  # ask which formats it reads (an older node ignores it)
                packed = RecordDict(dict(msg.content))
                add_formats(packed)
            else:
                packed = None
            if packed is not None:
                kept[i] = msg.content
                msg.content = packed
        try:
            return list(self.grid.push_messages(sent))
        finally:
            for i, content in kept.items():  # the message id stays the one sent
                sent[i].content = content

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull; a packed reply's records are restored, a node's answer on packing is noted."""
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            if not reply.has_content():
                continue
            formats = take_formats(reply.content)
            if self.pack:
                self._note_formats(reply.metadata.src_node_id, formats)
            reply.content = unpack(
                reply.content, here="the coordinator", there=f"node {reply.metadata.src_node_id}"
            )
        return replies

    def _note_formats(self, node: int, formats: tuple[int, ...] | None) -> None:
        """Pack to ``node`` from now on only when it said it reads this release's format."""
        if node in self.answered:
            return
        self.answered.add(node)
        if formats is not None and FORMAT in formats:
            self.readers.add(node)
        elif formats is not None:  # a forged or future declaration: the node gets ordinary messages
            shown = ", ".join(map(str, formats)) or "none readable"
            log.warning(
                "node %s declared packed format(s) %s, not format %s that this coordinator writes: "
                "its messages go unpacked (update fedcustomer on the older side to pack)",
                node,
                shown,
                FORMAT,
            )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        # steady pulls while a reply is likely, then the busy pace, then backing off to max_pause
        pauses = Backoff(self.busy_pause, busy=self.busy_pause, window=self.busy_s, most=self.max_pause)
        step = min(self.first_pause, self.max_pause)
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
            in_step = time.monotonic() - pauses.last_activity < self.step_window
            pause = step if in_step else pauses.next_pause()
            if self.bell is not None and self.bell.heard:
                pause = max(pause, self.bell_pause)  # the bell says when; this pull is the safety net
            pause = pause if left is None else min(pause, left)
            if self.bell is None:
                time.sleep(pause)
            else:
                self.bell.wait(pause)
        return replies
