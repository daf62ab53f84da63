"""The deployed ServerApps' grid: every reply returned, noticed without Flower's 3-s sleeps,
and the timeout kept."""

from __future__ import annotations

import itertools
import time

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcustomer.apps import prompt_grid
from fedcustomer.apps.prompt_grid import PromptGrid


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a SuperLink sets


class SlowNodes:
    """A stand-in Deployment Engine grid: node ``n`` answers from its ``n``-th pull on."""

    def __init__(self, answer_after: dict[int, int]) -> None:
        self.answer_after, self.pulls, self.sent = answer_after, 0, {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            self.sent[mid] = msg.metadata.dst_node_id
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        out = []
        for mid in list(message_ids):
            if self.pulls >= self.answer_after.get(self.sent[mid], 10**9):
                reply = Message(RecordDict(), dst_node_id=0, message_type="train")
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                out.append(reply)
        return out


def _msgs(*nodes: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]


def test_all_replies_come_back_as_soon_as_they_exist():
    inner = SlowNodes({1: 1, 2: 4})
    grid = PromptGrid(inner, first_pause=0.001, max_pause=0.004)  # type: ignore[arg-type]
    started = time.monotonic()
    replies = list(grid.send_and_receive(_msgs(1, 2), timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert inner.pulls == 4 and time.monotonic() - started < 2.0  # Flower's own loop: 9 s and more


def test_the_timeout_ends_the_wait_with_the_replies_so_far():
    inner = SlowNodes({1: 1})  # node 2 never answers
    grid = PromptGrid(inner, first_pause=0.001, max_pause=0.01)  # type: ignore[arg-type]
    replies = list(grid.send_and_receive(_msgs(1, 2), timeout=0.2))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"] and inner.pulls > 2


def test_pauses_stay_short_while_a_reply_is_likely_then_back_off(monkeypatch):
    now, pauses = [0.0], []

    def sleep(seconds):
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(prompt_grid.time, "sleep", sleep)
    inner = SlowNodes({1: 200})
    grid = PromptGrid(inner, first_pause=0.05, max_pause=1.0, busy_pause=0.2, busy_s=10.0)  # type: ignore[arg-type]
    assert len(list(grid.send_and_receive(_msgs(1), timeout=None))) == 1
    busy = [p for p, t in zip(pauses, itertools.accumulate(pauses)) if t <= 10.0]
    assert busy[:3] == [0.05, 0.1, 0.2] and max(busy) == 0.2  # within 10 s: a pull every 0.2 s at most
    assert pauses[-1] == 1.0  # a long wait: one pull a second, as before
