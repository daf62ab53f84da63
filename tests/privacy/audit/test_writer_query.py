"""Queries over the audit log: filters combine, ignore case and width, time windows are inclusive."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.privacy.audit.records import ACTION_DECRYPT
from tests.privacy.audit.audit_log_helpers import make_log


# --- query --------------------------------------------------------------------------------------
def test_query_filters_combine(tmp_path: Path) -> None:
    log = make_log(tmp_path, 30, every=100)
    every = list(log)
    assert len(log.query()) == 30
    assert {e.actor for e in log.query(actor="analyst-1")} == {"analyst-1"}
    assert len(log.query(actor="analyst-1")) == sum(e.actor == "analyst-1" for e in every)
    assert [e.seq for e in log.query(field="phone")] == [e.seq for e in every if "phone" in e.fields]
    assert [e.seq for e in log.query(decision="denied")] == [5, 10, 15, 20, 25, 30]
    assert [e.seq for e in log.query(action="decrypt", role="compliance")] == [4, 8, 12, 16, 20, 24, 28]
    assert log.query(purpose="marketing") == []
    assert [e.seq for e in log.query(pseudonym="ps_000a")] == [10]
    assert log.query(dataset="loans", decision="denied", field="phone", actor="analyst-1") == [every[9]]


def test_a_customer_query_also_returns_entries_whose_customer_list_was_cut(tmp_path: Path) -> None:
    # A decrypt of 2,488 rows names only the first 1,000 customers; asking for the 1,500th found
    # nothing (found by a new-user trial). Such an entry may include the customer, so it is returned.
    log = make_log(tmp_path, 3, every=100, close=False)
    log.append(
        actor="rick",
        role="risk_officer",
        action=ACTION_DECRYPT,
        fields=("customer_id",),
        row_count=2488,
        pseudonyms=("ps_aaaa",),
        details={"pseudonyms_truncated": 2488},
    )
    log.close()
    assert [e.seq for e in log.query(pseudonym="ps_0002")] == [2, 4]
    assert [e.seq for e in log.query(pseudonym="ps_ffff")] == [4]
    assert [e.seq for e in log.query(pseudonym="ps_ffff", actor="analyst-1")] == []


def test_query_filters_ignore_case_and_width(tmp_path: Path) -> None:
    log = make_log(tmp_path, 30, every=100)
    for exact, typed in (
        ({"actor": "analyst-1"}, {"actor": "Analyst-1"}),
        ({"actor": "analyst-1"}, {"actor": "ＡＮＡＬＹＳＴ-1"}),  # fullwidth, as people's names are compared
        ({"decision": "denied"}, {"decision": "DENIED"}),
        ({"action": "decrypt", "role": "compliance"}, {"action": "Decrypt", "role": "COMPLIANCE"}),
        ({"field": "phone"}, {"field": "Phone"}),
        ({"pseudonym": "ps_000a"}, {"pseudonym": "PS_000A"}),
        ({"dataset": "loans"}, {"dataset": "Loans"}),
    ):
        want = [e.seq for e in log.query(**exact)]
        assert want and [e.seq for e in log.query(**typed)] == want, typed
    assert log.query(actor="analyst-") == []  # equality, not a prefix


def test_query_time_window_is_inclusive_and_naive_means_utc(tmp_path: Path) -> None:
    log = make_log(tmp_path, 5, every=100)
    es = list(log)
    t2, t4 = es[1].timestamp, es[3].timestamp
    assert [e.seq for e in log.query(since=t2, until=t4)] == [2, 3, 4]
    naive = t2.astimezone(UTC).replace(tzinfo=None)
    assert [e.seq for e in log.query(since=naive)] == [2, 3, 4, 5]
    assert log.query(since=t4 + timedelta(days=1)) == []
    with pytest.raises(ConfigError, match="after until"):
        log.query(since=t4, until=t2)
