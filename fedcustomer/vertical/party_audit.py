"""A split-learning party's own audit trail: one entry per round it opens, one when it ends the job.

A horizontal partner logs each round it trains (:mod:`fedcustomer.clients.round_audit`). A
vertical party logs, in its own home's audit log:

- ``vertical_round``: once per round, when the round is first paid (allowed: the epsilon of the
  round and in total) or first refused (denied, with the budget's reason). The entry is written
  before anything of the round leaves, and a request re-sent by a restarted coordinator (or a
  restarted party, whose bookkeeping comes from disk) writes nothing more.
- ``vertical_finish``: when the party ends the job: where its final model part is kept (and
  its digest), the accounting summary, and the bytes of tensors it sent per round (embeddings,
  gradients, public batch positions; re-sends included). The bytes of a round are known only
  after it, so they are here rather than in the round's entry.

Each entry closes a signed checkpoint, so the anchor that leaves with the party's next reply
advances once per round. No customer id or value is logged: counts, epsilons and names only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.records import (
    ACTION_VERTICAL_FINISH,
    ACTION_VERTICAL_ROUND,
    DECISION_ALLOWED,
    DECISION_DENIED,
    AuditEntry,
)
from fedcustomer.vertical.spend import RoundDecision

ROLE = "training_pipeline"
PURPOSE = "training"
MAX_ROUNDS_LISTED = 200  # bytes per round are listed up to this many rounds (entries stay small)
_METRICS = (
    "epsilon-round",
    "epsilon-label",
    "epsilon-total",
    "epsilon-target",
    "epsilon-projected",
    "delta",
    "noise-multiplier",
)
_ACCOUNTING = ("accountant", "noise_multiplier", "sample_rate", "steps_per_round", "delta", "max_grad_norm")


class _Job(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def dp(self) -> bool: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def steps_per_round(self) -> int: ...


class PartyAudit:
    """One party's audit entries in one run; ``state()`` keeps what was logged, ``persist`` saves it."""

    def __init__(
        self,
        home: PartnerHome,
        name: str,
        cfg: _Job,
        state: Callable[[], dict[str, Any]],
        persist: Callable[[], None],
    ) -> None:
        self.home, self.name, self.cfg = home, name, cfg
        self._state, self._persist = state, persist
        self._book()  # now, so rounds paid before this bookkeeping existed count as logged

    def _book(self) -> dict[str, Any]:
        """The party's bookkeeping, with this module's keys (absent from states saved before them)."""
        state = self._state()
        state.setdefault("audited", [[r, DECISION_ALLOWED] for r in state.get("charged", [])])
        state.setdefault("released", {})
        state.setdefault("finish_audited", None)
        return state

    def round(self, rnd: int, decision: RoundDecision) -> AuditEntry | None:
        """Log the round's payment or refusal the first time it happens; None when already logged.

        The caller persists the state afterwards (a refusal is persisted here: nothing else is).
        """
        state = self._book()
        verdict = DECISION_ALLOWED if decision.ok else DECISION_DENIED
        if [str(rnd), verdict] in state["audited"]:
            return None
        details = self._base() | {"round": int(rnd), "refused": not decision.ok}
        details.update({"sample_rate": float(self.cfg.sample_rate), "steps": int(self.cfg.steps_per_round)})
        for key in _METRICS:
            if key in decision.metrics:
                details[key.replace("-", "_")] = float(decision.metrics[key])
        if decision.batches is not None:  # the label owner's public batches: how many, how many customers
            details["public_batches"] = len(decision.batches)
            details["public_batch_customers"] = int(sum(len(b) for b in decision.batches))
        entry = self._append(ACTION_VERTICAL_ROUND, verdict, decision.reason, details)
        state["audited"].append([str(rnd), verdict])
        if not decision.ok:
            self._persist()
        return entry

    def sent(self, rnd: int, kind: str, nbytes: int) -> None:
        """Count bytes of tensors the party sent in round ``rnd`` (saved with the caller's next persist)."""
        per_round = self._book()["released"].setdefault(str(rnd), {})
        per_round[kind] = int(per_round.get(kind, 0)) + int(nbytes)

    def finish(
        self, accounting: dict[str, Any], model: Path, spent: dict[str, float] | None = None
    ) -> AuditEntry | None:
        """Log the end of the job once; again only if the job went on since (a resumed, longer job)."""
        state = self._book()
        paid = sorted({int(r) for r in state.get("charged", [])})
        refused = sorted({int(r) for r, v in state["audited"] if v == DECISION_DENIED})
        released: dict[str, dict[str, int]] = state["released"]
        mark = json.dumps([paid, refused, released], sort_keys=True)
        if state["finish_audited"] == mark:
            return None
        details = self._base() | {"rounds_paid": paid, "rounds_refused": refused}
        details["model"] = {
            "file": model.relative_to(self.home.root).as_posix(),
            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        }
        details["accounting"] = _accounting_summary(accounting) | (spent or {})
        details["released_bytes"] = _released_summary(released)
        entry = self._append(ACTION_VERTICAL_FINISH, DECISION_ALLOWED, None, details)
        state["finish_audited"] = mark
        self._persist()
        return entry

    def _base(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"run_id": cfg.run_id, "vertical_role": cfg.role, "peer": cfg.peer, "dp": bool(cfg.dp)}

    def _append(self, action: str, decision: str, reason: str | None, details: dict[str, Any]) -> AuditEntry:
        home = self.home
        with home.open_audit_log() as audit:
            return audit.append(
                actor=f"node:{self.name}",
                role=ROLE,
                action=action,
                decision=decision,
                dataset=self.cfg.dataset,
                purpose=PURPOSE,
                reason=reason,
                details=details,
            )


def _accounting_summary(accounting: dict[str, Any]) -> dict[str, Any]:
    """What the party's accounting says, without the per-charge history (that is in its ledger)."""
    out = {k: accounting[k] for k in _ACCOUNTING if k in accounting}
    for key in ("label_dp", "embedding_noise"):
        if key in accounting:
            out[key] = accounting[key]
    return out


def _released_summary(released: dict[str, dict[str, int]]) -> dict[str, Any]:
    by_kind: dict[str, int] = {}
    for kinds in released.values():
        for kind, n in kinds.items():
            by_kind[kind] = by_kind.get(kind, 0) + int(n)
    out: dict[str, Any] = {"total": sum(by_kind.values()), "by_kind": by_kind}
    rounds = sorted(released, key=int)
    if len(rounds) <= MAX_ROUNDS_LISTED:
        out["by_round"] = {r: sum(int(n) for n in released[r].values()) for r in rounds}
    return out
