"""What the audit log accepts on append, and how it behaves after a crash or a change made outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustomer.errors import ConfigError, DataError, IntegrityError
from fedcustomer.privacy.audit.writer import AuditLog
from tests.privacy.audit.audit_log_helpers import lines, make_log, write_lines


# --- append validation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decision": "maybe"}, "decision"),
        ({"action": "Read Data"}, "lower-case"),
        ({"actor": ""}, "actor"),
        ({"fields": "income"}, "single string"),
        ({"row_count": -1}, "row_count"),
        ({"details": {"x": object()}}, "JSON-safe"),
        ({"details": {"x": float("nan")}}, "JSON-safe"),
        ({"details": {"blob": "x" * 10000}}, "under"),
    ],
)
def test_invalid_entry_is_refused_and_nothing_is_written(tmp_path: Path, kwargs: dict, match: str) -> None:
    log = AuditLog.open(tmp_path / "audit")
    log.append(actor="a", role="r", action="read")
    before = log.log_path.read_bytes()
    with pytest.raises(DataError, match=match):
        log.append(**{"actor": "a", "role": "r", "action": "read", **kwargs})
    assert log.log_path.read_bytes() == before


def test_card_number_is_refused_without_being_echoed(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    card = "4111 1111 1111 1111"
    for kwargs in ({"pseudonyms": ["ps_1", card]}, {"reason": f"customer {card} complained"}):
        with pytest.raises(DataError) as info:
            log.append(actor="a", role="r", action="read", **kwargs)
        assert card not in str(info.value) and card.replace(" ", "") not in str(info.value)
    assert not log.log_path.exists() or log.log_path.read_bytes() == b""


def test_hex_pseudonyms_and_numeric_details_are_accepted(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    e = log.append(
        actor="a",
        role="r",
        action="fl_round",
        pseudonyms=["9f86d081884c7d65"],
        details={"run_id": "20250101123045123", "round": 3, "epsilon": 0.5},
    )
    assert e.details["run_id"] == "20250101123045123"


def test_details_are_copied_so_later_mutation_does_not_change_the_entry(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    details = {"rounds": [1, 2]}
    e = log.append(actor="a", role="r", action="fl_round", details=details)
    details["rounds"].append(3)
    assert e.details == {"rounds": [1, 2]} and log.verify().ok


def test_append_to_a_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AuditLog.open"):
        AuditLog(tmp_path / "nowhere").append(actor="a", role="r", action="read")


def test_bad_checkpoint_every_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every"):
        AuditLog(tmp_path, checkpoint_every=0)


def test_durable_appends_verify(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit", durable=True)
    for _ in range(3):
        log.append(actor="a", role="r", action="erase", pseudonyms=["ps_9"])
    assert log.verify().ok and log.head()[0] == 3


# --- crash and outside changes --------------------------------------------------------------------
def test_torn_tail_stops_appends_and_checkpoints_until_repaired(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    with open(log.log_path, "ab") as f:
        f.write(b'{"action":"read","act')  # a writer crashed mid-line
    before = log.log_path.read_bytes()
    for attempt in (
        lambda: log.append(actor="a", role="r", action="read"),
        log.checkpoint,
        log.check_before_acting,
    ):
        with pytest.raises(IntegrityError, match="incomplete line.*audit repair"):
            attempt()
    log.close()  # never signs over the fragment
    assert log.log_path.read_bytes() == before and log.checkpoints() == []
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("malformed", 5, 5)


def test_append_refuses_to_extend_a_corrupt_last_entry(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3, every=100, close=False)
    ls = lines(log)
    ls[-1] = b"garbage\n"
    write_lines(log.log_path, ls)
    with pytest.raises(IntegrityError, match="refusing to append"):
        log.append(actor="a", role="r", action="read")


def test_head_follows_appends_from_other_handles(tmp_path: Path) -> None:
    one = AuditLog.open(tmp_path / "audit")
    two = AuditLog.open(tmp_path / "audit")
    one.append(actor="a", role="r", action="read")
    e = two.append(actor="b", role="r", action="read")
    assert e.seq == 2 and one.head() == (2, e.hash)
    assert one.append(actor="a", role="r", action="read").prev_hash == e.hash


def test_iterating_a_damaged_log_raises_integrity_error(tmp_path: Path) -> None:
    log = make_log(tmp_path, 3, every=100, close=False)
    ls = lines(log)
    ls[1] = b"{}\n"
    write_lines(log.log_path, ls)
    with pytest.raises(IntegrityError, match="line 2"):
        list(log)
