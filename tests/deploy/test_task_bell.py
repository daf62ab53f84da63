"""The task bell between a SuperNode and its warm executor: a ring wakes a wait at once, a wait
without a ring ends on its timeout, ringing never blocks or raises, and only an open pipe counts."""

from __future__ import annotations

import os

import pytest

from fedcustomer.deploy import task_bell as tb


@pytest.fixture
def bell():
    read_fd, write_fd = tb.open_bell()
    yield tb.Bell(read_fd), write_fd
    os.close(write_fd)


def test_a_ring_wakes_the_wait_and_all_pending_rings_are_taken_at_once(bell):
    waiter, write_fd = bell
    assert not waiter.heard
    for _ in range(3):
        tb.ring(write_fd)
    assert waiter.wait(600.0) is True  # returns on the ring, not after the timeout
    assert waiter.heard
    assert waiter.wait(0.0) is False  # the three rings were one wake-up


def test_a_wait_without_a_ring_ends_on_its_timeout(bell):
    waiter, _ = bell
    assert waiter.wait(0.01) is False and not waiter.heard


def test_ringing_a_full_pipe_never_blocks_or_raises(bell):
    waiter, write_fd = bell
    for _ in range(100_000):  # far more than a pipe holds
        tb.ring(write_fd)
    assert waiter.wait(0.0) is True


def test_ringing_a_bell_whose_reader_is_gone_is_silent():
    read_fd, write_fd = tb.open_bell()
    os.close(read_fd)
    try:
        tb.ring(write_fd)  # EPIPE: nothing to wake
    finally:
        os.close(write_fd)


def test_when_the_supernodes_end_closes_the_executor_falls_back_to_plain_pauses():
    read_fd, write_fd = tb.open_bell()
    waiter = tb.Bell(read_fd)
    tb.ring(write_fd)
    assert waiter.wait(1.0) and waiter.heard
    os.close(write_fd)
    assert waiter.wait(600.0) is False  # end of file, at once: no spinning on a dead pipe
    assert waiter.fd == -1 and not waiter.heard  # the usual task-poll pace applies again
    assert waiter.wait(0.0) is False


def test_only_an_open_pipe_of_this_process_is_a_bell(tmp_path):
    read_fd, write_fd = tb.open_bell()
    try:
        assert tb.fd_from_env({tb.ENV_FD: str(write_fd)}) == write_fd
        assert tb.open_pipe_fd(read_fd) == read_fd
        with open(tmp_path / "f", "w") as f:
            assert tb.open_pipe_fd(f.fileno()) is None  # a file is not a bell
        for value in ("", "x", "-1", "99999"):
            assert tb.fd_from_env({tb.ENV_FD: value}) is None
        assert tb.fd_from_env({}) is None
        assert tb.open_pipe_fd(None) is None
    finally:
        os.close(read_fd)
        os.close(write_fd)
