"""Anchors: a partner's signed checkpoints kept off the partner catch what its own admins can rewrite.

A whole-log rewrite re-signed with the node's own key, a cut back to an earlier checkpoint
(reach record moved along) and a replaced signing key all pass plain verification; each is
caught against the anchors the partner sent out.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.audit.anchor_check import AnchorReport, verify_anchors
from fedcustomer.privacy.audit.anchors import (
    ANCHOR_FORMAT,
    SYSLOG_TAG,
    Anchor,
    current_anchor,
    read_anchor_file,
    received_anchor,
)
from fedcustomer.privacy.audit.keys import load_public_key
from fedcustomer.privacy.audit.reach import HomeReach
from fedcustomer.privacy.audit.records import PUBLIC_KEY_NAME
from fedcustomer.privacy.audit.writer import AuditLog

from .log_rewrite import cut_back, replace_key, rewrite_and_resign

ADMIN = Actor("alice", "partner_admin")


def _session(home: PartnerHome, customer: str) -> None:
    """One command: open the store, erase a customer, close (which signs a checkpoint)."""
    with PartnerStore.open(home) as store:
        erase_customer(store, ADMIN, customer)


def _anchor(home: PartnerHome) -> Anchor:
    anchor = current_anchor(home.audit_dir, home.config().name, home.keys_dir / PUBLIC_KEY_NAME)
    assert anchor is not None
    return anchor


def _record(path: Path, home: PartnerHome, rnd: int) -> None:
    """What a coordinator does with the anchor in a reply: one anchors.jsonl line."""
    line = received_anchor(
        _anchor(home).to_json(), partner=home.config().name, run_id="r1", kind="round", round=rnd
    )
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@pytest.fixture()
def home(tmp_path: Path) -> PartnerHome:
    h = PartnerHome(tmp_path / "bank")
    PartnerStore.init(h, "bank").close()
    return h


@pytest.fixture()
def anchored(home: PartnerHome, tmp_path: Path) -> Path:
    """Three sessions, each followed by a reply carrying the anchor: a run's anchors.jsonl."""
    path = tmp_path / "run" / "anchors.jsonl"
    path.parent.mkdir()
    for rnd, customer in enumerate(("C1", "C2", "C3"), start=1):
        _session(home, customer)
        _record(path, home, rnd)
    return path


def _plain_verify(home: PartnerHome) -> bool:
    pub = home.keys_dir / PUBLIC_KEY_NAME
    return AuditLog(home.audit_dir, public_key_path=pub, reach=HomeReach.for_home(home)).verify().ok


def _check(home: PartnerHome, path: Path, partner: str = "bank") -> AnchorReport:
    trusted = load_public_key(home.keys_dir / PUBLIC_KEY_NAME)
    return verify_anchors(home.audit_dir, read_anchor_file(path), partner, trusted)


def test_anchor_is_small_self_verifying_and_reveals_no_entry_content(home: PartnerHome) -> None:
    _session(home, "C1")
    anchor = _anchor(home)
    text = anchor.to_json()
    assert len(text.encode()) < 1000
    assert anchor.problem() is None
    d = json.loads(text)
    assert d["format"] == ANCHOR_FORMAT and d["partner"] == "bank" and d["digest"] == anchor.digest
    assert anchor.entries == AuditLog(home.audit_dir).head()[0]  # covers every entry written so far
    assert Anchor.from_dict(d) == anchor
    assert set(d) == {"format", "partner", "key_id", "public_key", "checkpoint", "digest"}
    readable = json.dumps({**d, "public_key": "", "checkpoint": {**d["checkpoint"], "signature": ""}})
    for secret in ("alice", "partner_admin", "erase", "C1"):  # actor, role, action, the customer
        assert secret not in readable  # (base64 of a key or signature may spell anything)


def test_anchors_of_an_intact_log_verify(home: PartnerHome, anchored: Path) -> None:
    report = _check(home, anchored)
    assert report.ok, report.message
    newest = len(AuditLog(home.audit_dir).checkpoints())
    assert (report.checked, report.distinct, report.newest) == (3, 3, newest)


def test_whole_log_rewrite_with_the_nodes_own_key_is_caught_by_anchors(
    home: PartnerHome, anchored: Path
) -> None:
    def hide_first_erasure(entries: list[dict]) -> None:
        for e in entries:
            if e["action"] == "erase":
                e["actor"], e["reason"] = "system", "routine clean-up"
                return

    rewrite_and_resign(home, hide_first_erasure)
    assert _plain_verify(home)  # chain, signatures, reach: all consistent again
    report = _check(home, anchored)
    assert (report.ok, report.problem) == (False, "rewritten")
    assert report.anchor == "anchors.jsonl line 1 (run r1, round 1)"  # the first anchor it no longer matches
    assert "checkpoint #2 (entries 1-2)" in report.message and "re-signed" in report.message


def test_truncation_back_to_an_earlier_checkpoint_is_caught(home: PartnerHome, anchored: Path) -> None:
    numbers = [a.anchor.number for a in read_anchor_file(anchored) if a.anchor]
    cut_back(home, numbers[1] - 1)  # back to before round 2's checkpoint
    assert _plain_verify(home)
    report = _check(home, anchored)
    assert (report.ok, report.problem) == (False, "truncated")
    assert "round 2" in (report.anchor or "")
    assert f"holds only {numbers[1] - 1} signed checkpoints" in report.message


