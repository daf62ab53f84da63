"""A job's block freezes the objects alive before it and gives them back after, nested or failing."""

from __future__ import annotations

import gc
import weakref

import pytest

from fedcustomer.common.long_lived import long_lived_frozen


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_objects_from_before_are_frozen_for_the_block_and_given_back_after() -> None:
    gc.collect()
    old = _cycle()  # garbage, but not yet collected: an object alive when the job starts
    assert gc.get_freeze_count() == 0
    with long_lived_frozen():
        assert gc.get_freeze_count() > 0
        new = _cycle()
        gc.collect()
        assert new() is None  # the job's own cycles are collected as before
        assert old() is not None  # the older ones are left alone for the job's duration
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old() is None  # and collected once the job is over: nothing is kept for good


def test_overlapping_blocks_share_one_freeze_and_a_failure_still_unfreezes() -> None:
    with long_lived_frozen():
        with long_lived_frozen():
            assert gc.get_freeze_count() > 0
        # the outer job is still running: still frozen (the count may drop as frozen objects are freed)
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), long_lived_frozen():
        raise RuntimeError("a round failed")
    assert gc.get_freeze_count() == 0


def test_a_job_on_the_grid_runs_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedcustomer.server.run as run_module

    seen: list[int] = []
    monkeypatch.setattr(run_module, "_run_job", lambda *args: seen.append(gc.get_freeze_count()) or {})
    assert run_module.run_job_on_grid(None, None, None, num_partners=1) == {}  # type: ignore[arg-type]
    assert seen and seen[0] > 0 and gc.get_freeze_count() == 0
