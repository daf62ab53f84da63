"""A job's audit log held between rounds: opened once, each entry still signed and recorded in the reach."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fedcustomer.clients import audit_holds
from fedcustomer.clients.audit_holds import AuditHolds
from fedcustomer.clients.node import PartnerNode, TrainOutcome
from fedcustomer.clients.round_audit import record_round
from fedcustomer.errors import IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.reach import HomeReach
from fedcustomer.privacy.audit.records import ACTION_FL_ROUND
from fedcustomer.privacy.audit.writer import AuditLog
from tests.clients.test_node import _global, _home, _ins

ROOT = Path(__file__).resolve().parents[2]


def _reach(home: PartnerHome) -> tuple[int, str, int]:
    with sqlite3.connect(f"file:{home.store_path}?mode=ro", uri=True) as con:
        seq, h, checkpoints = con.execute("SELECT seq, hash, checkpoints FROM audit_reach").fetchone()
    return int(seq), str(h), int(checkpoints)


def _verified(home: PartnerHome) -> list:
    log = AuditLog(home.audit_dir, reach=HomeReach.for_home(home))
    report = log.verify()
    assert report.ok, report
    return [e for e in log if e.action == ACTION_FL_ROUND]


def _outcome(partner: str = "bank_a", refused: str | None = None) -> TrainOutcome:
    return TrainOutcome(partner, None if refused else {}, {"epsilon-total": 0.1}, refused_reason=refused)


def _count_opens(monkeypatch) -> list[int]:
    opened: list[int] = []
    real = PartnerHome.open_audit_log

    def counting(self, reach=None):
        opened.append(1)
        return real(self, reach)

    monkeypatch.setattr(PartnerHome, "open_audit_log", counting)
    return opened


def test_a_job_opens_its_log_once_and_every_round_is_signed_and_reached(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path, 3.0)
    opened = _count_opens(monkeypatch)
    key = (str(home.root.resolve()), "r1")
    for rnd in (1, 2, 3):
        entry = record_round(home, _outcome(), _ins(rnd, planned=3))
        seq, h, _ = _reach(home)
        assert (seq, h) == (entry.seq, entry.hash)  # recorded before the reply leaves
        assert (key in audit_holds.HOLDS) == (rnd < 3)  # released after the last planned round
    assert len(opened) == 1
    rounds = _verified(home)
    assert [e.details["round"] for e in rounds] == [1, 2, 3]
    checkpoints = [line for line in (home.audit_dir / "checkpoints.jsonl").read_text().splitlines() if line]
    assert _reach(home)[2] == len(checkpoints)  # a checkpoint per round, each recorded


def test_a_refusal_releases_the_hold(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    key = (str(home.root.resolve()), "r1")
    record_round(home, _outcome(), _ins(1, planned=5))
    assert key in audit_holds.HOLDS
    record_round(home, _outcome(refused="budget spent"), _ins(2, planned=5))
    assert key not in audit_holds.HOLDS
    assert len(_verified(home)) == 2


def test_another_writer_between_rounds_extends_the_same_chain(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    record_round(home, _outcome(), _ins(1, planned=3))
    with home.open_audit_log() as other:  # e.g. a governed read by an analyst meanwhile
        other.append(actor="alice", role="analyst", action="read", dataset="toy", purpose="analytics")
    entry = record_round(home, _outcome(), _ins(2, planned=3))
    assert _reach(home)[:2] == (entry.seq, entry.hash)
    assert len(_verified(home)) == 2
    audit_holds.HOLDS.release(home, "r1")


def test_a_changed_partner_toml_or_replaced_log_opens_the_log_afresh(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path, 3.0)
    opened = _count_opens(monkeypatch)
    record_round(home, _outcome(), _ins(1, planned=4))
    anchors = tmp_path / "anchors-elsewhere.jsonl"
    config = home.config()
    config.anchor_file = str(anchors)
    home.write_config(config)  # a second location for checkpoints, added mid-job
    record_round(home, _outcome(), _ins(2, planned=4))
    assert len(opened) == 2 and anchors.exists()  # the new sink got this round's checkpoint
    record_round(home, _outcome(), _ins(3, planned=4))
    assert len(opened) == 2
    lock = home.audit_dir / "audit.lock"
    lock.unlink()  # a writer's lock file replaced: a held descriptor would lock the old one
    record_round(home, _outcome(), _ins(4, planned=4))
    assert len(opened) == 3
    assert len(_verified(home)) == 4


def test_a_failed_append_closes_the_hold_and_leaves_the_log_and_store_as_they_were(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    key = (str(home.root.resolve()), "r1")
    record_round(home, _outcome(), _ins(1, planned=3))
    log_before = (home.audit_dir / "audit.jsonl").read_bytes()
    reach_before = _reach(home)
    with (home.audit_dir / "audit.jsonl").open("ab") as fh:
        fh.write(b'{"torn":')  # a crash mid-line by another writer
    torn = (home.audit_dir / "audit.jsonl").read_bytes()
    with pytest.raises(IntegrityError, match="incomplete line"):
        record_round(home, _outcome(), _ins(2, planned=3))
    assert key not in audit_holds.HOLDS
    assert (home.audit_dir / "audit.jsonl").read_bytes() == torn  # nothing appended, nothing signed
    assert _reach(home) == reach_before
    (home.audit_dir / "audit.jsonl").write_bytes(log_before)
    assert len(_verified(home)) == 1


def test_a_failed_round_on_the_wire_releases_the_hold(tmp_path: Path) -> None:
    import json

    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

    from fedcustomer.apps.client import make_client_app
    from fedcustomer.server.inprocess import LocalGrid
    from tests.toy import SPEC

    home = _home(tmp_path, 3.0)
    key = (str(home.root.resolve()), "r1")
    record_round(home, _outcome(), _ins(1, planned=3))
    assert key in audit_holds.HOLDS
    config = {
        "run-id": "r1",
        "server-round": 2,
        "planned-rounds": 3,
        "task": "repayment",
        "arch": "logreg",
        "dataset": "no-such-dataset",  # the round fails inside the node (a product error)
        "feature-spec": json.dumps(SPEC.to_dict()),
    }
    grid = LocalGrid(make_client_app([str(home.root)]), 1)  # as the in-process coordinator sends it
    msg = Message(
        RecordDict({"arrays": ArrayRecord(_global()), "config": ConfigRecord(config)}),
        dst_node_id=1,
        message_type="train",
    )
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "no-such-dataset" in reply.error.reason
    assert key not in audit_holds.HOLDS
    assert len(_verified(home)) == 1


def test_a_forked_child_opens_its_own_log(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    holds = AuditHolds()
    with holds.log(home, "r1") as parent_log:
        parent_log.append(actor="node:bank_a", role="training_pipeline", action=ACTION_FL_ROUND, sign=True)
    pid = os.fork()
    if pid == 0:  # the child must not use (or close) the parent's descriptors and connection
        code = 1
        try:
            with holds.log(home, "r1") as child_log:
                child_log.append(
                    actor="node:bank_a", role="training_pipeline", action=ACTION_FL_ROUND, sign=True
                )
                code = 0 if child_log is not parent_log else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with holds.log(home, "r1") as again:
        assert again is parent_log
        entry = again.append(actor="node:bank_a", role="training_pipeline", action=ACTION_FL_ROUND, sign=True)
    assert _reach(home)[:2] == (entry.seq, entry.hash)
    holds.release(home, "r1")
    assert len(_verified(home)) == 3


def test_logs_held_past_the_idle_time_are_closed(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    holds = AuditHolds(idle_seconds=0.0)
    with holds.log(home, "r1"):
        pass
    assert (str(home.root.resolve()), "r1") in holds
    with holds.log(home, "r2"):  # any later use drops holds idle for too long (a job that stopped early)
        pass
    assert (str(home.root.resolve()), "r1") not in holds
    holds.release(home, "r2")


_KILLED_WHILE_HOLDING = """
import os, signal, sys
from fedcustomer.clients.node import PartnerNode
from fedcustomer.clients.round_audit import record_round
from fedcustomer.partner.home import PartnerHome
from tests.clients.test_node import _global, _ins

node = PartnerNode(PartnerHome(sys.argv[1]))
for rnd in (1, 2):
    ins = _ins(rnd, planned=5)
    record_round(node.home, node.train_round(_global(), ins), ins)
os.kill(os.getpid(), signal.SIGKILL)  # mid-job: the log, its reach connection and the ledger held
"""


def test_a_node_killed_while_holding_its_log_leaves_everything_verifiable(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_WHILE_HOLDING, str(home.root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert died.returncode == -9, died.stderr[-2000:]
    rounds = _verified(home)
    assert [e.details["round"] for e in rounds] == [1, 2]
    assert _reach(home)[:2] == (rounds[-1].seq, rounds[-1].hash)
    node = PartnerNode(home)  # the job goes on in a new process: round 3 charges and is recorded
    ins = _ins(3, planned=5)
    record_round(home, node.train_round(_global(), ins), ins)
    assert [e.details["round"] for e in _verified(home)] == [1, 2, 3]
    assert len(node.ledger("toy").charges()) == 3
    audit_holds.HOLDS.release(home, "r1")
