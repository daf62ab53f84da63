"""The deployed ServerApps' grid: every reply returned, noticed without Flower's 3-s sleeps,
and the timeout kept."""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcustomer.apps import prompt_grid
from fedcustomer.apps.prompt_grid import PromptGrid
from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.common import packed_content as pc
from fedcustomer.errors import FederationError


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
    # binary-exact stand-ins for the defaults (0.1 s for 1 s, then 0.2 s up to 10 s, then up to 1 s)
    grid = PromptGrid(inner, first_pause=0.125, step_window=1.0, busy_pause=0.25, busy_s=10.0, max_pause=1.0)  # type: ignore[arg-type]
    assert len(list(grid.send_and_receive(_msgs(1), timeout=None))) == 1
    at = list(itertools.accumulate(pauses))
    first = [p for p, t in zip(pauses, at) if t - p < 1.0]
    assert first == [0.125] * 8  # the first second after the push: steady pulls, no ramp
    busy = [p for p, t in zip(pauses, at) if 1.0 <= t - p < 10.0]
    assert set(busy) == {0.25}  # then up to 10 s: the busy pace
    assert pauses[-1] == 1.0  # a long wait: one pull a second, as before


class ScriptedBell:
    """A stand-in reply bell: rings when told to (``rings``: whether each wait hears a ring)."""

    def __init__(self, rings: list[bool], now: list[float]) -> None:
        self.rings, self.now, self.heard, self.waits = rings, now, False, []

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        rang = self.rings.pop(0) if self.rings else False
        self.heard = self.heard or rang
        self.now[0] += 0.01 if rang else timeout
        return rang


def test_a_ring_makes_the_grid_pull_at_once_and_only_then_does_it_pull_slowly(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(prompt_grid.time, "sleep", lambda s: pytest.fail("a grid with a bell waits on it"))
    inner = SlowNodes({1: 4})
    bell = ScriptedBell([False, True, False], now)  # no ring yet; a ring (the reply); a missed ring
    grid = PromptGrid(inner, first_pause=0.1, bell=bell, bell_pause=1.0)  # type: ignore[arg-type]
    assert len(list(grid.send_and_receive(_msgs(1), timeout=None))) == 1
    # unheard: today's pace (ends early on a ring); heard: the safety-net pull, a second later
    assert bell.waits == [0.1, 0.1, 1.0] and inner.pulls == 4


def test_the_real_bell_wakes_the_grid_and_a_closed_one_turns_into_plain_pauses(monkeypatch):
    from fedcustomer.common.pipe_bell import Bell, open_bell, ring

    read_fd, write_fd = open_bell()
    monkeypatch.setenv(prompt_grid.REPLY_BELL_ENV, str(read_fd))
    bell = prompt_grid.reply_bell()
    assert bell is not None
    inner = SlowNodes({1: 2})
    original = inner.pull_messages

    def pull_and_ring(ids):  # the reply is stored (and rung) right after the first pull
        got = original(ids)
        if inner.pulls == 1:
            ring(write_fd)
        return got

    inner.pull_messages = pull_and_ring  # type: ignore[method-assign]
    grid = PromptGrid(inner, first_pause=30.0, max_pause=30.0, bell=bell)  # type: ignore[arg-type]
    started = time.monotonic()
    assert len(list(grid.send_and_receive(_msgs(1), timeout=None))) == 1
    assert inner.pulls == 2 and time.monotonic() - started < 25.0 and bell.heard
    os.close(write_fd)  # the SuperLink gone: the bell says so and plain pauses follow
    assert not bell.wait(0.0) and bell.fd == -1 and not bell.heard
    assert prompt_grid.reply_bell({prompt_grid.REPLY_BELL_ENV: "not-a-number"}) is None
    assert prompt_grid.reply_bell({}) is None
    assert isinstance(bell, Bell)


class Nodes:
    """A stand-in grid whose node ``n`` answers every message at once with ``answer[n](msg)``; it keeps
    what each node received (as sent: packed or not, asked or not)."""

    def __init__(self, answer) -> None:
        self.answer, self.got, self.replies = answer, {}, {}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            msg.metadata.__dict__["_message_id"] = mid = f"m{sum(map(len, self.got.values()))}"
            self.got.setdefault(node, []).append(RecordDict(dict(msg.content)))
            reply = self.answer[node](msg)
            reply.metadata.__dict__["_src_node_id"] = node
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]


