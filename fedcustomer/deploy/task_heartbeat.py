"""Task heartbeats for the warm executors, sent often enough to outlast a stalled machine.

The SuperLink keeps a claimed ServerApp or ClientApp task alive for ``HEARTBEAT_PATIENCE x
HEARTBEAT_DEFAULT_INTERVAL`` (2 x 30 s in Flower 1.42) after its last acknowledged heartbeat, and
refuses the task's token once that passes. Flower's own ``HeartbeatSender`` beats every
17.5-22.5 s, so a pause of about 40 s of the whole machine (a busy shared host, swapping, a VM
paused by its hypervisor) right before a beat is due is enough for the SuperLink to take a
healthy job away. The same job was seen failing that way once on a loaded two-core machine.

:class:`TaskHeartbeat` sends the same request through Flower's own heartbeat call
(``make_task_heartbeat_fn_http``: a refused token still interrupts the task with SIGINT), every
eighth of that lifetime (7.5 s), so a task survives a pause of about 50 s. A beat that did not
get through (Flower's call returns False for a transport error, 503 or 504) is retried every second
until it does or the task ends; any other error is logged and the beat tried again at the next
interval, so the thread never dies of one. The SuperLink's side is Flower's and unchanged: a task whose process died is still
dropped after the same 60 s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

log = logging.getLogger(__name__)

# What the SuperLink allows between acknowledged heartbeats of a running task.
TASK_LIFETIME_S = float(HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL)
BEATS_PER_LIFETIME = 8
RETRY_S = 1.0


class TaskHeartbeat:
    """Calls ``beat`` (True: acknowledged) every ``interval`` seconds on a daemon thread until stopped.

    A beat that returns False is tried again after ``retry`` seconds, one that raises after
    ``interval``. ``start`` sends the first beat at once (a claimed task must beat before its
    first, shorter, deadline).
    """

    def __init__(
        self,
        beat: Callable[[], bool],
        *,
        interval: float = TASK_LIFETIME_S / BEATS_PER_LIFETIME,
        retry: float = RETRY_S,
    ) -> None:
        if not 0 < retry <= interval:
            raise ValueError(f"need 0 < retry <= interval, got retry={retry} interval={interval}")
        self._beat, self.interval, self.retry = beat, interval, retry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-heartbeat", daemon=True)

    @classmethod
    def for_runtime_client(cls, client: object) -> TaskHeartbeat:
        """Heartbeats of the task whose token ``client`` (a Flower Runtime API HTTP client) carries."""
        from flwr.supercore.heartbeat import make_task_heartbeat_fn_http

        return cls(make_task_heartbeat_fn_http(client))  # type: ignore[arg-type]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No beat after this returns (one in flight is waited for)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.interval if self._beat() else self.retry
            except Exception as exc:  # e.g. an HTTP error status: logged, tried again at the next beat
                log.warning("task heartbeat failed (%s)", type(exc).__name__)
                wait = self.interval
            self._stop.wait(wait)
