"""The SuperLink's pull hold: pinned to Flower 1.42's Fleet pull and message store; an empty pull waits
for the next stored instruction (or answers empty after the hold), never loses a wake-up, holds at
most ``max_held`` pulls, and leaves Flower unchanged on an untested version."""

from __future__ import annotations

import importlib
import inspect
import threading
import time
from types import SimpleNamespace

import pytest

from fedcustomer.deploy import pull_hold as ph
from tests.deploy.flower_pins import source_digest

# re-read these on a Flower upgrade: the hold calls the Fleet pull handler again after each wake-up
# (its checks and answer are Flower's), and wakes when an instruction and its tree are committed
PINNED = {
    ("flwr.superlink.servicer.fleet.fleet_handlers", "pull_messages"): "5f1d8861a9eb14651a1c",
    ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState.store_message_and_object_tree"): (
        "1fd5d65c086f3d6b5689"
    ),
}


def test_the_installed_flower_pulls_and_stores_where_the_hold_listens():
    import flwr

    assert ph.tested(flwr.__version__)
    for (module, qualname), digest in PINNED.items():
        assert source_digest(module, qualname) == digest, qualname
    router = importlib.import_module("flwr.superlink.routers.fleet.router")
    # the route looks the handler up on the module at each request, so the held one answers
    assert "fleet_handlers.pull_messages(" in inspect.getsource(router.fleet_pull_messages)


class Link:
    """Stands in for the SuperLink: a queue of instructions per node, a store and a Fleet pull."""

    def __init__(self) -> None:
        self.queued: dict[int, list[str]] = {}
        self.pulls = 0
        self.lock = threading.Lock()

    def pull(self, *, request, state=None, store=None):
        with self.lock:
            self.pulls += 1
            found = self.queued.get(request.node, [])[:1]
            if found:
                self.queued[request.node].pop(0)
        return SimpleNamespace(messages_list=found)


def _message(node: int, reply_to: str = "") -> SimpleNamespace:
    return SimpleNamespace(node=node, metadata=SimpleNamespace(reply_to_message_id=reply_to))


@pytest.fixture
def link(monkeypatch):
    """A fresh state class and handlers module per test, with the hold installed.

    The hold is long (30 s): a test that needs a pull answered ends the hold by storing an
    instruction, so a slow machine only makes it slower; expiry is tested with its own short hold.
    """
    fake = Link()

    class State:
        def store_message_and_object_tree(self, message, tree, session_id):
            if not message.metadata.reply_to_message_id:
                with fake.lock:
                    fake.queued.setdefault(message.node, []).append(f"ins-{message.node}")
            return True, []

    handlers = SimpleNamespace(pull_messages=fake.pull)
    state_module = SimpleNamespace(SqlLinkState=State)
    modules = {ph.STATE_MODULE: state_module, ph.HANDLERS_MODULE: handlers}
    monkeypatch.setattr(ph.importlib, "import_module", lambda name: modules[name])
    stored = ph.StoredMessages(max_held=2)
    assert ph.install(version="1.42.0", stored=stored, hold_s=30.0)
    assert ph.install(version="1.42.0", stored=stored, hold_s=30.0)  # a second install wraps nothing twice
    return SimpleNamespace(
        fake=fake, store=State().store_message_and_object_tree, handlers=handlers, stored=stored
    )


def _pull(link, node: int):
    return link.handlers.pull_messages(request=SimpleNamespace(node=node), state=None, store=None)


def _until(condition) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _in_thread(run) -> threading.Thread:
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_empty_pull_waits_for_the_next_instruction_and_answers_with_it(link):
    thread = _in_thread(lambda: (_until(lambda: link.stored.held == 1), link.store(_message(7), None, "s")))
    response = _pull(link, 7)
    thread.join()
    assert response.messages_list == ["ins-7"]
    assert link.fake.pulls == 2  # looked, waited, looked again when the instruction was stored
    assert link.stored.held == 0


def test_a_pull_that_finds_a_message_is_answered_at_once_and_an_unanswered_one_after_the_hold(link):
    link.store(_message(3), None, "s")
    assert _pull(link, 3).messages_list == ["ins-3"]
    assert link.fake.pulls == 1 and link.stored.held == 0
    short = ph._holding(link.fake.pull, link.stored, 0.3)
    started = time.monotonic()
    assert (
        short(request=SimpleNamespace(node=3)).messages_list == []
    )  # nothing came: empty, as Flower answers
    assert time.monotonic() - started >= 0.3
    assert link.stored.held == 0


def test_a_reply_or_another_nodes_instruction_does_not_end_the_hold(link):
    seen: dict[str, int] = {}

    def elsewhere():
        _until(lambda: link.stored.held == 1)
        link.store(_message(9, reply_to="ins-1"), None, "s")  # a reply: wakes nobody
        time.sleep(0.05)
        seen["after_reply"] = link.fake.pulls
        link.store(_message(8), None, "s")  # another node's: node 7 looks again, then waits on
        _until(lambda: link.fake.pulls == 2)
        seen["after_other"] = link.stored.held
        link.store(_message(7), None, "s")

    thread = _in_thread(elsewhere)
    assert _pull(link, 7).messages_list == ["ins-7"]
    thread.join()
    assert seen == {"after_reply": 1, "after_other": 1}
    assert link.fake.pulls == 3
    assert _pull(link, 8).messages_list == ["ins-8"]


def test_an_instruction_stored_while_the_first_pull_looks_is_not_missed(link):
    first = link.fake.pull

    def racing_pull(**kwargs):  # the instruction lands after the database was read, before the wait
        response = first(**kwargs)
        if link.fake.pulls == 1:
            link.store(_message(7), None, "s")
        return response

    link.handlers.pull_messages = ph._holding(racing_pull, link.stored, 30.0)
    assert _pull(link, 7).messages_list == ["ins-7"]  # without the count it would wait the 30-s hold


def test_at_most_max_held_pulls_wait_and_any_other_is_answered_at_once(link):
    answers: list[list[str]] = []
    threads = [_in_thread(lambda: answers.append(_pull(link, 1).messages_list)) for _ in range(2)]
    _until(lambda: link.stored.held == 2)
    assert _pull(link, 2).messages_list == []  # the third pull: not held (a 30-s hold otherwise)
    assert link.stored.held == 2
    link.store(_message(1), None, "s")
    link.store(_message(1), None, "s")
    for thread in threads:
        thread.join()
    assert answers == [["ins-1"], ["ins-1"]] and link.stored.held == 0


def test_a_failing_pull_gives_its_place_back(link):
    calls = {"n": 0}

    def failing(**kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("database gone")
        return SimpleNamespace(messages_list=[])

    link.handlers.pull_messages = ph._holding(failing, link.stored, 30.0)
    thread = _in_thread(lambda: (_until(lambda: link.stored.held == 1), link.store(_message(4), None, "s")))
    with pytest.raises(RuntimeError):
        link.handlers.pull_messages(request=SimpleNamespace(node=7))
    thread.join()
    assert link.stored.held == 0


def test_an_untested_flower_is_left_unchanged(monkeypatch):
    handlers = SimpleNamespace(pull_messages=lambda **kwargs: None)
    monkeypatch.setattr(ph.importlib, "import_module", lambda name: handlers)
    assert not ph.install(version="9.0.0")
    assert not getattr(handlers.pull_messages, "pull_hold", False)
