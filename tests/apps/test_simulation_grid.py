"""The simulation engine's grid: replies pulled at a pace set by the exchange's size."""

from __future__ import annotations

import inspect

import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedcustomer.apps.simulation_grid import MAX_PULL_S, MIN_PULL_S, SimulationGrid, paced, pull_pause
from fedcustomer.server.inprocess import LocalGrid


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a SuperLink sets


class SleepyGrid:
    """Stands in for Flower's in-memory grid: records the pause in force when messages are sent."""

    def __init__(self) -> None:
        self.pull_interval = 0.1
        self.seen: list[tuple[float, int, float | None]] = []

    def send_and_receive(self, messages, *, timeout=None):
        sent = list(messages)
        self.seen.append((self.pull_interval, len(sent), timeout))
        return sent


def _messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in range(n)]


def test_pause_is_short_for_a_few_partners_and_flowers_own_for_thousands():
    assert pull_pause(1) == MIN_PULL_S == pull_pause(10) == pull_pause(100)
    assert MIN_PULL_S < pull_pause(500) < MAX_PULL_S
    assert pull_pause(1_000) == MAX_PULL_S == pull_pause(100_000)


def test_each_exchange_sets_the_pause_for_its_own_size_and_keeps_timeout_and_messages():
    inner = SleepyGrid()
    grid = SimulationGrid(inner)  # type: ignore[arg-type]
    ten = _messages(10)
    assert list(grid.send_and_receive(iter(ten), timeout=7.0)) == ten  # a one-shot iterable too
    list(grid.send_and_receive(_messages(2_000), timeout=None))
    assert inner.seen == [(MIN_PULL_S, 10, 7.0), (MAX_PULL_S, 2_000, None)]


def test_only_a_grid_that_sleeps_pull_interval_is_wrapped():
    assert isinstance(paced(SleepyGrid()), SimulationGrid)  # type: ignore[arg-type]
    local = LocalGrid.__new__(LocalGrid)
    assert paced(local) is local  # the in-process grid calls partners directly; nothing to pace


def test_flowers_in_memory_grid_still_sleeps_a_float_pull_interval():
    """paced() recognises Flower's grid by this attribute; a Flower that renames it fails here."""
    default = inspect.signature(InMemoryGrid.__init__).parameters["pull_interval"].default
    assert isinstance(default, float) and default >= MIN_PULL_S
    assert "self.pull_interval" in inspect.getsource(InMemoryGrid.send_and_receive)
