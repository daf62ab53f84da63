"""A polling pause that starts short after activity, stays short while a job is busy, then backs off.

Why: the deployed path polls in three places (the coordinator's grid for replies, the SuperNode for
messages, the warm executor for tasks). A reply usually follows within a second or two while a job
runs, so polling should be prompt then, and no more frequent than Flower's own pace once idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Pauses doubling from ``first``; at most ``busy`` within ``window`` s of :meth:`reset`, else ``most``.

    ``clock`` defaults to ``time.monotonic``, looked up at each call (so a test's patched clock applies).
    """

    def __init__(
        self,
        first: float,
        *,
        busy: float,
        window: float,
        most: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.first, self.busy, self.window, self.most = first, busy, window, most
        self._clock = clock
        self.reset()

    def now(self) -> float:
        return self._clock() if self._clock is not None else time.monotonic()

    def reset(self) -> None:
        """Activity: the next pause is ``first`` again, and the busy window starts now."""
        self.pause, self.last_activity = min(self.first, self.most), self.now()

    def next_pause(self) -> float:
        """The pause to take now; the one after it doubles (within the caps)."""
        busy = self.now() - self.last_activity < self.window
        pause = min(self.pause, min(self.busy, self.most) if busy else self.most)
        self.pause = min(pause * 2, self.most)
        return pause
