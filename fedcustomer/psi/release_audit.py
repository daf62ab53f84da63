"""A PSI's DP release (a noisy count, an intersection-sum) is paid from the ledger and logged with its spend.

Why: such a release spends the partner's budget as an analytics query does, but only the linkage read
was in the audit log, not the number released from it or what it cost. Each payment, re-send or
refusal now writes a ``psi_release`` entry (run id, session, kind, mechanism, the release's epsilon and
the partner's total after it, and the ledger key), so a compliance officer sees it beside the read and
``budget verify`` holds the ledger row against it (``partner.ledger_audit``). No id or value is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fedcustomer.errors import BudgetExhausted, FedCustomerError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.records import ACTION_PSI_RELEASE, DECISION_ALLOWED, DECISION_DENIED
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.release import Mechanism, PaidResults, Released, Step, check, release

R = TypeVar("R")
ROLE = "training_pipeline"  # the node's own pipeline, as for its linkage read
PURPOSE = "record_linkage"


def audited_release(
    home: PartnerHome,
    ledger: BudgetLedger,
    step: Step,
    results: PaidResults[R],
    produce: Callable[[], tuple[R, Mechanism]],
    *,
    kind: str,
) -> Released[R]:
    """:func:`~fedcustomer.privacy.dp.release.release`, then its ``psi_release`` entry.

    A refusal, or a product error in the release (a malformed answer), is logged ``denied`` with its
    reason and raised; nothing was charged. If the entry cannot be written after a payment, the
    error is raised and the paid result stays kept: asking again re-sends it and logs it then
    (``replayed``).
    """
    details = _names(step, kind)
    try:
        released = release(ledger, step, results, produce)
    except FedCustomerError as exc:  # a refusal, a malformed answer: nothing was charged or released
        _refused(home, ledger, exc, details)
        raise
    charge = released.charge
    details.update(
        mechanism=charge.mechanism,
        epsilon=charge.epsilon,
        delta=charge.delta,
        epsilon_total=charge.epsilon_total,
        epsilon_target=charge.epsilon_target,
        replayed=released.resent,
    )
    _append(home, ledger.dataset, DECISION_ALLOWED, None, details)
    return released


def audited_check(
    home: PartnerHome, ledger: BudgetLedger, step: Step, mechanism: Mechanism, *, kind: str
) -> None:
    """The budget check a session makes before any work; a refusal is logged ``denied`` and raised."""
    try:
        check(ledger, step, mechanism)
    except BudgetExhausted as exc:
        _refused(home, ledger, exc, _names(step, kind))
        raise


def _names(step: Step, kind: str) -> dict[str, Any]:
    """What names the release in its entry: run, session, kind and ledger key."""
    return {"run_id": step.run_id, "session": step.query_id, "kind": kind, "charge_key": step.charge_key}


def _refused(home: PartnerHome, ledger: BudgetLedger, exc: FedCustomerError, details: dict[str, Any]) -> None:
    _append(home, ledger.dataset, DECISION_DENIED, f"{type(exc).__name__}: {exc}", details)


def _append(
    home: PartnerHome, dataset: str, decision: str, reason: str | None, details: dict[str, Any]
) -> None:
    with home.open_audit_log() as audit:
        audit.append(
            actor=f"node:{home.config().name}",
            role=ROLE,
            action=ACTION_PSI_RELEASE,
            decision=decision,
            dataset=dataset,
            purpose=PURPOSE,
            reason=reason,
            details=details,
        )
