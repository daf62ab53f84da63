"""Attacks on a partner's audit log by someone who can write audit/: deletion, rollback of the log
and its checkpoints together, a forged chain without checkpoints, removed checkpoints, and a torn
last line; each is caught by verify and refused before any action."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.audit.reach import HomeReach
from fedcustomer.privacy.audit.records import (
    CHECKPOINT_NAME,
    GENESIS_HASH,
    LOG_NAME,
    PUBLIC_KEY_NAME,
    REPAIR_PENDING_NAME,
    VerifyReport,
    canonical_json,
    entry_hash,
)
from fedcustomer.privacy.audit.writer import AuditLog
from tests.cli.cli_runner import run
from tests.cli.identities import as_, use_passphrase
from tests.people import Person, people_home

ADMIN = Actor("alice", "partner_admin")


def _session(home: PartnerHome, customer: str) -> None:
    """One command's worth of work: open, erase a customer, close (which signs a checkpoint)."""
    with PartnerStore.open(home) as store:
        erase_customer(store, ADMIN, customer)


@pytest.fixture()
def home(tmp_path: Path) -> PartnerHome:
    h = PartnerHome(tmp_path / "bank")
    PartnerStore.init(h, "bank").close()
    for customer in ("C1", "C2", "C3"):
        _session(h, customer)
    return h


@pytest.fixture()
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PartnerHome, dict[str, Person]]:
    """A home with a people registry (what the CLI acts on), after three erasures by alice."""
    use_passphrase(monkeypatch)
    store, people = people_home(tmp_path, "bank")
    with store:
        for customer in ("C1", "C2", "C3"):
            erase_customer(store, people["alice"].signer, customer)
    return PartnerHome(tmp_path / "bank"), people


def _verify(home: PartnerHome) -> VerifyReport:
    pub = home.keys_dir / PUBLIC_KEY_NAME
    return AuditLog(home.audit_dir, public_key_path=pub, reach=HomeReach.for_home(home)).verify()


def _log(home: PartnerHome) -> Path:
    return home.audit_dir / LOG_NAME


def _checkpoints(home: PartnerHome) -> Path:
    return home.audit_dir / CHECKPOINT_NAME


def _erasures(home: PartnerHome) -> int:
    import sqlite3

    con = sqlite3.connect(home.store_path)
    try:
        return int(con.execute("SELECT COUNT(*) FROM erasures").fetchone()[0])
    finally:
        con.close()


def _assert_refused_before_acting(home: PartnerHome, match: str) -> None:
    erased = _erasures(home)
    with pytest.raises(IntegrityError, match=match):
        _session(home, "C9")
    assert _erasures(home) == erased


def test_intact_home_verifies(home: PartnerHome) -> None:
    r = _verify(home)
    assert r.ok and r.entries == 4 and r.checkpoints == 4


