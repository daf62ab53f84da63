"""Flower's SuperNode with an adaptive wait between pulls (``fedcustomer node start --poll adaptive``).

Why: Flower 1.42's SuperNode loop (``flwr/supernode/start_client_internal.py``) sleeps 3 s whenever
a pull from the SuperLink finds no message, and it pulls right after pushing each reply, before
the coordinator can have sent the next message. A chain of sequential exchanges (a vertical job
is dozens of them) then pays about 3 s per exchange. It also waits for the ClientApp's reply,
and for a reply object's content, in 0.5-s sleeps.

This entry point runs Flower's own ``flower-supernode`` main unchanged, except that the loop
module's ``time`` reference is an :class:`AdaptiveTime`, whose ``sleep`` maps the two known waits:

* the idle wait (3 s): 0.05 s right after traffic, doubling, but at most 0.25 s for the first
  10 s after traffic (a job in progress: the other party's turn usually takes a second or two),
  then up to 1 s: an idle node asks the SuperLink once a second (Flower: every 3 s), so a new
  job's first message waits at most about a second at each party instead of up to 3 s (two
  parties: about 0.7 s instead of 2 s on average); one signed pull a second is a few
  milliseconds of CPU at the node and the SuperLink;
* except right after this node pushed a reply: then the coordinator usually sends this node's next
  message within a few hundred milliseconds (it pulls the reply, takes its step and pushes; 0.04-0.54 s
  after the push in a traced quiet job), so for ``REPLY_WINDOW_S`` the node asks every ``REPLY_STEP_S``
  (0.1 s) instead of ramping 0.05, 0.1, 0.2, 0.25 s: in that trace the message waited 0.05 s on average
  for the node's pull instead of 0.1 s, for one or two more pulls per reply; after the window the
  busy pace (0.25 s) goes on, and an idle node's pace is unchanged;
* the reply wait (0.5 s): a few milliseconds, doubling up to 0.05 s, on the node's in-memory state;
* after a pull the SuperLink held (:mod:`fedcustomer.deploy.pull_hold`: it answered empty after
  waiting up to a second for a message, so the pull took at least ``HELD_PULL_S``), no wait at all:
  the next pull is held in turn, so a message reaches the node as soon as it is stored and an idle
  node still asks about once a second. A SuperLink that does not hold answers at once, and the
  waits above apply.

Under the node's supervisor (``--clientapp warm``) the loop also rings the task bell
(:mod:`fedcustomer.deploy.task_bell`) when a pulled message's task exists, just before its objects
are pulled, so the warm executor asks for the task then instead of polling for it.

Any other duration passes through. A message's objects that have not reached the SuperLink yet
are asked for again within milliseconds (:mod:`fedcustomer.apps.flower_waits`). Only the Flower
versions this was tested against get the shim; on another version Flower runs unchanged and the
node's log says once that the adaptive wait is off.

    python -m fedcustomer.deploy.supernode_poll --poll adaptive -- --superlink HOST:PORT ...
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fedcustomer.apps.flower_waits import TESTED_FLOWER, flower_version, prompt_retries, tested
from fedcustomer.common.backoff import Backoff
from fedcustomer.deploy import task_bell

ADAPTIVE, FLOWER = "adaptive", "flower"
POLL_MODES = (ADAPTIVE, FLOWER)
LOOP_MODULE = "flwr.supernode.start_client_internal"
IDLE_S = 3.0  # Flower's wait after a pull that found no message
MAX_IDLE_S = 1.0  # the longest idle wait here (an idle node: one pull a second)
REPLY_S = 0.5  # Flower's wait for the ClientApp's reply (and for a reply object's content)
FIRST_IDLE_S = 0.05
BUSY_CAP_S = 0.25  # the longest idle wait within BUSY_WINDOW_S of traffic
BUSY_WINDOW_S = 10.0
FIRST_REPLY_S = 0.005
MAX_REPLY_S = 0.05
REPLY_WINDOW_S = 0.7  # after this node's reply is pushed: its next message usually comes within it
REPLY_STEP_S = 0.1  # the pace of pulls within that window
HELD_PULL_S = 0.9  # an empty pull this long was held (a held pull that finds nothing takes 1 s)


class AdaptiveTime:
    """Stands in for the ``time`` module inside Flower's SuperNode loop; only ``sleep`` differs.

    Idle waits double from ``first_idle``; within ``busy_window`` seconds of the last traffic (a
    job in progress: its next message usually comes within seconds) they stay at most ``busy_cap``,
    after that they grow to ``max_idle`` (1 s; Flower's own wait is 3 s). For ``reply_window``
    seconds after this node's reply was pushed they are ``reply_step`` each. After an empty pull that
    took at least ``held_pull`` seconds (the SuperLink held it) there is no wait.
    """

    def __init__(
        self,
        real: Any = time,
        *,
        first_idle: float = FIRST_IDLE_S,
        busy_cap: float = BUSY_CAP_S,
        busy_window: float = BUSY_WINDOW_S,
        max_idle: float = MAX_IDLE_S,
        first_reply: float = FIRST_REPLY_S,
        max_reply: float = MAX_REPLY_S,
        reply_window: float = REPLY_WINDOW_S,
        reply_step: float = REPLY_STEP_S,
        held_pull: float = HELD_PULL_S,
    ) -> None:
        self._real = real
        self.held_pull = held_pull
        self.awake_since = real.monotonic()  # the end of the last wait or push: a pull began after it
        self.reply_window, self.reply_step = reply_window, reply_step
        self.replied_at: float | None = None  # when this node's last reply was pushed (monotonic)
        self.idle = Backoff(
            first_idle, busy=busy_cap, window=busy_window, most=max_idle, clock=real.monotonic
        )
        self.reply = Backoff(first_reply, busy=max_reply, window=0.0, most=max_reply, clock=real.monotonic)

    @property
    def idle_pause(self) -> float:
        """The next idle wait before its busy cap (what traffic resets)."""
        return self.idle.pause

    @idle_pause.setter
    def idle_pause(self, seconds: float) -> None:
        self.idle.pause = seconds

    def traffic(self) -> None:
        """A message came or a reply left: the next idle and reply waits start short again."""
        self.idle.reset()
        self.reply.reset()

    def replied(self) -> None:
        """This node's reply has left: traffic, and the next message is likely within ``reply_window``."""
        self.traffic()
        self.replied_at = self.awake_since = self._real.monotonic()

    def pause_for(self, seconds: float) -> float:
        """The wait that replaces Flower's ``seconds`` (and the backoff step it takes)."""
        if seconds == IDLE_S:
            self.reply.reset()
            if self._real.monotonic() - self.awake_since >= self.held_pull:
                return 0.0  # the SuperLink held the pull: the wait has been taken there
            if self.replied_at is not None and self._real.monotonic() - self.replied_at < self.reply_window:
                self.idle.pause = self.idle.busy  # after the window: the busy pace, not a second ramp
                return self.reply_step
            return self.idle.next_pause()
        if seconds == REPLY_S:  # only after a message was pulled: that is traffic
            self.idle.reset()
            return self.reply.next_pause()
        return seconds

    def sleep(self, seconds: float) -> None:
        self._real.sleep(self.pause_for(seconds))
        self.awake_since = self._real.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install(loop: ModuleType | None = None, version: str | None = None) -> AdaptiveTime | None:
    """Put the adaptive wait into Flower's SuperNode loop; None (Flower unchanged) on an untested version."""
    version = flower_version() if version is None else version
    if not tested(version):
        return None
    loop = loop or importlib.import_module(LOOP_MODULE)
    push = getattr(loop, "_push_messages", None)
    if not isinstance(getattr(loop, "time", None), ModuleType) or not callable(push):
        return None  # not the loop this was written for
    shim = AdaptiveTime(loop.time)
    loop.time = shim  # type: ignore[attr-defined]
    if loop.__name__ == LOOP_MODULE:  # a message's objects pulled from the SuperLink: prompt retries
        prompt_retries(LOOP_MODULE, "pull_objects", version)
    bell = task_bell.fd_from_env()
    pull = getattr(loop, "pull_objects", None)
    if bell is not None and callable(pull):  # its task exists now: the warm executor may take it at once
        loop.pull_objects = _before(pull, lambda: task_bell.ring(bell))  # type: ignore[attr-defined]
        task_bell.ring(bell)  # this node rings: its executor may wait on the bell from the start
    loop._push_messages = _after(push, shim.replied)  # type: ignore[attr-defined]
    return shim


def _before(func: Callable[..., Any], first: Callable[[], None]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        first()
        return func(*args, **kwargs)

    return wrapped


def _after(func: Callable[..., Any], then: Callable[[], None]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        finally:
            then()  # the reply has left: the next pull comes soon, backing off from there

    return wrapped


def _say(text: str) -> None:
    print(f"fedcustomer node: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    split = args.index("--") if "--" in args else len(args)
    ap = argparse.ArgumentParser(description="Run Flower's SuperNode with an adaptive wait between pulls.")
    ap.add_argument("--poll", choices=POLL_MODES, default=ADAPTIVE)
    opts = ap.parse_args(args[:split])
    version = flower_version()
    if opts.poll == ADAPTIVE:
        if install(version=version) is None:
            _say(
                f"adaptive SuperNode wait is off: Flower {version or '(unknown version)'} is not one it "
                f"was tested with ({', '.join(v + 'x' for v in TESTED_FLOWER)}); Flower's own waits apply"
            )
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args[split + 1 :]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