def test_replaced_signing_key_is_reported(home: PartnerHome, anchored: Path) -> None:
    replace_key(home)
    assert _plain_verify(home)
    report = _check(home, anchored)
    assert (report.ok, report.problem) == (False, "key-replaced")
    assert "signing key was replaced" in report.message


def test_anchors_of_other_partners_are_ignored_and_a_file_without_ours_is_refused(
    home: PartnerHome, anchored: Path, tmp_path: Path
) -> None:
    other = PartnerHome(tmp_path / "retail")
    PartnerStore.init(other, "retail").close()
    _session(other, "R1")
    _record(anchored, other, 1)
    report = _check(home, anchored)
    assert report.ok and report.ignored == 1 and report.checked == 3
    only_other = tmp_path / "other.jsonl"
    _record(only_other, other, 1)
    with pytest.raises(ConfigError, match="no anchor of partner 'bank'.*retail"):
        _check(home, only_other)


def test_an_anchor_sent_under_another_partners_name_is_refused(
    home: PartnerHome, anchored: Path, tmp_path: Path
) -> None:
    other = PartnerHome(tmp_path / "retail")
    PartnerStore.init(other, "retail").close()
    _session(other, "R1")
    line = received_anchor(_anchor(other).to_json(), partner="bank", run_id="r1", kind="round", round=4)
    assert "came from 'bank'" in line["problem"]
    with open(anchored, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    report = _check(home, anchored)
    assert (report.ok, report.problem) == (False, "invalid-anchor") and "came from 'bank'" in report.message


def test_altered_anchor_and_two_histories_are_reported(
    home: PartnerHome, anchored: Path, tmp_path: Path
) -> None:
    lines = anchored.read_text().splitlines()
    d = json.loads(lines[1])
    d["anchor"]["checkpoint"]["root"] = "0" * 64
    altered = tmp_path / "altered.jsonl"
    altered.write_text(json.dumps(d) + "\n")
    report = _check(home, altered)
    assert (report.ok, report.problem) == (False, "invalid-anchor")

    first = json.loads(lines[0])["anchor"]
    rewrite_and_resign(home, lambda es: es[0].update(actor="someone-else"))
    other_history = json.loads(_anchor(home).to_json())
    cp = AuditLog(home.audit_dir).checkpoints()[first["checkpoint"]["number"] - 1]
    other_history["checkpoint"], other_history["digest"] = cp.to_dict(), cp.digest()
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps(first) + "\n" + json.dumps(other_history) + "\n")
    report = _check(home, two)
    assert (report.ok, report.problem) == (False, "forked") and "two different histories" in report.message


def test_anchor_file_in_partner_toml_gets_every_checkpoint(home: PartnerHome, tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-volume" / "anchors.jsonl"
    elsewhere.parent.mkdir()
    config = home.config()
    config.anchor_file = str(elsewhere)
    home.write_config(config)
    assert home.config().anchor_file == str(elsewhere)  # the [audit] section survives a rewrite
    for customer in ("C1", "C2"):
        _session(home, customer)
    lines = read_anchor_file(elsewhere)
    assert [a.anchor.number for a in lines if a.anchor] == [
        c.number for c in AuditLog(home.audit_dir).checkpoints()
    ][-len(lines) :]
    assert len(lines) >= 2 and _check(home, elsewhere).ok
    rewrite_and_resign(home, lambda es: es[-1].update(reason="nothing to see"))
    assert not _check(home, elsewhere).ok


def test_unwritable_anchor_file_does_not_stop_the_action(home: PartnerHome, tmp_path: Path) -> None:
    config = home.config()
    config.anchor_file = str(tmp_path / "missing-volume" / "anchors.jsonl")
    home.write_config(config)
    _session(home, "C1")  # the entry is written and signed; the next anchor written covers it
    assert _plain_verify(home)


def test_anchors_go_to_syslog(home: PartnerHome) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    try:
        config = home.config()
        config.anchor_syslog = f"127.0.0.1:{receiver.getsockname()[1]}"
        home.write_config(config)
        assert home.config().anchor_syslog == config.anchor_syslog
        _session(home, "C1")
        message = receiver.recv(65536).decode("utf-8")
    finally:
        receiver.close()
    assert message.startswith("<")  # <PRI> as the syslog protocol frames it
    anchor = Anchor.from_dict(json.loads(message.split(f"{SYSLOG_TAG}: ", 1)[1].rstrip("\x00")))
    assert anchor.partner == "bank" and anchor.problem() is None


def test_bad_audit_section_is_a_clear_error(home: PartnerHome) -> None:
    home.config_path.write_text(home.config_path.read_text() + "\n[audit]\nanchor_file = 3\n")
    with pytest.raises(ConfigError, match=r"\[audit\] anchor_file"):
        home.config()


def test_coordinator_records_what_a_partner_sent_even_when_it_is_no_anchor(
    home: PartnerHome, tmp_path: Path
) -> None:
    for text, why in (("{}", "not an audit anchor"), ("x" * 5000, "more than an anchor's"), ("not json", "")):
        line = received_anchor(text, partner="bank", run_id="r1", kind="round", round=1)
        assert why in line["problem"]
    path = tmp_path / "anchors.jsonl"
    line = received_anchor("x" * 5000, partner="bank", run_id="r1", kind="round", round=1)
    path.write_text(json.dumps(line) + "\n")
    report = _check(home, path)
    assert (report.ok, report.problem) == (
        False,
        "invalid-anchor",
    ) and "more than an anchor's" in report.message
