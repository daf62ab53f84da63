"""Every kind of change to the audit log's entries is named: edits, deletions, insertions, reordering,
truncation and malformed lines, down to any single byte."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcustomer.privacy.audit.records import CHECKPOINT_NAME, LOG_NAME, PUBLIC_KEY_NAME
from fedcustomer.privacy.audit.writer import AuditLog
from tests.privacy.audit.audit_log_helpers import as_line, lines, make_log, rehash, write_lines


# --- every kind of tampering is named ---------------------------------------------------------
def test_modified_body_names_the_entry(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100)
    ls = lines(log)
    ls[6] = ls[6].replace(b'"purpose":"credit_risk"', b'"purpose":"marketing__"')
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.ok, r.problem, r.first_bad_seq, r.line) == (False, "modified", 7, 7)
    assert "entry 7" in r.message


def test_modified_and_rehashed_entry_is_named_through_its_successor(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[4])
    d["actor"] = "someone-else"
    ls[4] = as_line(rehash(d))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("modified", 5, 5)


def test_rechained_modification_is_caught_by_the_signed_checkpoint(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    ls = [json.loads(x) for x in lines(log)]
    ls[13]["purpose"] = "marketing"
    prev = ls[12]["hash"]
    for d in ls[13:]:
        d["prev_hash"] = prev
        d.update(rehash(d))
        prev = d["hash"]
    write_lines(log.log_path, [as_line(d) for d in ls])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 11)
    assert "checkpoint #2" in r.message and "entries 11-20" in r.message


def test_rechained_change_after_last_checkpoint_is_a_documented_blind_spot(tmp_path: Path) -> None:
    log = make_log(tmp_path, 15, every=10, close=False)  # 11-15 not yet checkpointed
    ls = [json.loads(x) for x in lines(log)]
    ls[13]["purpose"] = "marketing"
    ls[13] = rehash(ls[13])
    ls[14]["prev_hash"] = ls[13]["hash"]
    ls[14] = rehash(ls[14])
    write_lines(log.log_path, [as_line(d) for d in ls])
    assert log.verify().ok
    assert "hash chain only" in log.verify().message


def test_deleted_entry_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    del ls[5]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("deleted", 6, 6)
    assert "entry 6 was deleted" in r.message


def test_several_deleted_entries_are_named_as_a_range(tmp_path: Path) -> None:
    log = make_log(tmp_path, 12, every=100, close=False)
    ls = lines(log)
    del ls[3:6]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("deleted", 4)
    assert "entries 4-6 were deleted" in r.message


def test_inserted_forged_entry_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    prev = json.loads(ls[4])
    forged = dict(json.loads(ls[5]), actor="ghost", prev_hash=prev["hash"])  # looks like entry 6
    ls.insert(5, as_line(rehash(forged)))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 6, 6)


def test_inserted_replayed_copy_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    ls.insert(7, ls[2])  # a copy of entry 3 after entry 7
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 3, 8)


def test_inserted_entry_that_the_chain_skips_is_named_not_the_genuine_one(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    first = json.loads(ls[0])
    forged = rehash(dict(first, actor="ghost"))  # a second "entry 1" placed before the real one
    ls.insert(0, as_line(forged))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 1, 1)


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    ls[3], ls[4] = ls[4], ls[3]
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("reordered", 4, 4)
    assert "line 4" in r.message and "entry 4 appears later, on line 5" in r.message


def test_truncation_past_a_checkpoint_is_detected(tmp_path: Path) -> None:
    log = make_log(tmp_path, 20, every=10)
    write_lines(log.log_path, lines(log)[:14])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("truncated", 15)
    assert "entries 15-20 were removed" in r.message


def test_truncation_to_empty_is_detected(tmp_path: Path) -> None:
    log = make_log(tmp_path, 5, every=10)
    log.log_path.write_bytes(b"")
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("truncated", 1)


def test_truncation_after_last_checkpoint_is_a_documented_blind_spot(tmp_path: Path) -> None:
    log = make_log(tmp_path, 15, every=10, close=False)
    write_lines(log.log_path, lines(log)[:12])
    assert log.verify().ok


def test_malformed_line_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 8, every=100, close=False)
    ls = lines(log)
    ls[2] = b"this is not json\n"
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("malformed", 3, 3)


def test_entry_with_a_missing_field_is_malformed(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[1])
    del d["purpose"]
    ls[1] = as_line(d)
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("malformed", 2)
    assert "purpose" in r.message


def test_missing_final_newline_is_malformed(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    log.log_path.write_bytes(log.log_path.read_bytes()[:-1])
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("malformed", 4)


def test_value_preserving_byte_edit_is_still_reported(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit")
    log.append(actor="a", role="r", action="fl_round", details={"delta": 1e-05})
    raw = log.log_path.read_bytes()
    assert b"1e-05" in raw
    log.log_path.write_bytes(raw.replace(b"1e-05", b"1E-05"))
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 1)


_TEMPLATE: dict[str, object] = {}


def _template() -> tuple[bytes, list[int]]:
    """A small log (built once) and the line number of every byte."""
    if not _TEMPLATE:
        with tempfile.TemporaryDirectory() as d:
            log = make_log(Path(d), 6, every=4)
            _TEMPLATE["raw"] = log.log_path.read_bytes()
            _TEMPLATE["cps"] = log.checkpoint_path.read_bytes()
            _TEMPLATE["pub"] = log.public_key_file.read_bytes()
    raw = _TEMPLATE["raw"]
    assert isinstance(raw, bytes)
    owners, line = [], 1
    for b in raw:
        owners.append(line)
        line += b == ord("\n")
    return raw, owners


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_edit_names_the_entry_holding_it(data: st.DataObject) -> None:
    raw, owners = _template()
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
    with tempfile.TemporaryDirectory() as d:
        audit = Path(d) / "audit"
        audit.mkdir()
        (audit / LOG_NAME).write_bytes(raw[:pos] + bytes([new]) + raw[pos + 1 :])
        (audit / CHECKPOINT_NAME).write_bytes(_TEMPLATE["cps"])  # type: ignore[arg-type]
        (audit / PUBLIC_KEY_NAME).write_bytes(_TEMPLATE["pub"])  # type: ignore[arg-type]
        r = AuditLog(audit).verify()
    assert not r.ok
    assert r.first_bad_seq == owners[pos], r.message
    assert r.problem in ("modified", "malformed")


def test_entry_moved_far_later_is_named_as_reordered(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    moved = ls.pop(2)  # entry 3 ...
    ls.insert(7, moved)  # ... now after entry 8
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("reordered", 3, 3)


def test_inserted_entry_with_an_odd_seq_is_named(tmp_path: Path) -> None:
    log = make_log(tmp_path, 10, every=100, close=False)
    ls = lines(log)
    forged = rehash(dict(json.loads(ls[5]), seq=99, prev_hash=json.loads(ls[4])["hash"]))
    ls.insert(5, as_line(forged))
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq, r.line) == ("inserted", 99, 6)


def test_rewritten_line_with_keys_out_of_canonical_order_is_modified(tmp_path: Path) -> None:
    log = make_log(tmp_path, 4, every=100, close=False)
    ls = lines(log)
    d = json.loads(ls[1])
    ls[1] = json.dumps(dict(reversed(list(d.items()))), separators=(",", ":")).encode() + b"\n"
    write_lines(log.log_path, ls)
    r = log.verify()
    assert (r.problem, r.first_bad_seq) == ("modified", 2) and "canonical" in r.message
