"""The SuperNode's adaptive wait: how Flower's waits are mapped, the backoff, the version gate."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
import types

import pytest

from fedcustomer.deploy import supernode_poll as sp
from fedcustomer.deploy.node import supernode_command
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome


class FakeClock:
    """A clock that moves only when slept on."""

    def __init__(self):
        self.now = 42.0
        self.slept: list[float] = []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self):
        return self.now


def test_idle_waits_start_short_after_traffic_stay_short_while_busy_then_back_off_to_a_second():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    while clock.now - 42.0 < sp.BUSY_WINDOW_S:
        shim.sleep(3)
    assert clock.slept[:5] == [0.05, 0.1, 0.2, 0.25, 0.25]
    assert set(clock.slept[3:]) == {0.25}  # a job in progress: asked at least 4 times a second
    for _ in range(6):
        shim.sleep(3)
    assert clock.slept[-6:] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]  # idle: one pull a second, never Flower's 3 s
    shim.traffic()
    shim.sleep(3)
    assert clock.slept[-1] == 0.05


def test_reply_waits_are_milliseconds_and_count_as_traffic():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    clock.now += 60  # long idle
    for _ in range(5):
        shim.sleep(3)  # an idle spell: the next idle wait would be 1.6 s
    for _ in range(6):
        shim.sleep(0.5)  # a message came: waiting for the ClientApp's reply
    assert clock.slept[5:] == [0.005, 0.01, 0.02, 0.04, 0.05, 0.05]
    shim.sleep(3)  # right after the reply: short again
    assert clock.slept[-1] == 0.05
    shim.sleep(0.5)  # the next reply wait starts short again too
    assert clock.slept[-1] == 0.005


def test_after_its_reply_is_pushed_the_node_asks_every_tenth_of_a_second_for_the_window_only():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    clock.now += 60  # long idle: the next idle wait would be long
    for _ in range(5):
        shim.sleep(3)
    shim.replied()
    start = clock.now
    while clock.now - start < sp.REPLY_WINDOW_S:
        shim.sleep(3)
    window = clock.slept[5:]
    assert window == [sp.REPLY_STEP_S] * len(window)  # 0.1 s apart for the 0.7-s window
    assert sum(window[:-1]) < sp.REPLY_WINDOW_S + 1e-9 <= sum(window) + 2e-9
    for _ in range(3):
        shim.sleep(3)
    assert clock.slept[-3:] == [0.25, 0.25, 0.25]  # then the busy pace, with no second ramp
    while clock.now - start < sp.BUSY_WINDOW_S:
        shim.sleep(3)
    for _ in range(4):
        shim.sleep(3)
    assert clock.slept[-1] == sp.MAX_IDLE_S  # an idle node's pace is unchanged


def test_a_message_pulled_within_the_window_ends_it_until_the_next_reply():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    shim.replied()
    shim.sleep(3)
    assert clock.slept[-1] == sp.REPLY_STEP_S
    clock.now += sp.REPLY_WINDOW_S  # the message came; the party works past the window
    shim.sleep(0.5)
    shim.sleep(3)  # a pull before this node's reply left (another run's message, say): the usual ramp
    assert clock.slept[-2:] == [sp.FIRST_REPLY_S, sp.FIRST_IDLE_S]
    shim.replied()
    shim.sleep(3)
    assert clock.slept[-1] == sp.REPLY_STEP_S


def test_after_a_pull_the_superlink_held_the_node_pulls_again_at_once():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    shim.sleep(3)
    assert clock.slept[-1] == sp.FIRST_IDLE_S
    clock.now += 1.0  # the next pull came back empty after the SuperLink's one-second hold
    shim.sleep(3)
    assert clock.slept[-1] == 0.0
    clock.now += 1.0
    shim.replied()  # a reply left; the pull after it was held until the hold ended
    clock.now += 1.0
    shim.sleep(3)
    assert clock.slept[-1] == 0.0


def test_a_pull_answered_at_once_keeps_the_adaptive_waits():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    for took in (0.01, 0.3, sp.HELD_PULL_S - 0.01):  # unheld (a SuperLink that does not hold, or a busy one)
        clock.now += took
        shim.sleep(3)
    assert clock.slept == [0.05, 0.1, 0.2]
    shim.replied()
    clock.now += 0.02
    shim.sleep(3)
    assert clock.slept[-1] == sp.REPLY_STEP_S


def test_other_waits_and_attributes_are_the_real_modules():
    clock = FakeClock()
    shim = sp.AdaptiveTime(clock)
    shim.sleep(0.1)
    shim.sleep(7)
    assert clock.slept == [0.1, 7]
    assert shim.monotonic() == clock.now
    assert sp.AdaptiveTime().perf_counter is time.perf_counter


def test_the_installed_flower_loop_has_the_waits_the_shim_maps():
    """Fails when a Flower upgrade changes the loop: then TESTED_FLOWER must be checked again."""
    loop = importlib.import_module(sp.LOOP_MODULE)
    source = inspect.getsource(loop)
    assert source.count("time.sleep(3)") == 1 and source.count("time.sleep(0.5)") == 2
    assert "time.sleep(" not in source.replace("time.sleep(3)", "").replace("time.sleep(0.5)", "")
    assert loop.time is time and callable(loop._push_messages)


def test_install_replaces_the_loops_time_and_a_pushed_reply_resets_the_backoff(monkeypatch):
    loop = importlib.import_module(sp.LOOP_MODULE)
    monkeypatch.setattr(loop, "time", loop.time)  # both restored after the test
    monkeypatch.setattr(loop, "_push_messages", lambda **kw: kw)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    original_pull = loop.pull_objects
    shim = sp.install(version="1.42.0")
    assert shim is not None and loop.time is shim
    assert loop.pull_objects.func is original_pull  # a message's objects: prompt retries too
    shim.idle_pause = 3.0
    assert loop._push_messages(state="s") == {"state": "s"}  # the wrapped push still does its work
    assert shim.idle_pause == sp.FIRST_IDLE_S
    assert shim.replied_at is not None  # the window after a reply starts at the push


def test_under_a_supervisor_the_loop_rings_the_task_bell_before_a_messages_objects_are_pulled(monkeypatch):
    from fedcustomer.deploy import task_bell

    read_fd, write_fd = task_bell.open_bell()
    calls = []
    loop = types.ModuleType("fake_loop")
    loop.time, loop._push_messages = time, lambda: None
    loop.pull_objects = lambda ids, pull_object_fn: calls.append((ids, os.read(read_fd, 16)))
    monkeypatch.setenv(task_bell.ENV_FD, str(write_fd))
    try:
        assert sp.install(loop, version="1.42.0") is not None
        assert os.read(read_fd, 16) == b"!"  # one ring at start: the executor learns that this node rings
        loop.pull_objects(["a"], pull_object_fn=None)
        assert calls == [(["a"], b"!")]  # the task exists: the executor was told before the pull
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_without_a_bell_the_loops_pulls_are_left_as_they_are(monkeypatch):
    from fedcustomer.deploy import task_bell

    monkeypatch.delenv(task_bell.ENV_FD, raising=False)
    loop = types.ModuleType("fake_loop")
    pull = loop.pull_objects = lambda ids, pull_object_fn: ids
    loop.time, loop._push_messages = time, lambda: None
    assert sp.install(loop, version="1.42.0") is not None
    assert loop.pull_objects is pull


def test_install_also_resets_after_a_failed_push():
    def push(**kw):
        raise RuntimeError("link down")

    loop = types.ModuleType("fake_loop")
    loop.time, loop._push_messages = time, push
    shim = sp.install(loop, version="1.42.3")
    shim.idle_pause = 1.6
    with pytest.raises(RuntimeError):
        loop._push_messages()
    assert shim.idle_pause == sp.FIRST_IDLE_S


@pytest.mark.parametrize("version", ["1.43.0", "2.0.0", "1.4.2", ""])
def test_an_untested_flower_version_is_left_unchanged(version):
    loop = types.ModuleType("fake_loop")
    push = loop._push_messages = lambda: None
    loop.time = time
    assert sp.install(loop, version=version) is None
    assert loop.time is time and loop._push_messages is push


def test_a_loop_without_the_expected_names_is_left_unchanged():
    loop = types.ModuleType("fake_loop")
    loop.time = time
    assert sp.install(loop, version="1.42.0") is None
    assert loop.time is time


def _run_main(monkeypatch, version, argv):
    """``main`` with a stand-in for Flower's SuperNode main: returns what it saw."""
    import flwr

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    loop = importlib.import_module(sp.LOOP_MODULE)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "_push_messages", loop._push_messages)
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(flwr, "__version__", version)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    seen = {}

    def fake_supernode():
        seen["argv"], seen["time"] = list(sys.argv), loop.time

    monkeypatch.setattr(cli, "flower_supernode", fake_supernode)
    assert sp.main(argv) == 0
    return seen


