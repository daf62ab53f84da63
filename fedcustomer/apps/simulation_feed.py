"""Flower's simulation engine hands pushed messages to its workers promptly, and sweeps within a CPU share.

Why: in Flower 1.42 a thread of the simulation engine (``add_messages_to_queue`` in
``flwr/server/superlink/fleet/vce/vce_api.py``) asks the link state for each node's next message,
then waits a fixed 0.1 s, for the whole run. Two costs follow. A round's messages wait 0.05 s on
average for the next sweep: a sixth of a round of ten small partners. And each ask scans every
stored message (``InMemoryLinkState.get_message_ins``), so a sweep costs nodes x stored messages
(delivered messages stay stored until their replies are pulled): nothing for ten partners, but with
300 a quarter of the coordinator process's sampled time was in these sweeps, CPU taken from the
workers that train.

:func:`paced_feed` asks the link state the same thing, node by node, and stops on the same event,
but waits after each sweep in proportion to what the sweep cost (``SWEEP_SHARE`` times its
duration: the thread then uses at most about a fifth of a core), never less than ``MIN_PAUSE_S``
and never more than ``MAX_PAUSE_S``. Between rounds the store is nearly empty, sweeps are cheap and
the pause short, so a new round's messages are picked up within about ``MIN_PAUSE_S``.
:func:`pace_simulation_feed` puts it in Flower's place, for the Flower versions it was checked
against only (:data:`fedcustomer.apps.flower_waits.TESTED_FLOWER`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from queue import Queue
from typing import Any

from fedcustomer.apps.flower_waits import replace_flower_function

VCE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
FEED_NAME = "add_messages_to_queue"  # the function the engine's run_api starts as its extractor thread
MIN_PAUSE_S = 0.01
SWEEP_SHARE = 4.0  # the pause after a sweep, in multiples of the sweep's duration
MAX_PAUSE_S = 1.0


def feed_pause(sweep_s: float) -> float:
    """Seconds to wait after a sweep that took ``sweep_s``."""
    return min(MAX_PAUSE_S, max(MIN_PAUSE_S, SWEEP_SHARE * sweep_s))


def paced_feed(
    state: Any, queue: Queue[Any], nodes_mapping: Mapping[int, Any], f_stop: threading.Event
) -> None:
    """Put each node's next undelivered message on ``queue`` until ``f_stop`` is set, paced by :func:`feed_pause`."""
    while not f_stop.is_set():
        started = time.perf_counter()
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(feed_pause(time.perf_counter() - started))


def pace_simulation_feed(version: str | None = None) -> bool:
    """Run :func:`paced_feed` as the simulation engine's extractor; False (Flower's own kept) if untested."""
    return replace_flower_function(VCE_MODULE, FEED_NAME, lambda _flowers: paced_feed, version)
