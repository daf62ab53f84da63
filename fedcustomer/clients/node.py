"""The partner node: trains and evaluates the global model on the partner's own data.

Everything that leaves goes through :meth:`PartnerNode.train_round` and
:meth:`PartnerNode.evaluate`. A training round releases only DP-SGD-trained weights,
and only after the partner's own ledger accepted the charge; the partner decides
its noise from its own budget, so the coordinator cannot ask it to spend more.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.errors import BudgetExhausted, DataError
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.accounting import epsilon as standalone_epsilon
from fedcustomer.privacy.dp.ledger import BudgetLedger

log = logging.getLogger(__name__)

# Dataset sizes are released coarsely (aggregation weights): rounded, so one customer
# more or less rarely changes them. They are not covered by the DP guarantee.
SIZE_GRANULARITY = 100


@dataclass
class TrainOutcome:
    """A round's result: weights to release, or a refusal with its reason."""

    partner: str
    state_dict: dict[str, torch.Tensor] | None
    metrics: dict[str, float]
    accounting: dict[str, Any] = field(default_factory=dict)
    refused_reason: str | None = None

    @property
    def refused(self) -> bool:
        return self.refused_reason is not None


class PartnerNode:
    """One partner's node, rooted at its home directory."""

    def __init__(self, home: PartnerHome) -> None:
        self.home = home
        self.config = home.config()
        self.name = self.config.name
        self.data = PartnerDataAccess(home, self.name)

    # --- training ----------------------------------------------------------------
    def ledger(self, dataset: str) -> BudgetLedger:
        return BudgetLedger(self.home.ledger_path, dataset, self.config.budget_for(dataset))

    def train_round(self, global_state: dict[str, torch.Tensor], ins: TrainInstructions) -> TrainOutcome:
        """Train one round locally; refuse instead of ever exceeding the budget."""
        charge_key = f"run:{ins.run_id}:round:{ins.round}"
        cached = self._cached_update(charge_key)
        ledger = self.ledger(ins.dataset) if ins.dp else None
        if ledger is not None and ledger.find(charge_key) is not None:
            if cached is not None:
                log.info("round %s already paid; re-sending the update released then", ins.round)
                return cached
            return self._refusal(
                ledger, "this round was already paid for and its update is gone; not re-spending"
            )

        frame = self.data.training_frame(ins.dataset, ins.spec, "train")
        X, y = ins.spec.transform(frame)
        if len(X) < 2:
            raise DataError(
                f"partner {self.name!r} has {len(X)} training rows for {ins.dataset!r}; need at least 2"
            )
        batch_size = min(ins.batch_size, len(X))
        model = build_model(ins.task, ins.arch, ins.spec.input_dim)
        model.load_state_dict(global_state)
        anchor = [p.detach().clone() for p in model.parameters()]
        Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

        if ledger is not None:
            steps_per_epoch = _steps_per_epoch(batch_size, len(X))
            round_steps = steps_per_epoch * ins.local_epochs
            sigma = self._noise_multiplier(ledger, ins, batch_size / len(X), round_steps)
            planned = GaussianSteps(sigma, batch_size / len(X), round_steps)
            projected = ledger.project_gaussian(planned)
            if projected.epsilon > ledger.budget.epsilon:
                ledger.record_refusal(
                    charge_key,
                    "dpsgd",
                    projected.epsilon,
                    f"round {ins.round} of run {ins.run_id} would exceed the target",
                )
                return self._refusal(
                    ledger,
                    f"round {ins.round} would bring epsilon to {projected.epsilon:.3f}, "
                    f"past this partner's target {ledger.budget.epsilon:g}",
                    projected=projected.epsilon,
                )
            from fedcustomer.privacy.dp.dpsgd import DPTrainer

            trainer = DPTrainer(
                model,
                Xt,
                yt,
                loss_for(ins.task),
                batch_size=batch_size,
                lr=ins.lr,
                noise_multiplier=sigma,
                max_grad_norm=ins.max_grad_norm,
                optimizer=ins.optimizer,
                clipping=ins.clipping,
                proximal_mu=ins.proximal_mu,
                anchor=anchor,
            )
        else:
            from fedcustomer.privacy.dp.dpsgd import PlainTrainer

            trainer = PlainTrainer(
                model,
                Xt,
                yt,
                loss_for(ins.task),
                batch_size=batch_size,
                lr=ins.lr,
                optimizer=ins.optimizer,
                proximal_mu=ins.proximal_mu,
                anchor=anchor,
                seed=_round_seed(ins, self.name),
            )
        steps = 0
        started = time.perf_counter()
        for _ in range(ins.local_epochs):
            stats = trainer.train_epoch()
            steps += stats.steps  # the loss stays here: it is computed on raw data without noise
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        metrics: dict[str, float] = {
            "num-examples": float(_coarse(len(X))),
            "unit-weight": 1.0,
            "refused": 0.0,
            "steps": float(steps),
            "train-seconds": time.perf_counter() - started,
        }
        accounting: dict[str, Any] = {"dp": ins.dp}
        if ledger is not None:
            spent_steps = GaussianSteps(sigma, batch_size / len(X), steps)
            self._cache_update(charge_key, state, metrics, {})  # survive a crash between charge and send
            try:
                charge = ledger.charge_gaussian(
                    charge_key,
                    spent_steps,
                    mechanism="dpsgd",
                    run_id=ins.run_id,
                    round=ins.round,
                    details={"partner": self.name, "epochs": ins.local_epochs, "batch_size": batch_size},
                )
            except BudgetExhausted as exc:  # a concurrent release (e.g. analytics) took the budget
                self._drop_cached(charge_key)
                return self._refusal(ledger, str(exc))
            metrics.update(
                {
                    "epsilon-round": float(standalone_epsilon([spent_steps], ledger.budget.delta)),
                    "epsilon-total": float(charge.epsilon_total),
                    "epsilon-target": float(ledger.budget.epsilon),
                    "delta": float(ledger.budget.delta),
                    "noise-multiplier": float(sigma),
                }
            )
            accounting = self.accounting_summary(ledger, sigma, batch_size / len(X), steps, ins.max_grad_norm)
            self._cache_update(charge_key, state, metrics, accounting)
        return TrainOutcome(self.name, state, metrics, accounting)

    def accounting_summary(
        self, ledger: BudgetLedger, sigma: float, sample_rate: float, steps: int, max_grad_norm: float
    ) -> dict[str, Any]:
        """The inputs anyone needs to recompute this partner's epsilon (see README, summary.json)."""
        state = ledger.accounting_state()
        return {
            "dp": True,
            "accountant": state["accountant"],
            "noise_multiplier": sigma,
            "sample_rate": sample_rate,
            "steps_per_round": steps,
            "delta": ledger.budget.delta,
            "max_grad_norm": max_grad_norm,
            "sampling": "poisson",
            "history": state["gaussian_history"],
            "approx_charges": state["approx_charges"],
        }

    def _noise_multiplier(
        self, ledger: BudgetLedger, ins: TrainInstructions, sample_rate: float, round_steps: int
    ) -> float:
        """Noise fixed per run at the partner's first round: remaining budget over remaining rounds."""
        path = self.home.state_dir / f"noise-{_safe(ins.run_id)}-{_safe(ins.dataset)}.json"
        if path.exists():
            return float(json.loads(path.read_text())["noise_multiplier"])
        remaining_rounds = max(1, ins.planned_rounds - ins.round + 1)
        sigma = ledger.calibrate_noise(
            sample_rate, round_steps * remaining_rounds, sigma_max=ins.max_noise_multiplier
        )
        _atomic_write(
            path,
            json.dumps({"noise_multiplier": sigma, "sample_rate": sample_rate, "round_steps": round_steps}),
        )
        return sigma

    def _refusal(self, ledger: BudgetLedger, reason: str, projected: float | None = None) -> TrainOutcome:
        spent = ledger.spent()
        metrics = {
            "num-examples": 0.0,
            "unit-weight": 1.0,
            "refused": 1.0,
            "epsilon-total": float(spent.epsilon),
            "epsilon-target": float(spent.epsilon_target),
            "delta": float(spent.delta_target),
        }
        if projected is not None:
            metrics["epsilon-projected"] = float(projected)
        log.warning("partner %s refuses: %s", self.name, reason)
        return TrainOutcome(self.name, None, metrics, {"dp": True}, refused_reason=reason)

    # --- evaluation ----------------------------------------------------------------
    def evaluate(self, global_state: dict[str, torch.Tensor], ins: TrainInstructions) -> dict[str, float]:
        """Metrics of the global model on this partner's held-out split (never used in training)."""
        frame = self.data.training_frame(ins.dataset, ins.spec, "test")
        X, y = ins.spec.transform(frame)
        model = build_model(ins.task, ins.arch, ins.spec.input_dim)
        model.load_state_dict(global_state)
        metrics = evaluate(model, X, y, ins.task)
        return {
            "num-examples": float(_coarse(len(X))),
            "unit-weight": 1.0,
            **{k: float(v) for k, v in metrics.items()},
        }

    # --- update cache (idempotent rounds across restarts) -------------------------
    def _cache_path(self, key: str) -> Path:
        return self.home.state_dir / "updates" / f"{_safe(key)}.pt"

    def _cache_update(
        self, key: str, state: dict[str, torch.Tensor], metrics: dict[str, float], accounting: dict[str, Any]
    ) -> None:
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"state": state, "metrics": metrics, "accounting": accounting, "partner": self.name}, tmp)
        os.replace(tmp, path)

    def _cached_update(self, key: str) -> TrainOutcome | None:
        path = self._cache_path(key)
        if not path.exists():
            return None
        blob = load_weights_only(path, "cached update")
        if not blob.get("accounting"):
            return None  # crashed before the charge: the update was never paid for, so never sent
        return TrainOutcome(blob["partner"], blob["state"], blob["metrics"], blob["accounting"])

    def _drop_cached(self, key: str) -> None:
        self._cache_path(key).unlink(missing_ok=True)


def _steps_per_epoch(batch_size: int, n: int) -> int:
    """Opacus's DPDataLoader takes int(1/q) Poisson batches per epoch."""
    return max(1, int(1 / (batch_size / n)))


def _coarse(n: int) -> int:
    return max(SIZE_GRANULARITY, int(round(n / SIZE_GRANULARITY)) * SIZE_GRANULARITY)


def _round_seed(ins: TrainInstructions, partner: str) -> int:
    return (ins.seed * 1_000_003 + ins.round * 7919 + sum(map(ord, partner))) % (2**31)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