def test_main_runs_flowers_supernode_with_the_adaptive_wait(monkeypatch, capsys):
    seen = _run_main(monkeypatch, "1.42.0", ["--poll", "adaptive", "--", "--superlink", "h:1", "--insecure"])
    assert seen["argv"] == ["flower-supernode", "--superlink", "h:1", "--insecure"]
    assert isinstance(seen["time"], sp.AdaptiveTime)
    assert "adaptive" not in capsys.readouterr().err


def test_main_on_an_untested_flower_runs_it_unchanged_and_says_so_once(monkeypatch, capsys):
    seen = _run_main(monkeypatch, "1.50.0", ["--", "--superlink", "h:1"])
    assert seen["time"] is time and seen["argv"] == ["flower-supernode", "--superlink", "h:1"]
    err = capsys.readouterr().err
    assert err.count("adaptive SuperNode wait is off") == 1 and "Flower 1.50.0" in err


def test_main_with_poll_flower_changes_nothing(monkeypatch, capsys):
    seen = _run_main(monkeypatch, "1.42.0", ["--poll", "flower", "--", "--superlink", "h:1"])
    assert seen["time"] is time
    assert capsys.readouterr().err == ""


def test_the_node_command_runs_the_supernode_through_the_adaptive_entry_point(tmp_path):
    home = PartnerHome.create(tmp_path / "bank0", "bank0")
    common = {"superlink": "127.0.0.1:9093", "root_cert": None, "auth_key": None, "insecure": True}
    adaptive = supernode_command(home.root, **common)
    assert adaptive[:6] == [
        sys.executable,
        "-m",
        "fedcustomer.deploy.supernode_poll",
        "--poll",
        "adaptive",
        "--",
    ]
    assert adaptive[6:8] == ["--superlink", "127.0.0.1:9093"]
    flower = supernode_command(home.root, **common, poll="flower")
    assert flower[0].endswith("flower-supernode") and flower[1:] == adaptive[6:]
    with pytest.raises(ConfigError, match="--poll must be adaptive or flower"):
        supernode_command(home.root, **common, poll="fast")