def _through(mod=None, fail_first=False):
    """A node: ``mod`` (the unpacking mod, or none: an older release) around a handler echoing a record."""
    failed = []

    def handle(msg: Message, context: Context) -> Message:
        if fail_first and not failed:
            failed.append(True)
            return Message(Error(code=1, reason="busy"), reply_to=msg)
        return Message(RecordDict({"echo": ConfigRecord({"keys": sorted(msg.content.keys())})}), reply_to=msg)

    def answer(msg: Message) -> Message:
        context = Context(
            run_id=1, node_id=msg.metadata.dst_node_id, node_config={}, state=RecordDict(), run_config={}
        )
        return mod(msg, context, handle) if mod else handle(msg, context)

    return answer


def _config_msgs(*nodes: int) -> list[Message]:
    return [
        Message(RecordDict({"config": ConfigRecord({"step": 1})}), dst_node_id=n, message_type="train")
        for n in nodes
    ]


def _asked(content: RecordDict) -> bool:
    return pc.FORMATS_RECORD in content


def test_packing_is_negotiated_per_node_and_a_node_that_never_declared_gets_no_packed_message(caplog):
    def forged(msg: Message, context: Context, call_next) -> Message:
        reply = packed_mod(msg, context, call_next)
        if reply.has_content() and pc.FORMATS_RECORD in reply.content:
            reply.content[pc.FORMATS_RECORD] = ConfigRecord({pc.FORMATS_KEY: ["one"]})  # malformed
        return reply

    nodes = Nodes(
        {
            1: _through(packed_mod),
            2: _through(),
            3: _through(forged),
            4: _through(packed_mod, fail_first=True),
        }
    )
    grid = PromptGrid(nodes, first_pause=0.001, max_pause=0.001, pack=True)  # type: ignore[arg-type]
    sent = _config_msgs(1, 2, 3, 4)
    with caplog.at_level(logging.WARNING, logger=prompt_grid.__name__):
        for i in range(3):
            replies = list(grid.send_and_receive(_config_msgs(1, 2, 3, 4), timeout=None))
            echoed = {r.metadata.src_node_id: r.content["echo"]["keys"] for r in replies if not r.has_error()}
            # the handlers read their own records alone, except an older node's, asked once (and ignoring it)
            assert echoed[1] == echoed[3] == ["config"] and echoed.get(4, ["config"]) == ["config"]
            assert echoed[2] == (["config", pc.FORMATS_RECORD] if i == 0 else ["config"])
            assert all(pc.FORMATS_RECORD not in r.content for r in replies if not r.has_error())
    got = nodes.got
    assert _asked(got[1][0]) and not pc.is_packed(got[1][0]) and all(map(pc.is_packed, got[1][1:]))
    assert _asked(got[2][0]) and not any(map(_asked, got[2][1:])) and not any(map(pc.is_packed, got[2]))
    assert _asked(got[3][0]) and not any(map(pc.is_packed, got[3]))  # a malformed declaration: ignored
    # an error reply says nothing on packing: the node is asked again, then packed to
    assert _asked(got[4][0]) and _asked(got[4][1]) and pc.is_packed(got[4][2])
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "node 3 declared packed format(s) none readable" in warned[0]
    assert grid.readers == {1, 4}
    grid.push_messages(sent)  # the caller's messages keep their own records (no question, not packed)
    assert all(list(m.content.keys()) == ["config"] for m in sent)


def test_a_reply_packed_in_a_format_the_coordinator_cannot_read_says_to_update_the_coordinator():
    def newer(msg: Message) -> Message:
        record = ConfigRecord({pc.FORMAT_KEY: pc.FORMAT + 1, pc.RECORDS_KEY: b"customer-4711"})
        return Message(RecordDict({pc.PACKED_RECORD: record}), reply_to=msg)

    grid = PromptGrid(Nodes({1: newer}), first_pause=0.001, max_pause=0.001, pack=True)  # type: ignore[arg-type]
    with pytest.raises(FederationError) as err:
        grid.send_and_receive(_config_msgs(1), timeout=None)
    assert "node 1 sent a packed message" in str(
        err.value
    ) and "update fedcustomer on the coordinator" in str(err.value)
    assert "4711" not in str(err.value)


@pytest.mark.parametrize("deployed", [True, False])
def test_a_deployed_secagg_job_runs_on_the_prompt_grid(monkeypatch, deployed):
    """Found measuring a deployed distributed-DP job: its four SecAgg+ exchanges a round each waited on
    Flower's 3-s pulls (about 15 s a round), as the plain and two-party ServerApps no longer do."""
    from fedcustomer.apps import secagg

    seen = []
    monkeypatch.setattr(secagg, "run_secagg_job", lambda grid, context: seen.append(grid))
    grid = SlowNodes({})
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"deployment": deployed}
    )
    secagg._main(grid, context)
    if deployed:
        assert isinstance(seen[0], PromptGrid) and seen[0].grid is grid and not seen[0].pack
    else:
        assert seen == [grid]
