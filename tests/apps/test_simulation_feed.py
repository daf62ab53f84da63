"""The simulation engine's message feed: every pushed message handed over once, paced by its sweeps' cost."""

from __future__ import annotations

import ast
import importlib
import inspect
import threading
from queue import Queue

import pytest

from fedcustomer.apps import simulation_feed
from fedcustomer.apps.simulation_feed import (
    FEED_NAME,
    MAX_PAUSE_S,
    MIN_PAUSE_S,
    SWEEP_SHARE,
    VCE_MODULE,
    feed_pause,
    pace_simulation_feed,
    paced_feed,
)


class FakeLinkState:
    """Undelivered messages per node, handed out once each, as Flower's link state does."""

    def __init__(self, waiting: dict[int, list[str]]) -> None:
        self.waiting = waiting
        self.lock = threading.Lock()

    def get_message_ins(self, node_id: int, limit: int | None) -> list[str]:
        with self.lock:
            queue = self.waiting.get(node_id, [])
            taken, self.waiting[node_id] = queue[:limit], queue[limit:]
            return taken

    def push(self, node_id: int, message: str) -> None:
        with self.lock:
            self.waiting.setdefault(node_id, []).append(message)


def _run_feed(
    state: FakeLinkState, nodes: dict[int, int]
) -> tuple[Queue[str], threading.Event, threading.Thread]:
    queue: Queue[str] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=paced_feed, args=(state, queue, nodes, stop), daemon=True)
    thread.start()
    return queue, stop, thread


def test_pause_follows_the_sweeps_cost_within_bounds():
    assert feed_pause(0.0) == MIN_PAUSE_S
    assert feed_pause(0.05) == pytest.approx(SWEEP_SHARE * 0.05)
    assert feed_pause(10.0) == MAX_PAUSE_S


def test_every_message_is_handed_over_once_including_ones_pushed_later_and_the_feed_stops():
    state = FakeLinkState({1: ["a1", "a2"], 2: ["b1"], 3: []})
    queue, stop, thread = _run_feed(state, {1: 0, 2: 1, 3: 2})
    got = [queue.get(timeout=30) for _ in range(3)]  # progress, not a fixed wait
    state.push(3, "c1")  # a later round's message
    got.append(queue.get(timeout=30))
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(got) == ["a1", "a2", "b1", "c1"] and queue.empty()
    assert got.index("a1") < got.index("a2")  # a node's messages in the order they were stored


def test_installed_in_flowers_place_only_for_tested_versions(monkeypatch: pytest.MonkeyPatch):
    module = importlib.import_module(VCE_MODULE)
    flowers = getattr(module, FEED_NAME)
    monkeypatch.setattr(module, FEED_NAME, flowers)  # restored after the test
    assert pace_simulation_feed(version="0.9.0") is False
    assert getattr(module, FEED_NAME) is flowers
    assert pace_simulation_feed(version="1.42.0") is True
    assert getattr(module, FEED_NAME) is paced_feed


def test_flowers_engine_still_starts_its_extractor_by_this_name_and_signature():
    """The substitution works only while run_api looks the function up by name; a Flower that changes it fails here."""
    module = importlib.import_module(VCE_MODULE)
    assert f"target={FEED_NAME}" in inspect.getsource(module.run_api)
    tree = ast.parse(inspect.getsource(module))  # Flower's own definition, whatever is installed in its place
    (theirs,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == FEED_NAME]
    ours = inspect.signature(simulation_feed.paced_feed).parameters
    assert [a.arg for a in theirs.args.args] == list(ours)
