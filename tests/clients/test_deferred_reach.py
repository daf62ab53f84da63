"""A round's reach commit runs while the node builds its reply, and always ends before the reply leaves."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcustomer.apps import client as client_app
from fedcustomer.clients import audit_holds
from fedcustomer.clients.deferred_reach import DeferredReach
from fedcustomer.clients.round_audit import record_round, settle_log
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.reach import HeldHomeReach
from fedcustomer.server.inprocess import LocalGrid
from tests.clients.test_audit_holds import _outcome, _reach, _verified
from tests.clients.test_node import DATASET, _global, _home, _ins
from tests.toy import SPEC

GUARD_S = 60.0  # a deadlock guard only: every wait below ends on progress long before it


def _blocked_reach(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> tuple[threading.Event, threading.Event]:
    """Reach commits that announce their start, wait for ``proceed``, commit, and say so."""
    started, proceed = threading.Event(), threading.Event()
    real = HeldHomeReach.record_entry_and_checkpoint

    def blocked(self, *args):  # type: ignore[no-untyped-def]
        started.set()
        assert proceed.wait(GUARD_S), "the reach commit was never let through"
        real(self, *args)
        events.append("reach committed")

    monkeypatch.setattr(HeldHomeReach, "record_entry_and_checkpoint", blocked)
    return started, proceed


def _train_message(home: PartnerHome, rnd: int, planned: int) -> tuple[LocalGrid, Message]:
    config = {
        "run-id": "r1",
        "server-round": rnd,
        "planned-rounds": planned,
        "task": "repayment",
        "arch": "logreg",
        "dataset": DATASET,
        "feature-spec": json.dumps(SPEC.to_dict()),
        "batch-size": 100,
        "lr": 0.5,
    }
    grid = LocalGrid(client_app.make_client_app([str(home.root)]), 1)
    msg = Message(
        RecordDict({"arrays": ArrayRecord(_global()), "config": ConfigRecord(config)}),
        dst_node_id=1,
        message_type="train",
    )
    return grid, msg


def test_a_deferred_reach_commit_is_pending_until_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(tmp_path, 3.0)
    first = record_round(home, _outcome(), _ins(1, planned=3))  # inline: the hold is made here
    assert _reach(home)[0] == first.seq
    events: list[str] = []
    started, proceed = _blocked_reach(monkeypatch, events)
    entry = record_round(home, _outcome(), _ins(2, planned=3), defer_reach=True)
    assert started.wait(GUARD_S)
    assert _reach(home)[0] == first.seq and events == []  # appended and signed; its reach still running
    proceed.set()
    settle_log(home, "r1")
    assert events == ["reach committed"] and _reach(home)[0] == entry.seq
    audit_holds.HOLDS.release(home, "r1")
    assert len(_verified(home)) == 2


def test_the_round_reply_is_built_during_the_reach_commit_and_leaves_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(tmp_path, 3.0)
    events: list[str] = []
    started, proceed = _blocked_reach(monkeypatch, events)
    real_anchor = client_app.current_anchor_json

    def anchor_while_pending(*args):  # type: ignore[no-untyped-def]
        assert started.is_set() and events == []  # the commit began and has not ended
        events.append("anchor read")
        proceed.set()
        return real_anchor(*args)

    monkeypatch.setattr(client_app, "current_anchor_json", anchor_while_pending)
    grid, msg = _train_message(home, 1, 3)
    (reply,) = grid.send_and_receive([msg])
    events.append("reply")
    assert not reply.has_error() and "arrays" in reply.content
    assert events == ["anchor read", "reach committed", "reply"]
    (entry,) = _verified(home)
    assert _reach(home)[0] >= entry.seq
    audit_holds.HOLDS.release(home, "r1")


def test_a_failure_while_building_the_reply_waits_for_the_reach_and_releases_the_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcustomer.errors import IntegrityError

    home = _home(tmp_path, 3.0)
    events: list[str] = []
    _, proceed = _blocked_reach(monkeypatch, events)

    def broken_anchor(*_args):  # type: ignore[no-untyped-def]
        proceed.set()
        raise IntegrityError("checkpoint file unreadable")

    monkeypatch.setattr(client_app, "current_anchor_json", broken_anchor)
    grid, msg = _train_message(home, 1, 3)
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "checkpoint file unreadable" in reply.error.reason
    assert events == ["reach committed"]  # ended before the error reply left
    assert (str(home.root.resolve()), "r1") not in audit_holds.HOLDS
    (entry,) = _verified(home)
    assert _reach(home)[0] == entry.seq


def test_an_error_of_the_deferred_commit_is_raised_when_settling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = _home(tmp_path, 3.0)
    first = record_round(home, _outcome(), _ins(1, planned=3))

    def failing(self, *args):  # type: ignore[no-untyped-def]
        raise RuntimeError("reach worker failed")

    monkeypatch.setattr(HeldHomeReach, "record_entry_and_checkpoint", failing)
    record_round(home, _outcome(), _ins(2, planned=3), defer_reach=True)
    with pytest.raises(RuntimeError, match="reach worker failed"):
        settle_log(home, "r1")
    settle_log(home, "r1")  # raised once; nothing pending after it
    monkeypatch.undo()
    audit_holds.HOLDS.release(home, "r1")
    assert _reach(home)[0] == first.seq  # the log runs ahead of its record, which verification accepts
    assert len(_verified(home)) == 2


def test_a_forked_child_commits_inline_and_never_waits_on_the_parents_worker(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    record_round(home, _outcome(), _ins(1, planned=2))  # a reach row to update
    audit_holds.HOLDS.release(home, "r1")
    seq, h, _ = _reach(home)
    reach = DeferredReach(HeldHomeReach(home.store_path, home.keys_dir / "audit_signing.pub"))
    reach.defer = True
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            reach.record_entry(seq + 5, h, 1)  # inline in the child: committed when the call returns
            with sqlite3.connect(f"file:{home.store_path}?mode=ro", uri=True) as con:
                (now,) = con.execute("SELECT seq FROM audit_reach").fetchone()
            reach.wait()  # the parent's: a no-op here
            code = 0 if now == seq + 5 and reach._worker is None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    reach.record_entry(seq + 6, h, 1)  # the parent defers to its own worker
    reach.wait()
    assert _reach(home)[0] == seq + 6
    reach.close()
