"""The partner node: trains and evaluates the global model on the partner's own data.

Everything that leaves goes through :meth:`PartnerNode.train_round` and
:meth:`PartnerNode.evaluate`. A training round releases only DP-SGD-trained weights,
and only after the partner's own ledger accepted the charge; the partner decides
its noise from its own budget, so the coordinator cannot ask it to spend more.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedcustomer.clients import job_matrices, ledger_holds
from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.errors import BudgetExhausted, ConfigError, DataError
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_keys import round_key
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.ledger import BudgetLedger, Charge
from fedcustomer.privacy.dp.ledger_file import WalHold
from fedcustomer.privacy.dp.release import (
    ChargedResults,
    Mechanism,
    PaidResults,
    Step,
    calibrate_noise,
    check,
    refusal_reason,
    release,
    safe_name,
)

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
    def ledger(self, dataset: str, hold: WalHold | None = None) -> BudgetLedger:
        return self.home.ledger(dataset, self.config.budget_for(dataset), hold=hold)

    def train_round(self, global_state: dict[str, torch.Tensor], ins: TrainInstructions) -> TrainOutcome:
        """Train one round locally and release it; refuse instead of ever exceeding the budget."""
        if not ins.dp:
            if not self.config.allow_non_private:
                return self._non_private_refused()
            return self._train(global_state, ins, *self._read(ins))
        held = (str(self.home.root.resolve()), ins.run_id)
        ledger = self.ledger(
            ins.dataset, ledger_holds.HOLDS.current(held)
        )  # a later round: on the job's hold
        step = round_step(ins.run_id, ins.round)
        if ins.dp_mode == "distributed":
            produce = lambda: self._distributed_step(global_state, ins, ledger, step)
        else:
            produce = lambda: self._train_dp(global_state, ins, ledger, step)
        ledger_holds.HOLDS.hold(held, ledger)  # the job's charges commit without a checkpoint each
        done = ins.round >= ins.planned_rounds
        try:
            released = release(
                ledger,
                step,
                # committed with its charge in one ledger transaction (settle reads only the charge);
                # updates kept as files by earlier versions are still re-sent for the rounds they paid
                ChargedResults(
                    ledger,
                    _UpdateCodec(),
                    earlier=PaidResults(self.home.state_dir / "updates", _UpdateCodec(), rewrite_paid=False),
                ),
                produce=produce,
                settle=lambda outcome, charge: self._settle(outcome, charge, ledger, ins),
            )
        except BudgetExhausted as exc:
            done = True
            return self._refusal(exc)
        except BaseException:
            done = True
            raise
        finally:
            if done:
                ledger_holds.HOLDS.release(held)
        if released.resent:
            log.info("round %s already paid; re-sending the update released then", ins.round)
        return released.result

    def _read(self, ins: TrainInstructions) -> tuple[torch.Tensor, torch.Tensor]:
        """The training matrix: read and decrypted once per job, re-read if the store changed."""
        return self._matrices(ins, "train")

    def _matrices(self, ins: TrainInstructions, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        def load() -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
            frame, read = self.data.training_read(ins.dataset, ins.spec, split, run_id=ins.run_id)
            X, y = ins.spec.transform(frame)
            if split == "train" and len(X) < 2:
                raise DataError(
                    f"partner {self.name!r} has {len(X)} training rows for {ins.dataset!r}; need at least 2"
                )
            return torch.as_tensor(X), torch.as_tensor(y), read

        key = job_matrices.CACHE.key(
            str(self.home.root.resolve()), ins.run_id, ins.dataset, split, ins.spec.to_dict()
        )
        stamp = self.data.source_stamp(ins.dataset)  # before the read: a change racing it shows next round
        last = ins.round >= ins.planned_rounds
        X, y, _ = job_matrices.CACHE.get(key, stamp, load, round_=ins.round, last=last)
        return X, y

    def _train_dp(
        self, global_state: dict[str, torch.Tensor], ins: TrainInstructions, ledger: BudgetLedger, step: Step
    ) -> tuple[TrainOutcome, Mechanism]:
        """Read, fix the noise from the remaining budget, refuse past the target, then train."""
        Xt, yt = self._read(ins)
        q = released_sample_rate(min(ins.batch_size, len(Xt)), len(Xt))
        round_steps = int(1 / q) * ins.local_epochs
        # the run keeps the noise of its first charge; a run begun by an earlier version kept it in this file
        pin = self.home.state_dir / f"noise-{safe_name(ins.run_id)}-{safe_name(ins.dataset)}.json"
        sigma = calibrate_noise(
            ledger,
            q,
            round_steps,
            ins.planned_rounds - ins.round + 1,
            sigma_max=ins.max_noise_multiplier,
            pin=pin,
            run=(ins.run_id, "dpsgd"),
        )
        check(ledger, step, Mechanism("dpsgd", gaussian=GaussianSteps(sigma, q, round_steps)))
        outcome = self._train(global_state, ins, Xt, yt, sigma, q)
        details = {
            "partner": self.name,
            "epochs": ins.local_epochs,
            "batch_size": min(ins.batch_size, len(Xt)),
        }
        steps = GaussianSteps(sigma, q, int(outcome.metrics["steps"]))
        return outcome, Mechanism("dpsgd", gaussian=steps, details=details)

    def distributed_job_refusal(self, dataset: str, plan: Any, run_id: str, rounds: range) -> str | None:
        """Why this partner would refuse ``rounds`` of distributed run ``run_id`` (None: they fit its budget).

        The charge those rounds would make (the guarantee its config trusts, composed with
        everything its ledger holds; a round of the run it already paid for is not paid again);
        nothing is charged or recorded. The coordinator asks before its first round, so a job that
        too few partners would accept stops with their reasons up front.
        """
        from dataclasses import replace

        plan = replace(plan, trust_secagg=self.config.secagg_trust)
        ledger = self.ledger(dataset)
        unpaid = sum(1 for r in rounds if ledger.find(round_step(run_id, r).charge_key) is None)
        if unpaid == 0:
            return None
        one = plan.charged_steps()
        spend = ledger.project(
            [GaussianSteps(one.noise_multiplier, one.sample_rate, unpaid)],
            extra_events=unpaid * plan.charged_event_probability(),
        )
        if spend.epsilon <= ledger.budget.epsilon:
            return None
        why = (
            "it trusts SecAgg+ and is charged the guarantee against the coordinator"
            if plan.trust_secagg
            else "it does not trust SecAgg+ ([secagg] trust = false in partner.toml), so it is charged the "
            "weaker guarantee against a single update"
        )
        label = f"{unpaid} distributed round(s) of run {run_id}"
        return f"partner {self.name!r}: {refusal_reason(label, spend.epsilon, ledger.budget.epsilon)}: {why}"

    def _distributed_step(
        self, global_state: dict[str, torch.Tensor], ins: TrainInstructions, ledger: BudgetLedger, step: Step
    ) -> tuple[TrainOutcome, Mechanism]:
        """One DP-SGD step's share: the clipped gradient sum of a Poisson sample plus this partner's noise share.

        Refused before anything is computed when the charge (the guarantee this partner's config
        trusts, see privacy/dp/distributed.py) would pass its target, or when the secure sum's
        clip range is too small for its rows (clipping would bias the sum and weaken the guarantee).
        """
        from fedcustomer.privacy.dp import distributed as dd
        from fedcustomer.privacy.dp.dpsgd import secure_generator

        if (
            ins.noise_multiplier <= 0
            or ins.min_survivors < 1
            or ins.secagg_shares < ins.min_survivors
            or ins.secagg_clip_range <= 0
        ):
            raise ConfigError(
                "a distributed DP round needs the coordinator's noise multiplier, minimum survivors, "
                "partners per sum and secure-sum clip range: it runs only under SecAgg+"
            )
        plan = dd.DistributedStep(
            ins.noise_multiplier,
            ins.sample_rate,
            ins.max_grad_norm,
            ins.min_survivors,
            trust_secagg=self.config.secagg_trust,
            shares=ins.secagg_shares,
        )
        Xt, yt = self._read(ins)
        model = build_model(ins.task, ins.arch, ins.spec.input_dim)
        model.load_state_dict(global_state)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        coordinates = sum(p.numel() for p in model.parameters() if p.requires_grad)
        needed = dd.required_clip_range(plan, len(Xt), coordinates)
        if needed > ins.secagg_clip_range:
            raise ConfigError(
                f"the secure sum's clip range {ins.secagg_clip_range:g} is too small for partner {self.name!r}'s "
                f"batches at sample rate {plan.sample_rate:g} and clip norm {plan.max_grad_norm:g}, or for its "
                f"row count in hundreds (needs {needed:.4g}); raise secagg-clip-range"
            )
        # both guarantees with this partner's own accountant: the one its ledger charges with
        eps_a, eps_b = dd.both_epsilons(
            ledger.all_charges(), ledger.budget.delta, extra=plan, accountant=ledger.accountant
        )
        details = {
            **plan.details(),
            "accountant": ledger.accountant.name,
            "partner": self.name,
            "epsilon_total_coordinator": eps_a,
            "epsilon_total_single_update": eps_b,
            "secagg_clip_range": ins.secagg_clip_range,
        }
        mechanism = Mechanism(
            dd.MECHANISM,
            gaussian=plan.charged_steps(),
            details=details,
            event_probability=plan.charged_event_probability(),
        )
        check(ledger, step, mechanism)
        started = time.perf_counter()
        generator = secure_generator()
        sums, _batch = dd.clipped_gradient_sum(model, loss_for(ins.task, ins.clv), Xt, yt, plan, generator)
        noised = dd.add_noise_share(sums, plan, generator)  # the batch size stays here: it is not released
        metrics: dict[str, float] = {
            "num-examples": float(_coarse(len(Xt))),
            "unit-weight": 1.0,
            "refused": 0.0,
            "steps": 1.0,
            "train-seconds": time.perf_counter() - started,
        }
        return TrainOutcome(self.name, dict(zip(trainable, noised)), metrics, {}), mechanism

    def _train(
        self,
        global_state: dict[str, torch.Tensor],
        ins: TrainInstructions,
        Xt: torch.Tensor,
        yt: torch.Tensor,
        sigma: float | None = None,
        sample_rate: float | None = None,
    ) -> TrainOutcome:
        """Local epochs from the global model: DP-SGD with noise ``sigma`` at the Poisson rate
        ``sample_rate`` (the one charged), or plain SGD without DP."""
        batch_size = min(ins.batch_size, len(Xt))
        model = build_model(ins.task, ins.arch, ins.spec.input_dim)
        model.load_state_dict(global_state)
        anchor = [p.detach().clone() for p in model.parameters()]
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "lr": ins.lr,
            "optimizer": ins.optimizer,
            "proximal_mu": ins.proximal_mu,
        }
        if sigma is not None:
            from fedcustomer.privacy.dp.dpsgd import DPTrainer

            trainer: Any = DPTrainer(
                model,
                Xt,
                yt,
                loss_for(ins.task, ins.clv),
                noise_multiplier=sigma,
                max_grad_norm=ins.max_grad_norm,
                clipping=ins.clipping,
                anchor=anchor,
                sample_rate=sample_rate,
                **common,
            )
        else:
            from fedcustomer.privacy.dp.dpsgd import PlainTrainer

            trainer = PlainTrainer(
                model,
                Xt,
                yt,
                loss_for(ins.task, ins.clv),
                anchor=anchor,
                seed=_round_seed(ins, self.name),
                **common,
            )
        steps = 0
        started = time.perf_counter()
        for _ in range(ins.local_epochs):
            stats = trainer.train_epoch()
            steps += stats.steps  # the loss stays here: it is computed on raw data without noise
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        metrics: dict[str, float] = {
            "num-examples": float(_coarse(len(Xt))),
            "unit-weight": 1.0,
            "refused": 0.0,
            "steps": float(steps),
            "train-seconds": time.perf_counter() - started,
        }
        return TrainOutcome(self.name, state, metrics, {"dp": ins.dp} if sigma is None else {})

    def _settle(
        self, outcome: TrainOutcome, charge: Charge, ledger: BudgetLedger, ins: TrainInstructions
    ) -> TrainOutcome:
        """The paid update: its spend (read from the ledger row that paid it) joins metrics and accounting."""
        sigma, q, steps = (
            float(charge.noise_multiplier or 0.0),
            float(charge.sample_rate or 0.0),
            charge.steps,
        )
        metrics = dict(outcome.metrics)
        metrics.update(
            {
                "epsilon-round": float(charge.epsilon or 0.0),
                "epsilon-total": float(charge.epsilon_total),
                "epsilon-target": float(ledger.budget.epsilon),
                "delta": float(ledger.budget.delta),
                "noise-multiplier": sigma,
            }
        )
        accounting = self.accounting_summary(
            ledger, sigma, q, int(steps or 0), ins.max_grad_norm, through_seq=charge.seq
        )
        if charge.details.get("dp_mode") == "distributed":  # both guarantees, as the ledger row holds them
            eps_a = float(charge.details["epsilon_total_coordinator"])
            eps_b = float(charge.details["epsilon_total_single_update"])
            metrics.update({"epsilon-coordinator-total": eps_a, "epsilon-single-update-total": eps_b})
            accounting.update(
                {
                    "dp_mode": "distributed",
                    "epsilon_coordinator": eps_a,
                    "epsilon_single_update": eps_b,
                    "charged": charge.details["charged"],
                    "noise_multiplier_coordinator": charge.details["noise_multiplier_coordinator"],
                    "noise_multiplier_single_update": charge.details["noise_multiplier_single_update"],
                    "min_survivors": charge.details["min_survivors"],
                }
            )
        return TrainOutcome(outcome.partner, outcome.state_dict, metrics, accounting)

    def accounting_summary(
        self,
        ledger: BudgetLedger,
        sigma: float,
        sample_rate: float,
        steps: int,
        max_grad_norm: float,
        through_seq: int | None = None,
    ) -> dict[str, Any]:
        """The inputs anyone needs to recompute this partner's epsilon (see README, summary.json);
        ``through_seq``: as the ledger stood when that charge was paid (a re-sent round reports the same)."""
        state = ledger.accounting_state(through_seq)
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
            # PLD: the grid its losses were rounded up onto, needed to recompute the same figure
            **{k: state[k] for k in ("value_discretization_interval",) if k in state},
        }

    def _refusal(self, refused: BudgetExhausted) -> TrainOutcome:
        spent = refused.spend
        metrics = {
            "num-examples": 0.0,
            "unit-weight": 1.0,
            "refused": 1.0,
            "epsilon-total": float(spent.epsilon),
            "epsilon-target": float(spent.epsilon_target),
            "delta": float(spent.delta_target),
        }
        if refused.projected is not None:
            metrics["epsilon-projected"] = float(refused.projected)
        log.warning("partner %s refuses: %s", self.name, refused.reason)
        return TrainOutcome(self.name, None, metrics, {"dp": True}, refused_reason=refused.reason)

    def _non_private_refused(self) -> TrainOutcome:
        """A round without DP has no epsilon bound: only a partner that opted in trains one."""
        reason = (
            f"partner {self.name!r} does not train without differential privacy: its partner.toml does not "
            "allow it ([training] allow_non_private = true), and a non-private update has no epsilon bound"
        )
        log.warning("partner %s refuses: %s", self.name, reason)
        metrics = {"num-examples": 0.0, "unit-weight": 1.0, "refused": 1.0}
        return TrainOutcome(self.name, None, metrics, {"dp": False}, refused_reason=reason)

    # --- evaluation ----------------------------------------------------------------
    def evaluate(self, global_state: dict[str, torch.Tensor], ins: TrainInstructions) -> dict[str, float]:
        """Metrics of the global model on this partner's held-out split (never used in training)."""
        X, y = self._matrices(ins, "test")
        model = build_model(ins.task, ins.arch, ins.spec.input_dim)
        model.load_state_dict(global_state)
        metrics = evaluate(model, X.numpy(), y.numpy(), ins.task, ins.clv, reliability=True)
        return {
            "num-examples": float(_coarse(len(X))),
            "unit-weight": 1.0,
            **{k: float(v) for k, v in metrics.items()},
        }


