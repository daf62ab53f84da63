"""The console's audit index: incremental, checked against the log, rebuilt when the log changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fedcustomer.console.audit_index import AuditIndex
from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.writer import AuditLog


def _log(tmp_path, n: int, start: int = 0) -> None:
    with AuditLog.open(tmp_path / "audit", keys_dir=tmp_path / "keys") as audit:
        for i in range(start, start + n):
            audit.append(
                actor=f"user{i % 3}",
                role="data_scientist" if i % 2 else "partner_admin",
                action="read",
                decision="denied" if i % 5 == 0 else "allowed",
                dataset="bank",
                fields=["age"] if i % 4 == 0 else ["region"],
                purpose="analytics",
            )


def test_pages_follow_filters_and_the_index_keeps_up(tmp_path) -> None:
    _log(tmp_path, 40)
    index = AuditIndex(tmp_path / "audit", tmp_path / "index.db")
    page = index.page({}, size=10)
    assert page.indexed == 40 and [e.seq for e in page.entries] == list(range(40, 30, -1))
    second = index.page({}, size=10, before=page.next_before)
    assert second.entries[0].seq == 30
    denied = index.page({"decision": "denied"}, size=100).entries
    assert denied and all(e.decision == "denied" for e in denied)
    both = index.page({"field": "age", "actor": "user0"}, size=100).entries
    assert both and all("age" in e.fields and e.actor == "user0" for e in both)
    _log(tmp_path, 5, start=40)
    assert index.page({}, size=1).indexed == 45
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="microseconds")
    assert index.page({}, since=future).entries == []
    assert len(index.page({}, until=future, size=100).entries) == 45


def test_a_rewritten_log_is_indexed_again_and_a_broken_chain_refused(tmp_path) -> None:
    _log(tmp_path, 10)
    index = AuditIndex(tmp_path / "audit", tmp_path / "index.db")
    assert index.update() == 10
    log = tmp_path / "audit" / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:6]))  # cut: the index no longer matches and starts over
    assert index.update() == 6
    tampered = (
        lines[:3] + [lines[3].replace(b'"user0"', b'"userX"').replace(b'"user1"', b'"userX"')] + lines[4:6]
    )
    log.write_bytes(b"".join(tampered[:3]))
    assert index.update() == 3
    log.write_bytes(b"".join(tampered[:3]) + lines[4])  # entry 4 after entry 3 is gone: the chain is broken
    with pytest.raises(IntegrityError, match="does not follow"):
        index.update()


def test_searches_ignore_case_and_width_as_audit_query_does(tmp_path) -> None:
    _log(tmp_path, 12)
    index = AuditIndex(tmp_path / "audit", tmp_path / "index.db")
    exact = [e.seq for e in index.page({"actor": "user1", "field": "region"}, size=100).entries]
    assert exact
    assert [e.seq for e in index.page({"actor": "USER1", "field": "Region"}, size=100).entries] == exact
    wide = "\uff35\uff33\uff25\uff32\uff11"  # "USER1" in full-width letters: NFKC makes it USER1
    assert [e.seq for e in index.page({"actor": wide}, size=100).entries] == [
        e.seq for e in index.page({"actor": "user1"}, size=100).entries
    ]
    assert index.page({"decision": "DENIED"}, size=100).entries
    assert "user1" in index.distinct("actor")  # suggestions keep the spelling of the log


def test_an_index_of_the_earlier_format_is_rebuilt_from_the_log(tmp_path) -> None:
    import sqlite3

    _log(tmp_path, 6)
    path = tmp_path / "index.db"
    con = sqlite3.connect(path)  # what format 1 held: no comparison keys, no format mark
    con.execute(
        "CREATE TABLE entries (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, "
        "role TEXT NOT NULL, action TEXT NOT NULL, decision TEXT NOT NULL, purpose TEXT, dataset TEXT, "
        "off INTEGER NOT NULL, len INTEGER NOT NULL, hash TEXT NOT NULL)"
    )
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('offset', '0')")
    con.commit()
    con.close()
    index = AuditIndex(tmp_path / "audit", path)
    assert index.update() == 6
    assert [e.actor for e in index.page({"actor": "User0"}, size=100).entries] == ["user0", "user0"]
    assert AuditIndex(tmp_path / "audit", path).update() == 6  # a current index is kept as it is
