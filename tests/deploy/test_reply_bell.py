"""The SuperLink's reply bell: pinned to Flower 1.42's reply store, rings only for a stored reply,
never blocks the SuperLink, and leaves Flower unchanged without a pipe or on an untested version."""

from __future__ import annotations

import importlib
import inspect
import os
import select
from types import SimpleNamespace

import pytest

from fedcustomer.common.pipe_bell import open_bell
from fedcustomer.deploy import reply_bell as rb
from tests.deploy.flower_pins import source_digest

# re-read these on a Flower upgrade: the bell must ring after the reply and its object tree are
# stored and committed, and the Fleet push of a node's reply must still go through the method
PINNED = {
    ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState.store_message_and_object_tree"): (
        "1fd5d65c086f3d6b5689"
    ),
}
FLEET_HANDLERS = "flwr.superlink.servicer.fleet.fleet_handlers"


def test_the_installed_flower_stores_replies_where_the_bell_listens():
    import flwr

    assert rb.tested(flwr.__version__)
    for (module, qualname), digest in PINNED.items():
        assert source_digest(module, qualname) == digest, qualname
    assert "state.store_message_and_object_tree(" in inspect.getsource(
        importlib.import_module(FLEET_HANDLERS)
    )


def _pending(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0)
    return os.read(fd, 4096) if ready else b""


class FakeState:
    """Stands in for ``SqlLinkState``: the stored flag is what the test says."""

    def __init__(self) -> None:
        self.stored = True

    def store_message_and_object_tree(self, message, tree, session_id):
        return self.stored, ["obj"]


def _message(reply_to: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=reply_to))


@pytest.fixture
def bell(monkeypatch):
    state_class = type("State", (FakeState,), {})  # install wraps the class: a fresh one per test
    module = SimpleNamespace(SqlLinkState=state_class)
    monkeypatch.setattr(rb.importlib, "import_module", lambda name: module)
    read_fd, write_fd = open_bell()
    yield read_fd, write_fd, state_class
    os.close(read_fd)
    os.close(write_fd)


def test_a_stored_reply_rings_once_and_a_refused_reply_or_an_instruction_rings_nothing(bell):
    read_fd, write_fd, state_class = bell
    assert rb.install(write_fd, version="1.42.0")
    assert _pending(read_fd) == b"!"  # the SuperLink says it rings
    assert rb.install(write_fd, version="1.42.0")  # a second install does not wrap twice
    _pending(read_fd)
    state = state_class()
    assert state.store_message_and_object_tree(_message("ins-1"), None, "s") == (True, ["obj"])
    assert _pending(read_fd) == b"!"
    state.stored = False
    assert state.store_message_and_object_tree(_message("ins-2"), None, "s") == (False, ["obj"])
    state.stored = True
    state.store_message_and_object_tree(_message(""), None, "s")  # an instruction, not a reply
    assert _pending(read_fd) == b""


def test_a_full_pipe_never_blocks_the_superlink(bell):
    read_fd, write_fd, state_class = bell
    rb.install(write_fd, version="1.42.0")
    while True:
        try:
            os.write(write_fd, b"x" * 65536)
        except BlockingIOError:
            break
    assert state_class().store_message_and_object_tree(_message("ins-1"), None, "s")[0]  # returns at once


def test_no_pipe_or_an_untested_flower_leaves_flower_unchanged(bell):
    read_fd, write_fd, state_class = bell
    assert not rb.install(None, version="1.42.0")
    assert not rb.install(write_fd, version="9.0.0")
    assert not getattr(state_class.store_message_and_object_tree, "reply_bell", False)
    assert _pending(read_fd) == b""
