"""The simulation engine's grid, pulling replies at a pace that suits the exchange's size.

Why: Flower 1.42's in-memory grid (``InMemoryGrid`` in ``flwr/superlink/grid/inmemory_grid.py``,
the ServerApp's grid in the simulation engine) sleeps ``pull_interval`` (0.1 s) between pulls for
replies. A round of ten small partners trains in about 0.2-0.3 s, so the last reply then waits
0.05 s on average (up to 0.1 s) for the pull that finds it: a fifth of the round spent asleep.
Each pull takes the link state's lock and checks every outstanding message, so a short pause is
cheap for a few messages but not for thousands: the pause grows with the number of messages
sent, up to Flower's own 0.1 s. Everything else is the wrapped grid's.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedcustomer.server.wrapped_grid import WrappedGrid

MIN_PULL_S = 0.01  # the pause for up to 100 messages
PULL_S_PER_MESSAGE = 1e-4  # 1,000 messages: 0.1 s, Flower's default
MAX_PULL_S = 0.1


def pull_pause(messages: int) -> float:
    """Seconds between pulls while ``messages`` replies are awaited."""
    return min(MAX_PULL_S, max(MIN_PULL_S, messages * PULL_S_PER_MESSAGE))


def paced(grid: Grid) -> Grid:
    """``grid`` pulling at :func:`pull_pause`'s pace if it is a grid that sleeps ``pull_interval``, else itself."""
    return SimulationGrid(grid) if isinstance(getattr(grid, "pull_interval", None), float) else grid


class SimulationGrid(WrappedGrid):
    """An in-memory grid whose ``pull_interval`` is set for each exchange from its number of messages."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        self.grid.pull_interval = pull_pause(len(sent))  # type: ignore[attr-defined]
        return self.grid.send_and_receive(sent, timeout=timeout)
