"""One audit entry per federated round a partner took part in, and one per evaluation.

A compliance officer reading a partner's audit log sees every round: which run,
which round, how many bytes of model update left, the epsilon spent, whether
the partner refused, and which audited store read the round trained on (a node reads
its rows once per job and re-uses them while the store is unchanged). Scoring the global
model on the partner's held-out customers is recorded the same way: the held-out read is
audited once under purpose ``evaluation``, and each round's ``fl_evaluate`` entry cites it
and names the metrics that left. No customer data is involved, so no pseudonyms are recorded.
"""

from __future__ import annotations

from typing import Any

import torch

from fedcustomer.clients import audit_holds, job_matrices
from fedcustomer.clients.node import TrainOutcome
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.models.metrics import RELIABILITY_PREFIX as RELIABILITY
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.records import (
    ACTION_FL_EVALUATE,
    ACTION_FL_ROUND,
    DECISION_ALLOWED,
    DECISION_DENIED,
    AuditEntry,
)

ROLE = "training_pipeline"
PURPOSE = "training"
EVALUATION_PURPOSE = "evaluation"


def update_size(state_dict: dict[str, torch.Tensor] | None) -> int:
    """Bytes of tensor payload an update carries (what leaves the partner, before framing)."""
    if not state_dict:
        return 0
    return int(sum(t.numel() * t.element_size() for t in state_dict.values()))


def record_round(
    home: PartnerHome,
    outcome: TrainOutcome,
    ins: TrainInstructions,
    update_bytes: int | None = None,
    *,
    transport: str = "plain",
) -> AuditEntry:
    """Append the ``fl_round`` entry for this round to the partner's audit log; returns it."""
    if update_bytes is None:
        update_bytes = update_size(outcome.state_dict)
    metrics = outcome.metrics
    details: dict[str, Any] = {
        "run_id": ins.run_id,
        "round": int(ins.round),
        "update_bytes": int(update_bytes),
        "refused": bool(outcome.refused),
        "dp": bool(ins.dp),
        "transport": transport,
    }
    use = job_matrices.take_use(str(home.root.resolve()), ins.run_id, int(ins.round))
    if use is not None:  # the governed read this round trained on (audited once, when it was read)
        details.update(use.audit_details())
    for key in ("epsilon-round", "epsilon-total", "epsilon-target", "noise-multiplier"):
        if key in metrics:
            details[key.replace("-", "_")] = float(metrics[key])
    with audit_holds.HOLDS.log(home, ins.run_id) as audit:  # held for the job's rounds
        entry = audit.append(
            actor=f"node:{outcome.partner}",
            role=ROLE,
            action=ACTION_FL_ROUND,
            decision=DECISION_DENIED if outcome.refused else DECISION_ALLOWED,
            dataset=ins.dataset,
            purpose=PURPOSE,
            reason=outcome.refused_reason,
            details=details,
            sign=True,  # the reply's anchor covers this entry; closing the log then has nothing to sign
        )
    if outcome.refused or int(ins.round) >= int(ins.planned_rounds):
        audit_holds.HOLDS.release(home, ins.run_id)  # the job's last round for this partner
    return entry


def release_log(home: PartnerHome, run_id: str) -> None:
    """Close the audit log held for this job (a failed round: the next one opens it afresh)."""
    audit_holds.HOLDS.release(home, run_id)


def record_evaluation(
    home: PartnerHome, partner: str, ins: TrainInstructions, metrics: dict[str, float]
) -> AuditEntry:
    """Append the ``fl_evaluate`` entry of this round's held-out metrics; returns it.

    Cites the held-out read the metrics were computed on (``data_read``; ``data_cached`` when the
    job's earlier read was re-used) and lists the metrics that leave with the reply (names and the
    coarse row count, not their values: those are in the job's run directory)."""
    details: dict[str, Any] = {
        "run_id": ins.run_id,
        "round": int(ins.round),
        "split": "test",
        "metrics": sorted(
            k for k in metrics if k not in ("num-examples", "unit-weight") and not k.startswith(RELIABILITY)
        ),
        "reliability_bins": sum(1 for k in metrics if k.startswith(f"{RELIABILITY}n-")),
        "rows_reported": int(metrics.get("num-examples", 0)),
    }
    use = job_matrices.take_use(str(home.root.resolve()), ins.run_id, int(ins.round), "test")
    if use is not None:
        details.update(use.audit_details())
    with audit_holds.HOLDS.log(home, ins.run_id) as audit:
        entry = audit.append(
            actor=f"node:{partner}",
            role=ROLE,
            action=ACTION_FL_EVALUATE,
            decision=DECISION_ALLOWED,
            dataset=ins.dataset,
            purpose=EVALUATION_PURPOSE,
            details=details,
            sign=True,  # the reply's anchor covers this entry
        )
    if int(ins.round) >= int(ins.planned_rounds):
        audit_holds.HOLDS.release(home, ins.run_id)
    return entry
