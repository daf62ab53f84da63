"""`budget secagg-trust`: accepting the SecAgg+ trust assumption is a signed, audited governance action."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.signatures import check_entry_signatures
from fedcustomer.privacy.audit.writer import AuditLog

from .cli_runner import run
from .identities import as_, governed_home


@pytest.fixture
def bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return governed_home(tmp_path, monkeypatch)


def _argv(home: PartnerHome, person, decision: str, reason: str) -> list[str]:
    return ["budget", "secagg-trust", decision, "--home", str(home.root), *as_(person), "--reason", reason]


def _entries(home: PartnerHome) -> list:
    return [e for e in AuditLog(home.audit_dir) if e.action == "secagg_trust_set"]


def test_a_partner_admin_accepts_and_withdraws_the_assumption_on_the_record(bank, capsys) -> None:
    home, people = bank
    budget = ["budget", "set", "--home", str(home.root), *as_(people["alice"]), "--epsilon", "3"]
    assert run([*budget, "--delta", "1e-5"], capsys)[0] == 0
    code, out, err = run(_argv(home, people["alice"], "accept", "DPA 2026-14 review"), capsys)
    assert code == 0, err
    assert "charged against the coordinator" in out
    assert home.config().secagg_trust and "[secagg]\ntrust = true" in home.config_path.read_text()
    code, out, err = run(["budget", "show", "--home", str(home.root)], capsys)
    assert code == 0 and "SecAgg+ trust accepted" in out, err
    code, out, err = run(_argv(home, people["alice"], "withdraw", "coordinator changed"), capsys)
    assert code == 0 and "against a single update" in out, err
    assert not home.config().secagg_trust and "[secagg]" not in home.config_path.read_text()
    code, out, _ = run(["budget", "show", "--home", str(home.root), "--json"], capsys)
    assert code == 0 and json.loads(out)["secagg_trust"] is False
    accepted, withdrawn = _entries(home)
    assert (accepted.actor, accepted.decision) == ("alice", "allowed")
    decided = [({k: e.details[k] for k in ("trust", "previous")}, e.reason) for e in (accepted, withdrawn)]
    assert decided == [
        ({"trust": True, "previous": False}, "accept: DPA 2026-14 review"),
        ({"trust": False, "previous": True}, "withdraw: coordinator changed"),
    ]
    assert accepted.details["auth"]["request"]["extra"]["reason"] == "DPA 2026-14 review"  # signed
    assert accepted.details["auth"]["request"]["action"] == "secagg_trust_set"
    from fedcustomer.data.store import PartnerStore

    with PartnerStore.open(home) as store:  # both decisions are signed requests of a registered person
        report = check_entry_signatures(iter(AuditLog(home.audit_dir)), store.people)
    assert report.ok, report.problems


def test_someone_without_policy_edit_is_refused_and_nothing_changes(bank, capsys) -> None:
    home, people = bank
    before = home.config_path.read_text()
    code, _, err = run(_argv(home, people["dana"], "accept", "faster models"), capsys)
    assert code == 5 and "policy_edit" in err
    assert home.config_path.read_text() == before
    (denied,) = _entries(home)
    assert (denied.actor, denied.decision) == ("dana", "denied")


def test_a_decision_needs_a_reason_and_an_initialised_home(bank, tmp_path: Path, capsys) -> None:
    home, people = bank
    before = home.config_path.read_text()
    code, _, err = run(_argv(home, people["alice"], "accept", "  "), capsys)
    assert code == 3 and "--reason" in err and home.config_path.read_text() == before
    assert _entries(home) == []
    bare = PartnerHome.create(tmp_path / "bare", "bare")
    code, _, err = run(_argv(bare, people["alice"], "accept", "x"), capsys)
    assert code == 3 and "fedcustomer init" in err and not bare.config().secagg_trust


def test_an_unclear_or_oversized_decision_changes_nothing(bank, capsys) -> None:
    home, people = bank
    before = home.config_path.read_text()
    code, _, err = run(_argv(home, people["alice"], "maybe", "x"), capsys)
    assert code == 3 and "accept or withdraw" in err
    code, _, err = run(_argv(home, people["alice"], "accept", "x" * 501), capsys)
    assert code == 3 and "--reason is 501 characters" in err
    assert home.config_path.read_text() == before and _entries(home) == []


def test_the_same_decision_again_is_recorded_and_leaves_the_file_alone(bank, capsys) -> None:
    home, people = bank
    assert run(_argv(home, people["alice"], "accept", "review 1"), capsys)[0] == 0
    written = home.config_path.stat().st_mtime_ns, home.config_path.read_text()
    code, out, _ = run(_argv(home, people["alice"], "accept", "review 2"), capsys)
    assert code == 0 and "unchanged" in out
    assert (home.config_path.stat().st_mtime_ns, home.config_path.read_text()) == written
    assert [e.reason for e in _entries(home)] == ["accept: review 1", "accept: review 2"]


def test_a_decision_whose_audit_entry_cannot_be_written_puts_partner_toml_back(
    bank, capsys, monkeypatch
) -> None:
    from fedcustomer.data.store_core import StoreCore

    home, people = bank
    before = home.config_path.read_text()
    real_log = StoreCore.log

    def full_disk(self, actor, action, *args, **kw):
        if action == "secagg_trust_set" and not args:  # the allowed entry, not a refusal
            raise OSError(28, "No space left on device")
        return real_log(self, actor, action, *args, **kw)

    monkeypatch.setattr(StoreCore, "log", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(_argv(home, people["alice"], "accept", "review 1"), capsys)
    assert home.config_path.read_text() == before and not home.config().secagg_trust
    assert _entries(home) == []


def test_reading_an_unspent_budget_writes_nothing_and_a_file_is_not_a_home(
    bank, tmp_path: Path, capsys
) -> None:
    home, people = bank
    budget = ["budget", "set", "--home", str(home.root), *as_(people["alice"]), "--epsilon", "3"]
    assert run([*budget, "--delta", "1e-5"], capsys)[0] == 0
    code, out, err = run(["budget", "show", "--home", str(home.root), "--json"], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["totals"]["epsilon"] == 0.0 and shown["totals"]["epsilon_remaining"] == 3.0
    assert shown["datasets"] == [] and not home.ledger_path.exists()
    code, _, err = run(_argv(PartnerHome(home.config_path), people["alice"], "accept", "x"), capsys)
    assert code == 3 and "is a file" in err and "fedcustomer init" not in err
