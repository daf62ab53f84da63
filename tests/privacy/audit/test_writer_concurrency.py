"""Processes, forked children and threads appending to one audit log lose and interleave nothing."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

from fedcustomer.privacy.audit.records import SIGNING_KEY_NAME
from fedcustomer.privacy.audit.writer import AuditLog


# --- concurrency ------------------------------------------------------------------------------
def _worker(directory: str, keys: str, worker: int, n: int) -> None:
    log = AuditLog.open(Path(directory), keys_dir=Path(keys), checkpoint_every=100)
    for i in range(n):
        log.append(actor=f"w{worker}", role="trainer", action="fl_round", details={"i": i})
    log.close()


def test_four_processes_appending_lose_and_interleave_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys")  # create the key once
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path / "audit"), str(tmp_path / "keys"), w, 500))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # no wall-clock limit: load slows, it does not break (pytest-timeout catches a hang)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    log = AuditLog(tmp_path / "audit", signing_key_path=tmp_path / "keys" / SIGNING_KEY_NAME)
    report = log.verify()
    assert report.ok, report.message
    assert report.entries == 2000 and report.checkpoints >= 20
    entries = list(log)
    assert [e.seq for e in entries] == list(range(1, 2001))
    for w in range(4):
        assert [e.details["i"] for e in entries if e.actor == f"w{w}"] == list(range(500))


def test_forked_children_reopen_the_lock_instead_of_sharing_it(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=50)
    log.append(actor="parent", role="r", action="read")  # parent's descriptors exist before fork

    def child(w: int) -> None:
        for i in range(150):
            log.append(actor=f"c{w}", role="r", action="read", details={"i": i})

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=child, args=(w,)) for w in range(3)]
    for p in procs:
        p.start()
    for _ in range(150):
        log.append(actor="parent", role="r", action="read")
    for p in procs:
        p.join()  # no wall-clock limit: load slows, it does not break (pytest-timeout catches a hang)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    report = log.verify()
    assert report.ok, report.message
    assert report.entries == 601


def test_threads_sharing_one_log_lose_nothing(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=64)

    def run(w: int) -> None:
        for _ in range(100):
            log.append(actor=f"t{w}", role="r", action="query")

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok and report.entries == 400


def test_verify_during_concurrent_appends_sees_a_consistent_snapshot(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", checkpoint_every=25)
    stop = threading.Event()

    def writer() -> None:
        writer_log = AuditLog.open(tmp_path / "audit", checkpoint_every=25)
        while not stop.is_set():
            writer_log.append(actor="w", role="r", action="ingest", details={"pad": "x" * 200})

    t = threading.Thread(target=writer)
    t.start()
    try:
        while log.head()[0] < 50:
            stop.wait(0.001)
        reports = [log.verify() for _ in range(30)]
    finally:
        stop.set()
        t.join()
    assert all(r.ok for r in reports), [r.message for r in reports if not r.ok]
    assert reports[0].entries >= 50 and reports[-1].entries > reports[0].entries
