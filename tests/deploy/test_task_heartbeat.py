"""The warm executors' task heartbeats: beat at once, then often enough to outlast a stall of the
machine that Flower's own 17.5-22.5 s cadence does not; failed beats retried, errors survived."""

from __future__ import annotations

import threading

import pytest
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

from fedcustomer.deploy import task_heartbeat as th


class _Beats:
    """A heartbeat call that answers from a script and lets the test wait for the n-th beat."""

    def __init__(self, answers: list[object]) -> None:
        self.answers, self.count = list(answers), 0
        self.changed = threading.Condition()

    def __call__(self) -> bool:
        with self.changed:
            answer = self.answers.pop(0) if self.answers else True
            self.count += 1
            self.changed.notify_all()
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    def wait_for(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= n, timeout=120), f"only {self.count} beats"


def test_the_default_cadence_leaves_the_superlink_most_of_its_lifetime_to_spare():
    lifetime = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL
    beat = th.TaskHeartbeat(lambda: True)
    assert lifetime == th.TASK_LIFETIME_S
    # a pause of the whole machine that starts just before a beat is due may last this long
    slack = lifetime - beat.interval
    assert slack >= 50
    # Flower's own sender beats up to 0.9 x (interval - 5 s call timeout) apart: 37.5 s of slack
    assert slack >= lifetime - 0.9 * (HEARTBEAT_DEFAULT_INTERVAL - 5) + 15


def test_it_beats_at_once_then_at_every_interval_until_stopped():
    beats = _Beats([])
    heartbeat = th.TaskHeartbeat(beats, interval=0.01, retry=0.01)
    heartbeat.start()
    beats.wait_for(5)
    assert heartbeat.running
    heartbeat.stop()
    after_stop = beats.count
    assert not heartbeat.running
    heartbeat._thread.join()  # stop waited for it: nothing more is sent
    assert beats.count == after_stop


def test_a_beat_that_did_not_get_through_is_retried_before_the_next_interval():
    beats = _Beats([False, False, True])
    heartbeat = th.TaskHeartbeat(beats, interval=3600.0, retry=0.01)
    heartbeat.start()
    beats.wait_for(3)  # the two failures retried at once, not an hour later
    heartbeat.stop()
    assert beats.count == 3  # and after a beat that got through, the next waits its interval


def test_an_error_in_a_beat_is_logged_and_does_not_end_the_heartbeats(caplog):
    beats = _Beats([RuntimeError("503"), True, True])
    heartbeat = th.TaskHeartbeat(beats, interval=0.01, retry=0.01)
    heartbeat.start()
    beats.wait_for(3)
    heartbeat.stop()
    assert "task heartbeat failed (RuntimeError)" in caplog.text


@pytest.mark.parametrize(("interval", "retry"), [(1.0, 0.0), (1.0, 2.0), (0.0, 0.0)])
def test_a_retry_outside_the_interval_is_refused(interval, retry):
    with pytest.raises(ValueError, match="retry"):
        th.TaskHeartbeat(lambda: True, interval=interval, retry=retry)


def test_the_executors_beat_through_flowers_own_heartbeat_call(monkeypatch):
    import flwr.supercore.heartbeat as fh

    sent: list[object] = []
    monkeypatch.setattr(fh, "make_task_heartbeat_fn_http", lambda client: lambda: sent.append(client) or True)
    client = object()
    heartbeat = th.TaskHeartbeat.for_runtime_client(client)
    heartbeat.start()
    heartbeat.stop()
    assert sent and sent[0] is client