class _UpdateCodec:
    """A kept update: plain tensors and numbers (loaded weights-only), in the ledger row of its charge.

    Kept without accounting; the charge it was committed with is what makes it paid. Updates
    kept as files by earlier versions (``state/updates/``) are read back for the rounds they
    paid: one written before its charge is settled from it, one rewritten after its charge with
    its accounting is paid as it stands.
    """

    suffix = ".pt"

    def dumps(self, result: TrainOutcome) -> bytes:
        blob = {
            "state": result.state_dict,
            "metrics": result.metrics,
            "accounting": {},
            "partner": result.partner,
        }
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        return buffer.getvalue()

    def loads(self, data: bytes, what: str) -> TrainOutcome:
        return self._outcome(load_weights_only(data, what))[0]

    def dump(self, path: Path, result: TrainOutcome, paid: bool) -> None:
        blob = {
            "state": result.state_dict,
            "metrics": result.metrics,
            "accounting": result.accounting if paid else {},
            "partner": result.partner,
        }
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, path: Path) -> tuple[TrainOutcome, bool]:
        return self._outcome(load_weights_only(path, "cached update"))

    @staticmethod
    def _outcome(blob: dict[str, Any]) -> tuple[TrainOutcome, bool]:
        outcome = TrainOutcome(blob["partner"], blob["state"], blob["metrics"], blob["accounting"])
        return outcome, bool(blob.get("accounting"))


def round_step(run_id: str, round_: int) -> Step:
    """A training round's release: its ledger key (paid once per run and round) and its name in reasons."""
    return Step(round_key(run_id, round_), f"round {round_}", run_id, round_)


def released_sample_rate(batch_size: int, n: int) -> float:
    """The Poisson rate a partner trains with: the batch over its row count *as reported* (rounded to
    SIZE_GRANULARITY, see :func:`_coarse`), not over the exact count.

    The rate leaves with the update's accounting (summary.json recomputes epsilon from it), so
    ``batch / n`` would tell the coordinator the exact number of training rows, which the docs
    promise leaves only rounded. Any rate is sound for DP-SGD as long as the sampling and the
    charge use the same one; this one is at most 1.
    """
    return min(1.0, batch_size / _coarse(n))


def _coarse(n: int) -> int:
    return max(SIZE_GRANULARITY, int(round(n / SIZE_GRANULARITY)) * SIZE_GRANULARITY)


def _round_seed(ins: TrainInstructions, partner: str) -> int:
    return (ins.seed * 1_000_003 + ins.round * 7919 + sum(map(ord, partner))) % (2**31)
