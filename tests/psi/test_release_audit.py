"""A PSI's DP release is logged with its spend: paid, re-sent and refused; a cheaper rewrite of its row is caught."""

from __future__ import annotations

import sqlite3

import pytest

from fedcustomer.errors import BudgetExhausted
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_audit import check_ledger_against_audit, log_entries, psi_key
from fedcustomer.privacy.audit.records import ACTION_PSI_RELEASE
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.recompute import recompute
from fedcustomer.psi.noisy_count import release_count


def _entries(home: PartnerHome) -> list:
    with home.open_audit_log() as log:
        return list(log.query(action=ACTION_PSI_RELEASE))


def _count(home: PartnerHome, session: str, epsilon: float = 1.0) -> int | None:
    return release_count(
        home, "accounts", run_id="r1", session=session, size=120, epsilon=epsilon, publish=True
    )


def test_a_paid_count_a_resend_and_a_refusal_are_each_logged(tmp_path) -> None:
    home = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(1.5, 1e-5))
    first = _count(home, "s1")
    assert _count(home, "s1") == first  # re-sent: the same number, paid once
    with pytest.raises(BudgetExhausted):
        _count(home, "s2")  # 1.0 more would pass the target of 1.5
    paid, resent, refused = _entries(home)
    assert (paid.decision, paid.details["replayed"], paid.details["epsilon"]) == ("allowed", False, 1.0)
    assert paid.details["charge_key"] == psi_key("count", "r1", "s1") and paid.details["session"] == "s1"
    assert resent.decision == "allowed" and resent.details["replayed"] is True
    assert resent.details["epsilon_total"] == paid.details["epsilon_total"]
    assert refused.decision == "denied" and "BudgetExhausted" in (refused.reason or "")
    assert (
        refused.details["charge_key"] == psi_key("count", "r1", "s2")
        and "epsilon_total" not in refused.details
    )
    assert "120" not in str(paid.details)  # the exact size never leaves in an entry
    report = check_ledger_against_audit(home.ledger("-").all_charges(), log_entries(home.audit_dir))
    assert report.ok and report.checked_by_kind == {"psi_release": 1}


def test_a_count_row_rewritten_cheaper_is_caught(tmp_path) -> None:
    home = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(5.0, 1e-5))
    _count(home, "s1", epsilon=2.0)
    (row,) = home.ledger("accounts").charges()
    with sqlite3.connect(home.ledger_path) as conn:  # a self-consistent rewrite: 2.0 -> 0.5, total too
        conn.execute(
            "UPDATE charges SET epsilon = 0.5, epsilon_total = 0.5 WHERE charge_key = ?", (row.charge_key,)
        )
    charges = home.ledger("-").all_charges()
    assert all(r.ok for r in recompute(charges))  # the libraries alone cannot tell
    report = check_ledger_against_audit(charges, log_entries(home.audit_dir))
    assert [k for k, _ in report.disagreements] == [row.charge_key, row.charge_key]
    assert "release epsilon 0.5 in the ledger, 2.0 in audit entry" in report.disagreements[1][1]


def test_a_release_that_fails_is_logged_denied_and_charges_nothing(tmp_path) -> None:
    from fedcustomer.errors import IntegrityError
    from fedcustomer.psi.intersection_sum import Payer, pay_sum, sum_step

    home = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(5.0, 1e-5))
    payer = Payer(home, "accounts")

    def malformed() -> tuple[dict, object]:
        raise IntegrityError("the intersection-sum answer is malformed; run a new session")

    with pytest.raises(IntegrityError, match="malformed"):
        pay_sum(payer, payer.ledger(), sum_step("r1", "s9"), malformed)  # type: ignore[arg-type]
    (entry,) = _entries(home)
    assert entry.decision == "denied" and entry.reason.startswith(
        "IntegrityError: the intersection-sum answer"
    )
    assert entry.details["kind"] == "intersection_sum" and home.ledger("accounts").charges() == []
