"""What the store audits besides reads: failed ingests, the KEK of an interrupted rotation, policy edits."""

from __future__ import annotations

import pytest

from fedcustomer.data import key_admin
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_ingest import ChunkWriter
from fedcustomer.errors import SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import write_default_policy
from tests.data.store_fixtures import ADMIN, audit_entries, bank, home, store, write_csv
from tests.data.test_ingest import bank_frame


def test_failed_ingest_is_audited_without_values(tmp_path, store, bank):
    frame = bank_frame(5)
    path = write_csv(tmp_path, frame.drop(columns=["phone"]))
    with pytest.raises(SchemaError):
        store.ingest(ADMIN, bank, path)
    (entry,) = audit_entries(store, action="ingest")
    assert entry.decision == "denied" and entry.actor == "alice" and entry.dataset == "bank"
    assert entry.details == {"file": path.name, "outcome": "failed"} and "phone" in entry.reason
    assert not any(str(v) in entry.reason for v in frame["national_id"])


def test_unexpected_ingest_failure_is_audited_by_kind_only(tmp_path, store, bank, monkeypatch):
    def boom(self, *args, **kwargs):
        raise OverflowError("C0000001 value 99999999999999999999 too large")

    monkeypatch.setattr(ChunkWriter, "write", boom)
    with pytest.raises(OverflowError):
        store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(5)))
    (entry,) = audit_entries(store, action="ingest")
    assert entry.reason == "ingest failed: unexpected OverflowError"


def test_new_kek_of_an_interrupted_rotation_is_audited(tmp_path, store, bank, monkeypatch):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(5)))
    before = store.keyring.active_version()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while re-wrapping

    monkeypatch.setattr(key_admin, "rewrap", killed)
    with pytest.raises(KeyboardInterrupt):
        KeyAdmin(store).rotate(ADMIN)
    created = [e for e in audit_entries(store, action="key_create") if e.details.get("for") == "rotation"]
    assert [e.details["kek_version"] for e in created] == [before + 1]
    assert created[0].actor == "alice"


def test_policy_edit_is_audited_with_the_lines_changed(tmp_path):
    home = PartnerHome.create(tmp_path / "bank", "bank", policy_file="policy.csv")
    policy = write_default_policy(home.root / "policy.csv")
    PartnerStore.init(home, "bank").close()
    with PartnerStore.open(home) as s:
        assert audit_entries(s, action="policy_change") == []  # unchanged: nothing to record
    policy.write_text(policy.read_text() + "p2, data_scientist, erase\n")
    with PartnerStore.open(home) as s:
        (entry,) = audit_entries(s, action="policy_change")
    assert entry.details["added"] == ["p2, data_scientist, erase"] and entry.details["removed"] == []
    assert entry.details["policy_sha256"] != entry.details["previous_sha256"]
    with PartnerStore.open(home) as s:
        assert len(audit_entries(s, action="policy_change")) == 1  # recorded once
