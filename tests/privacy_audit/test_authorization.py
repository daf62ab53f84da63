"""Who asked for a privacy audit is authenticated and recorded in each home before its rows are read."""

import json
from pathlib import Path

import pytest

from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.query import read_entries
from fedcustomer.privacy_audit.authorization import AUDIT_ACTION, AuditAuthorizer
from fedcustomer.privacy_audit.run_audit import audit_training
from tests.people import people_home


def _entries(home: PartnerHome, action: str = AUDIT_ACTION) -> list:
    return [e for e in read_entries(home.audit_dir) if e.action == action]


def test_a_compliance_officer_is_checked_and_recorded_once_per_home(tmp_path: Path) -> None:
    store, people = people_home(tmp_path)
    home = store.home
    store.close()
    authorize = AuditAuthorizer(tmp_path / "run-7", people["carol"].signer)
    assert authorize(home) == "carol"
    assert authorize(home) == "carol"  # a second home's turn, or a re-read: nothing new is logged
    (entry,) = _entries(home)
    assert (entry.actor, entry.role, entry.decision) == ("carol", "compliance_officer", "allowed")
    assert entry.details["run"] == "run-7" and "auth" in entry.details  # the signed request goes with it


@pytest.mark.parametrize("who", [None, "dana"])
def test_an_unauthenticated_or_unentitled_asker_is_refused_and_logged(
    tmp_path: Path, who: str | None
) -> None:
    store, people = people_home(tmp_path)
    home = store.home
    store.close()
    signer = people[who].signer if who else None
    with pytest.raises(AccessDenied) as refused:
        AuditAuthorizer(tmp_path / "run", signer)(home)
    assert "--identity" in str(refused.value) if who is None else "audit_read" in str(refused.value)
    (entry,) = _entries(home)
    assert entry.decision == "denied"
    assert entry.actor == ("unauthenticated" if who is None else "dana")


def test_a_development_home_records_the_fixed_name_and_refuses_an_identity(tmp_path: Path) -> None:
    from fedcustomer.data.store import PartnerStore

    home = PartnerHome(tmp_path / "dev")
    PartnerStore.init(home, "dev").close()
    assert AuditAuthorizer(tmp_path / "run", None)(home) == "privacy-audit"
    assert [e.actor for e in _entries(home)] == ["privacy-audit"]
    _, people = people_home(tmp_path / "other")
    with pytest.raises(ConfigError, match="no people registry"):
        AuditAuthorizer(tmp_path / "run", people["carol"].signer)(home)


def test_one_refusing_home_stops_the_audit_before_any_row_is_read(tmp_path: Path) -> None:
    """carol is registered at the bank but not at the retailer: neither home's rows are read."""
    run = tmp_path / "run"
    homes = run / "partners"
    bank_store, people = people_home(homes, "bank")
    retailer_store, _ = people_home(tmp_path / "elsewhere", "retailer", cast={"alice": "partner_admin"})
    retailer_store.close()
    (homes / "retailer").symlink_to(retailer_store.home.root)
    bank_store.close()
    (run / "config.json").write_text(
        json.dumps({"task": "repayment", "arch": "mlp", "lr": 0.1, "batch_size": 16, "max_grad_norm": 1.0})
    )
    partner = {"rounds_trained": 1, "accounting": {"dp": True}}
    summary = {"dataset": "customers", "partners": [{"name": n, **partner} for n in ("bank", "retailer")]}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "model.pt").write_bytes(b"")
    (run / "feature_spec.json").write_text(
        json.dumps(
            {
                "task": "repayment",
                "label": "defaulted",
                "features": [{"type": "numeric", "name": "income", "lo": 0, "hi": 1}],
            }
        )
    )
    reads_before = len(list(read_entries(bank_store.home.audit_dir)))
    with pytest.raises(AccessDenied):
        audit_training(run, authorize=AuditAuthorizer(run, people["carol"].signer))
    bank_entries = list(read_entries(bank_store.home.audit_dir))[reads_before:]
    assert [(e.actor, e.action, e.decision) for e in bank_entries] == [("carol", AUDIT_ACTION, "allowed")]
    (denied,) = _entries(PartnerHome(retailer_store.home.root))
    assert denied.decision == "denied"