def test_deleting_log_and_checkpoints_is_caught(
    home: PartnerHome, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(home).unlink()
    _checkpoints(home).unlink()
    r = _verify(home)
    assert (r.ok, r.problem, r.first_bad_seq) == (False, "truncated", 1)
    assert "deleted or rolled back" in r.message and "store.db" in r.message
    code, out, _ = run(["audit", "verify", "--home", str(home.root)], capsys)
    assert code == 7 and "TAMPERED" in out
    _assert_refused_before_acting(home, "deleted or rolled back")


def test_deleting_the_log_of_a_home_without_store_is_caught(tmp_path: Path) -> None:
    h = PartnerHome.create(tmp_path / "node", "node")  # e.g. a node that only records federated rounds
    with AuditLog.open(h.audit_dir, keys_dir=h.keys_dir) as log:
        log.append(actor="node:n", role="training_pipeline", action="fl_round")
    _log(h).unlink()
    _checkpoints(h).unlink()
    r = _verify(h)
    assert (r.ok, r.problem) == (False, "truncated") and "signing key" in r.message


def test_rolling_back_log_and_checkpoints_together_is_caught(home: PartnerHome, tmp_path: Path) -> None:
    saved = tmp_path / "audit-copy"
    shutil.copytree(home.audit_dir, saved)
    _session(home, "C4")  # entry 5, checkpoint 5: what the rollback wants to hide
    for name in (LOG_NAME, CHECKPOINT_NAME):
        shutil.copy2(saved / name, home.audit_dir / name)
    assert AuditLog(home.audit_dir).verify().ok  # the files alone look intact
    r = _verify(home)
    assert (r.ok, r.problem, r.first_bad_seq) == (False, "truncated", 5)
    _assert_refused_before_acting(home, "deleted or rolled back")


def test_forged_chain_without_checkpoints_is_caught(home: PartnerHome) -> None:
    genuine = [json.loads(line) for line in _log(home).read_bytes().splitlines()]
    forged, prev = [], GENESIS_HASH
    for e in genuine:  # same shape, every erasure hidden behind a harmless action, chain recomputed
        body = {k: v for k, v in e.items() if k not in ("hash", "prev_hash")} | {
            "action": "read",
            "details": {},
        }
        h = entry_hash(prev, body)
        forged.append(canonical_json(body | {"prev_hash": prev, "hash": h}) + b"\n")
        prev = h
    _log(home).write_bytes(b"".join(forged))
    _checkpoints(home).unlink()
    assert AuditLog(home.audit_dir).verify().ok  # the chain alone checks out
    r = _verify(home)
    assert (r.ok, r.problem, r.first_bad_seq) == (False, "modified", 4) and "another chain" in r.message
    _assert_refused_before_acting(home, "replaced or rewritten")


def test_removing_the_last_checkpoints_is_caught(home: PartnerHome) -> None:
    lines = _checkpoints(home).read_bytes().splitlines(keepends=True)
    _checkpoints(home).write_bytes(b"".join(lines[:2]))
    r = _verify(home)
    assert (r.ok, r.problem) == (False, "deleted") and "checkpoints were removed" in r.message
    _assert_refused_before_acting(home, "checkpoints were removed")


# --- torn tail and repair ---------------------------------------------------------------------------
FRAGMENT = b'{"action":"erase","actor":"alice","approvals":[],"dat'


def _tear(home: PartnerHome) -> None:
    with open(_log(home), "ab") as f:
        f.write(FRAGMENT)  # a writer killed mid-append


def test_torn_tail_refuses_every_action_before_it_happens(home: PartnerHome) -> None:
    store = PartnerStore.open(home)  # a handle opened before the crash
    try:
        _tear(home)
        erased = _erasures(home)
        with pytest.raises(IntegrityError, match="incomplete line.*audit repair"):
            erase_customer(store, ADMIN, "C7")
        assert _erasures(home) == erased
    finally:
        store.close()
    _assert_refused_before_acting(home, "incomplete line")


def test_erase_command_on_a_torn_log_exits_7_before_erasing(
    signed: tuple[PartnerHome, dict[str, Person]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = signed
    _tear(home)
    erased = _erasures(home)
    code, _, err = run(
        [
            "erase",
            "--customer",
            "C8",
            "--home",
            str(home.root),
            *as_(people["alice"]),
            "--yes",
        ],
        capsys,
    )
    assert code == 7 and "incomplete line" in err and "audit repair" in " ".join(err.split())
    assert "Traceback" not in err and _erasures(home) == erased


def test_repair_cuts_only_the_torn_tail_and_records_it(
    signed: tuple[PartnerHome, dict[str, Person]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = signed
    _tear(home)
    before = _log(home).read_bytes()
    code, out, err = run(
        [
            "audit",
            "repair",
            "--home",
            str(home.root),
            *as_(people["alice"]),
            "--reason",
            "INC-42",
        ],
        capsys,
    )
    assert code == 0, out + err
    assert f"cut {len(FRAGMENT)} bytes" in " ".join(out.split())
    after = _log(home).read_bytes()
    assert after.startswith(before[: -len(FRAGMENT)])
    entry = json.loads(after.splitlines()[-1])
    assert entry["action"] == "audit_repair" and entry["actor"] == "alice" and entry["reason"] == "INC-42"
    assert entry["role"] == "partner_admin"  # from the registry
    assert base64.b64decode(entry["details"]["cut_base64"]) == FRAGMENT
    assert entry["details"]["cut_at_offset"] == len(before) - len(FRAGMENT)
    assert _verify(home).ok
    with PartnerStore.open(home) as store:  # the home works again
        erase_customer(store, people["alice"].signer, "C5")
    assert _verify(home).ok


def test_repair_refuses_a_role_without_keys(
    signed: tuple[PartnerHome, dict[str, Person]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = signed
    _tear(home)
    before = _log(home).read_bytes()
    code, _, err = run(["audit", "repair", "--home", str(home.root), *as_(people["dana"])], capsys)
    assert code == 5 and "keys" in err
    assert _log(home).read_bytes() == before


def test_repair_has_nothing_to_cut_in_a_complete_log(
    signed: tuple[PartnerHome, dict[str, Person]], capsys: pytest.CaptureFixture[str]
) -> None:
    home, people = signed
    code, _, err = run(["audit", "repair", "--home", str(home.root), *as_(people["alice"])], capsys)
    assert code == 3 and "nothing to repair" in err


def test_repair_cannot_cut_a_signed_entry_made_to_look_torn(home: PartnerHome) -> None:
    data = _log(home).read_bytes()
    _log(home).write_bytes(data[:-1])  # drop the final newline of the last, signed entry
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir, reach=HomeReach.for_home(home)) as log:
        with pytest.raises(IntegrityError, match="inside the range signed"):
            log.repair_torn_tail(actor="mallory", role="partner_admin")
    assert _log(home).read_bytes() == data[:-1]


def test_repair_cannot_cut_a_recorded_unsigned_entry(home: PartnerHome) -> None:
    store = PartnerStore.open(home)
    erase_customer(store, ADMIN, "C6")  # entry 5: recorded in store.db, not yet signed
    data = _log(home).read_bytes()
    _log(home).write_bytes(data[:-1])
    with pytest.raises(IntegrityError, match="damage besides"):
        store.audit.repair_torn_tail(actor="mallory", role="partner_admin")
    assert _log(home).read_bytes() == data[:-1]
    store.backend.close()


def test_repair_refuses_when_the_log_has_other_damage(home: PartnerHome) -> None:
    lines = _log(home).read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"alice"', b'"alicf"')
    _log(home).write_bytes(b"".join(lines) + FRAGMENT)
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir) as log:
        with pytest.raises(IntegrityError, match="damage besides"):
            log.repair_torn_tail(actor="alice", role="partner_admin")


def test_interrupted_repair_blocks_actions_and_is_finished_by_running_it_again(
    home: PartnerHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tear(home)
    original = AuditLog._append_locked

    def crash(self: AuditLog, rec: dict, *, repairing: bool = False) -> int:
        if repairing:
            raise OSError("killed")
        return original(self, rec, repairing=repairing)

    monkeypatch.setattr(AuditLog, "_append_locked", crash)
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir, reach=HomeReach.for_home(home))
    with pytest.raises(OSError):
        log.repair_torn_tail(actor="alice", role="partner_admin")
    monkeypatch.undo()
    assert not _log(home).read_bytes().endswith(FRAGMENT)  # cut, but saved in repair.pending
    _assert_refused_before_acting(home, "interrupted")
    entry = log.repair_torn_tail(actor="alice", role="partner_admin")
    log.close()
    assert base64.b64decode(entry.details["cut_base64"]) == FRAGMENT
    assert not (home.audit_dir / REPAIR_PENDING_NAME).exists()
    assert _verify(home).ok


# --- documented limits (docs/GOVERNANCE.md, threat model) -------------------------------------------
def test_limit_entries_appended_after_the_recorded_reach_still_verify(home: PartnerHome) -> None:
    last = json.loads(_log(home).read_bytes().splitlines()[-1])
    body = {k: v for k, v in last.items() if k not in ("hash", "prev_hash")} | {"seq": last["seq"] + 1}
    line = canonical_json(body | {"prev_hash": last["hash"], "hash": entry_hash(last["hash"], body)}) + b"\n"
    with open(_log(home), "ab") as f:
        f.write(line)  # adds a plausible entry; hides nothing
    assert _verify(home).ok


def test_limit_rolling_back_store_and_log_together_needs_an_off_node_head(
    home: PartnerHome, tmp_path: Path
) -> None:
    shutil.copytree(home.root, tmp_path / "copy")
    _session(home, "C4")
    head_after = AuditLog(home.audit_dir).head()
    for name in ("store.db", "store.db-wal", "store.db-shm", "audit"):  # someone who can write the whole home
        target = home.root / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        copy = tmp_path / "copy" / name
        if copy.exists():
            shutil.copytree(copy, target) if copy.is_dir() else shutil.copy2(copy, target)
    assert _verify(home).ok
    assert AuditLog(home.audit_dir).head() != head_after  # what an off-node copy of the head shows
