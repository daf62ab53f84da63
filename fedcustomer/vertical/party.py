"""One party's side of split learning: its bottom model, DP-SGD, its ledger, its releases.

What each party releases and what protects it
---------------------------------------------
*Passive party* (features only) releases, for the batch the label owner picked, the
embeddings of its bottom model, and for the held-out customers their embeddings at
evaluation. It never sees a label.

- Its bottom model is trained with DP-SGD: the per-sample gradients ``J_i^T g_i`` of its
  parameters (``g_i`` = the gradient that came back for customer ``i``) are clipped to
  ``max_grad_norm``, summed, given Gaussian noise ``sigma_p * max_grad_norm`` and
  averaged over the expected batch ``q * n`` (Opacus ``GradSampleModule`` +
  ``DPOptimizer``). It is charged to the passive party's ledger per round as
  ``GaussianSteps(sigma_p, q, steps)`` (Poisson rate ``q``, public). This protects its
  customers in the trained bottom model -- against whoever later obtains that model (or
  anything computed from it) without the batch indices.
- Embeddings are a direct function of each sampled customer's row and are NOT covered by
  that guarantee. Optional ``embedding_noise``: each released embedding is clipped to
  norm ``embedding_clip`` and given N(0, (embedding_noise * embedding_clip)^2) per
  coordinate. That blunts inversion of single embeddings by the label owner and the
  coordinator (each release is a Gaussian mechanism of noise multiplier
  ``embedding_noise / 2`` for that customer's row), but it is NOT charged to any ledger
  and no epsilon is claimed for it.

*Active party* (label owner: its features, the label, the top model) releases only the
per-customer gradients with respect to the passive party's embeddings (and held-out
metrics, as horizontal nodes do).

- Its bottom and top models are trained together with DP-SGD (noise multiplier ``s``,
  Poisson rate ``q``), charged as ``GaussianSteps(s, q, steps)``.
- Label protection (``label_dp``): every returned per-customer gradient is clipped to
  ``label_max_grad_norm`` and given N(0, (s * label_max_grad_norm)^2) per coordinate.
  Guarantee: record-level DP for the label owner's rows (the label and the label owner's
  features of each aligned customer), under replace-one adjacency, against the passive
  party and the coordinator, who see every returned gradient *and know which customers
  were in each batch* (so no amplification by sampling is claimed). A customer's record
  influences what they see only in the steps where it is in the batch: directly through
  its own returned gradient (sensitivity ``2 C``, noise ``s C``) and through the DP-SGD
  update of the top model (sensitivity ``2 C``, noise ``s C``); each such use is a
  Gaussian mechanism of noise multiplier ``s / (2 sqrt 2)``. The label owner caps the
  uses per customer at ``K`` for the whole job (customers who reached ``K`` are no longer
  sampled) and charges its ledger, per round, ``GaussianSteps(s / (2 sqrt 2), 1, dK)``
  with ``dK`` the growth of the largest use count -- on top of the DP-SGD charge, so the
  ledger's total bounds both the guarantee towards model observers and towards the
  passive party. Without ``label_dp`` the returned gradients carry the labels unprotected.

Both parties refuse a round, before releasing anything, when their ledger projects past
the target (noise is fixed at their first round from the remaining budget, as the
horizontal node does), and they charge before releasing.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise

from fedcustomer.clients.home import PartnerHome
from fedcustomer.errors import BudgetExhausted, ConfigError, DataError
from fedcustomer.models.clv import to_spend
from fedcustomer.models.features import FeatureSpec
from fedcustomer.models.metrics import classification_metrics, regression_metrics
from fedcustomer.privacy import accounting
from fedcustomer.privacy.accounting import GaussianSteps
from fedcustomer.privacy.dpsgd import secure_generator
from fedcustomer.privacy.ledger import APPROX, BudgetLedger
from fedcustomer.vertical.data import ACTIVE, PASSIVE, PartyTable, load_party_table, split_positions
from fedcustomer.vertical.models import ActiveModel, BottomMLP

LABEL_MECHANISM = "vertical_label_gradients"
DPSGD_MECHANISM = "vertical_dpsgd"
USE_CAP_SIGMAS = 3.0


@dataclass(frozen=True)
class SessionConfig:
    """What the coordinator tells a party about the job (decoded from a ConfigRecord)."""

    run_id: str
    role: str
    name: str
    peer: str
    dataset: str
    spec: FeatureSpec
    task: str
    rounds: int
    batch_size: int
    lr: float = 0.05
    optimizer: str = "adam"
    embed_dim: int = 8
    hidden: int = 16
    passive_embed_dim: int = 8
    dp: bool = True
    max_grad_norm: float = 1.0
    label_dp: bool = True
    label_max_grad_norm: float = 1.0
    embedding_noise: float = 0.0
    embedding_clip: float = 1.0
    max_noise_multiplier: float = 50.0
    test_fraction: float = 0.25
    seed: int = 0
    steps_per_round: int = 0  # 0 until the label owner announced the sample rate
    sample_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "SessionConfig":
        try:
            return cls(
                run_id=str(cfg["run-id"]), role=str(cfg["role"]), name=str(cfg["name"]), peer=str(cfg["peer"]),
                dataset=str(cfg["dataset"]), spec=FeatureSpec.from_dict(json.loads(str(cfg["feature-spec"]))),
                task=str(cfg["task"]), rounds=int(cfg["rounds"]), batch_size=int(cfg["batch-size"]),
                lr=float(cfg.get("lr", 0.05)), optimizer=str(cfg.get("optimizer", "adam")),
                embed_dim=int(cfg.get("embed-dim", 8)), hidden=int(cfg.get("hidden", 16)),
                passive_embed_dim=int(cfg.get("passive-embed-dim", 8)), dp=bool(cfg.get("dp", True)),
                max_grad_norm=float(cfg.get("max-grad-norm", 1.0)), label_dp=bool(cfg.get("label-dp", True)),
                label_max_grad_norm=float(cfg.get("label-max-grad-norm", 1.0)),
                embedding_noise=float(cfg.get("embedding-noise", 0.0)),
                embedding_clip=float(cfg.get("embedding-clip", 1.0)),
                max_noise_multiplier=float(cfg.get("max-noise-multiplier", 50.0)),
                test_fraction=float(cfg.get("test-fraction", 0.25)), seed=int(cfg.get("seed", 0)),
                steps_per_round=int(cfg.get("steps-per-round", 0)), sample_rate=float(cfg.get("sample-rate", 0.0)),
            )
        except KeyError as exc:
            raise ConfigError(f"vertical instructions lack {exc.args[0]!r}") from None


@dataclass
class RoundDecision:
    """A party's answer to 'may round r run?' / 'round r is paid'."""

    ok: bool
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    batches: list[np.ndarray] | None = None  # the label owner's Poisson batches (positions in aligned order)


_TABLES: dict[tuple[str, str, str, str], PartyTable] = {}
_SESSIONS: dict[tuple[str, str, str], "PartySession"] = {}


def session_for(home: PartnerHome, cfg: SessionConfig) -> "PartySession":
    """The party's live session for this run (kept in memory, persisted after each change)."""
    key = (str(home.root.resolve()), cfg.run_id, cfg.role)
    session = _SESSIONS.get(key)
    if session is None or session.cfg.steps_per_round != cfg.steps_per_round:
        session = PartySession(home, cfg)
        _SESSIONS[key] = session
    return session


def forget_sessions() -> None:
    """Drop in-memory sessions and tables (tests simulating a restart)."""
    _SESSIONS.clear()
    _TABLES.clear()


class PartySession:
    """A party's training state for one run."""

    def __init__(self, home: PartnerHome, cfg: SessionConfig) -> None:
        if cfg.role not in (ACTIVE, PASSIVE):
            raise ConfigError(f"vertical role must be {ACTIVE} or {PASSIVE}, got {cfg.role!r}")
        self.home, self.cfg = home, cfg
        config = home.config()
        self.name = config.name
        if self.name != cfg.name:
            raise ConfigError(f"this node is partner {self.name!r}, but the job expects {cfg.name!r} as the {cfg.role} party")
        self.active = cfg.role == ACTIVE
        table = self._table()
        self.n_aligned = len(table.X)
        self.train_pos, self.test_pos = split_positions(self.n_aligned, cfg.test_fraction, cfg.seed)
        if len(self.train_pos) < 2:
            raise DataError(f"only {self.n_aligned} shared customers: too few to train and hold out; need a larger overlap")
        self.X = torch.as_tensor(table.X)
        self.y = torch.as_tensor(table.y) if table.y is not None else None
        self.ledger = BudgetLedger(home.ledger_path, cfg.dataset, config.budget_for(cfg.dataset)) if cfg.dp else None
        torch.manual_seed(cfg.seed * 101 + (1 if self.active else 2))
        if self.active:
            self.model: torch.nn.Module = ActiveModel(self.X.shape[1], cfg.passive_embed_dim, embed_dim=cfg.embed_dim,
                                                      hidden=cfg.hidden)
        else:
            self.model = BottomMLP(self.X.shape[1], cfg.embed_dim, cfg.hidden)
        base = (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD)(self.model.parameters(), lr=cfg.lr)
        self.state: dict[str, Any] = {"sigma": None, "plans": {}, "charged": [], "counts": None, "steps_done": []}
        path = self.state_path
        if path.exists():
            blob = torch.load(path, weights_only=False)
            self.model.load_state_dict(blob["model"])
            base.load_state_dict(blob["optimizer"])
            self.state = blob["state"]
        if self.state["counts"] is None:
            self.state["counts"] = np.zeros(self.n_aligned, dtype=np.int64)
        self.base_optimizer = base
        self._generator = secure_generator()
        self.wrapped: torch.nn.Module = self.model
        self.optimizer: torch.optim.Optimizer = base
        self._dp_ready = False

    # --- bookkeeping ---------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.home.state_dir / "vertical" / f"run-{_safe(self.cfg.run_id)}-{self.cfg.role}.pt"

    def final_path(self) -> Path:
        return self.home.state_dir / "vertical" / f"run-{_safe(self.cfg.run_id)}-{self.cfg.role}-final.pt"

    def _persist(self) -> None:
        path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.base_optimizer.state_dict(), "state": self.state}, tmp)
        os.replace(tmp, path)

    def _table(self) -> PartyTable:
        cfg = self.cfg
        key = (str(self.home.root.resolve()), cfg.dataset, cfg.peer, cfg.role)
        if key not in _TABLES:
            _TABLES[key] = load_party_table(self.home, self.name, cfg.dataset, cfg.peer, cfg.spec, with_label=self.active)
        return _TABLES[key]

    @property
    def n_train(self) -> int:
        return len(self.train_pos)

    def describe(self) -> dict[str, float]:
        """Sizes the coordinator needs to fix the public sampling rate (no data)."""
        return {"aligned": float(self.n_aligned), "train": float(self.n_train), "test": float(len(self.test_pos)),
                "input-dim": float(self.X.shape[1])}

    # --- sampling and accounting ----------------------------------------------------
    def _q_steps(self) -> tuple[float, int]:
        q, steps = self.cfg.sample_rate, self.cfg.steps_per_round
        if not (0 < q <= 1) or steps < 1:
            raise ConfigError("the coordinator sent no sample rate / steps per round; it must set them up first")
        return q, steps

    def use_cap(self) -> int:
        """The most batches any one customer may join in the whole job (label-DP accounting)."""
        q, steps = self._q_steps()
        mean = q * steps * self.cfg.rounds
        return int(math.ceil(mean + USE_CAP_SIGMAS * math.sqrt(mean) + 1))

    def _label_sigma(self, s: float) -> float:
        return s / (2.0 * math.sqrt(2.0))

    def _extra_steps(self, s: float, steps: int, label_uses: int) -> list[GaussianSteps]:
        q, _ = self._q_steps()
        extra = [GaussianSteps(s, q, steps)]
        if self.active and self.cfg.label_dp and self.cfg.passive_embed_dim > 0 and label_uses > 0:
            extra.append(GaussianSteps(self._label_sigma(s), 1.0, label_uses))
        return extra

    def _project(self, extra: list[GaussianSteps]) -> float:
        assert self.ledger is not None
        charges = self.ledger.charges()
        approx_eps = sum(float(c.epsilon or 0.0) for c in charges if c.family == APPROX)
        approx_delta = sum(float(c.delta or 0.0) for c in charges if c.family == APPROX)
        delta = self.ledger.budget.delta - approx_delta
        if delta <= 0:
            return float("inf")
        return accounting.epsilon(self.ledger.gaussian_history() + extra, delta) + approx_eps

    def noise_multiplier(self, rnd: int) -> float:
        """Fixed at the party's first round of the run: the remaining budget over the remaining rounds."""
        if self.state["sigma"] is not None:
            return float(self.state["sigma"])
        assert self.ledger is not None
        q, steps = self._q_steps()
        remaining = max(1, self.cfg.rounds - rnd + 1)
        hi = self.cfg.max_noise_multiplier
        if not self.active or not self.cfg.label_dp or self.cfg.passive_embed_dim == 0:
            sigma = self.ledger.calibrate_noise(q, steps * remaining, sigma_max=hi)
        else:
            uses = max(0, self.use_cap() - int(self.state["counts"].max()))
            target = self.ledger.budget.epsilon * (1 - 1e-9)
            lo = 0.3
            if self._project(self._extra_steps(hi, steps * remaining, uses)) > target:
                sigma = hi
            elif self._project(self._extra_steps(lo, steps * remaining, uses)) <= target:
                sigma = lo
            else:
                for _ in range(40):
                    mid = math.sqrt(lo * hi)
                    if self._project(self._extra_steps(mid, steps * remaining, uses)) <= target:
                        hi = mid
                    else:
                        lo = mid
                sigma = hi
        self.state["sigma"] = float(sigma)
        self._persist()
        return float(sigma)

    def _plan(self, rnd: int) -> list[np.ndarray]:
        """The label owner's Poisson batches for a round (kept so a re-sent request gets the same ones)."""
        key = str(rnd)
        if key not in self.state["plans"]:
            q, steps = self._q_steps()
            counts = self.state["counts"]
            cap = self.use_cap() if self.cfg.dp and self.cfg.label_dp else None
            planned = counts.copy()
            batches = []
            for _ in range(steps):
                draw = torch.rand(self.n_train, generator=self._generator, dtype=torch.float64).numpy() < q
                chosen = self.train_pos[draw]
                if cap is not None:
                    chosen = chosen[planned[chosen] < cap]
                planned[chosen] += 1
                batches.append(chosen.astype(np.int64))
            self.state["plans"][key] = batches
            self._persist()
        return self.state["plans"][key]

    def _label_uses(self, batches: list[np.ndarray]) -> int:
        counts = self.state["counts"].copy()
        before = int(counts.max())
        for b in batches:
            counts[b] += 1
        return int(counts.max()) - before

    def _charge_keys(self, rnd: int) -> tuple[str, str]:
        base = f"run:{self.cfg.run_id}:vertical:{self.cfg.role}:round:{rnd}"
        return base, base + ":label-gradients"

    def check_round(self, rnd: int) -> RoundDecision:
        """Would this round fit the budget? Nothing is charged or released."""
        if self.ledger is None:
            return RoundDecision(True)
        sigma = self.noise_multiplier(rnd)
        _, steps = self._q_steps()
        key, _ = self._charge_keys(rnd)
        if self.ledger.find(key) is not None:
            return RoundDecision(True, metrics={"noise-multiplier": sigma})
        uses = self._label_uses(self._plan(rnd)) if self.active else 0
        projected = self._project(self._extra_steps(sigma, steps, uses))
        metrics = {"epsilon-projected": projected, "epsilon-target": self.ledger.budget.epsilon,
                   "epsilon-total": self.ledger.spent().epsilon, "noise-multiplier": sigma}
        if projected > self.ledger.budget.epsilon:
            reason = (f"round {rnd} would bring epsilon to {projected:.3f}, past partner {self.name!r}'s "
                      f"target {self.ledger.budget.epsilon:g}")
            self.ledger.record_refusal(key, DPSGD_MECHANISM, projected, f"vertical round {rnd} of run {self.cfg.run_id} "
                                       "would exceed the target")
            return RoundDecision(False, reason, metrics)
        return RoundDecision(True, metrics=metrics)

    def begin_round(self, rnd: int) -> RoundDecision:
        """Charge the round to the ledger (idempotent); the label owner then reveals its batches."""
        batches = self._plan(rnd) if self.active else None
        metrics: dict[str, float] = {}
        if self.ledger is not None:
            sigma = self.noise_multiplier(rnd)
            _, steps = self._q_steps()
            key, label_key = self._charge_keys(rnd)
            uses = self._label_uses(batches) if batches is not None and str(rnd) not in self.state["charged"] else 0
            extra = self._extra_steps(sigma, steps, uses)
            try:
                charge = self.ledger.charge_gaussian(key, extra[0], mechanism=DPSGD_MECHANISM, run_id=self.cfg.run_id,
                                                     round=rnd, details={"party": self.name, "role": self.cfg.role})
                if len(extra) > 1:
                    charge = self.ledger.charge_gaussian(
                        label_key, extra[1], mechanism=LABEL_MECHANISM, run_id=self.cfg.run_id, round=rnd,
                        details={"party": self.name, "use_cap": self.use_cap(), "label_max_grad_norm": self.cfg.label_max_grad_norm},
                    )
            except BudgetExhausted as exc:
                return RoundDecision(False, str(exc), {"epsilon-total": self.ledger.spent().epsilon,
                                                       "epsilon-target": self.ledger.budget.epsilon})
            metrics = {"epsilon-total": float(self.ledger.spent().epsilon), "epsilon-target": self.ledger.budget.epsilon,
                       "delta": self.ledger.budget.delta, "noise-multiplier": sigma, "charged-now": float(not charge.already_paid)}
        if str(rnd) not in self.state["charged"]:
            if batches is not None:
                for b in batches:
                    self.state["counts"][b] += 1
            self.state["charged"].append(str(rnd))
            self._persist()
        return RoundDecision(True, metrics=metrics, batches=batches)

    # --- DP-SGD machinery ----------------------------------------------------------------
    def _ensure_dp(self, rnd: int) -> None:
        if self._dp_ready or not self.cfg.dp:
            return
        q, _ = self._q_steps()
        self.wrapped = GradSampleModule(self.model, batch_first=True, loss_reduction="sum")
        self.optimizer = DPOptimizer(
            self.base_optimizer, noise_multiplier=self.noise_multiplier(rnd), max_grad_norm=self.cfg.max_grad_norm,
            expected_batch_size=max(1, int(round(q * self.n_train))), loss_reduction="mean",
            generator=secure_generator(), secure_mode=True,
        )
        self._dp_ready = True

    def _require_paid(self, rnd: int) -> None:
        if str(rnd) not in self.state["charged"]:
            raise ConfigError(f"round {rnd} was not opened at partner {self.name!r}; nothing is released before it is paid")

    # --- passive party ----------------------------------------------------------------
    def _embed(self, module: torch.nn.Module, positions: np.ndarray) -> torch.Tensor:
        e = module(self.X[torch.as_tensor(positions, dtype=torch.long)])
        if self.cfg.embedding_noise > 0:
            norms = e.norm(dim=1, keepdim=True).clamp_min(1e-12)
            e = e * (self.cfg.embedding_clip / norms).clamp(max=1.0)
        return e

    def forward(self, rnd: int, positions: np.ndarray) -> torch.Tensor:
        """Embeddings of the batch's customers (noised if asked); the passive party's only release."""
        self._check_positions(positions, self.train_pos, "training")
        self._require_paid(rnd)
        with torch.no_grad():
            e = self._embed(self.model, positions)
        return self._noisy_embeddings(e)

    def embed_test(self) -> torch.Tensor:
        with torch.no_grad():
            return self._noisy_embeddings(self._embed(self.model, self.test_pos))

    def _noisy_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        if self.cfg.embedding_noise > 0:
            e = e + _generate_noise(self.cfg.embedding_noise * self.cfg.embedding_clip, e, self._generator, True)
        return e.detach().float()

    def backward(self, rnd: int, step: int, positions: np.ndarray, gradients: torch.Tensor) -> None:
        """One DP-SGD step of the bottom model from the gradients that came back."""
        self._check_positions(positions, self.train_pos, "training")
        self._require_paid(rnd)
        if gradients.shape != (len(positions), self.cfg.embed_dim):
            raise DataError(f"gradients have shape {tuple(gradients.shape)}; expected ({len(positions)}, {self.cfg.embed_dim})")
        self._ensure_dp(rnd)
        e = self._embed(self.wrapped, positions)
        surrogate = (e * gradients).sum()
        if not self.cfg.dp:
            surrogate = surrogate / max(1, len(positions))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # hooks fire although the input needs no gradient
            surrogate.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["steps_done"].append([rnd, step])
        self._persist()

    # --- active party -----------------------------------------------------------------
    def _loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.task == "repayment":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum")
        return torch.nn.functional.huber_loss(out, y, reduction="sum", delta=1.0)

    def step(self, rnd: int, step: int, passive: torch.Tensor | None) -> torch.Tensor | None:
        """One training step of bottom+top; returns the (protected) gradients for the passive party."""
        assert self.y is not None
        self._require_paid(rnd)
        batches = self.state["plans"].get(str(rnd))
        if batches is None or not 0 <= step < len(batches):
            raise ConfigError(f"round {rnd} has no step {step} at the label owner")
        pos = batches[step]
        needs_passive = self.cfg.passive_embed_dim > 0
        if needs_passive and (passive is None or passive.shape != (len(pos), self.cfg.passive_embed_dim)):
            shape = None if passive is None else tuple(passive.shape)
            raise DataError(f"embeddings for step {step} have shape {shape}; expected ({len(pos)}, {self.cfg.passive_embed_dim})")
        self._ensure_dp(rnd)
        idx = torch.as_tensor(pos, dtype=torch.long)
        e = passive.detach().clone().requires_grad_(True) if needs_passive and passive is not None else None
        out = self.wrapped(self.X[idx], e)
        loss = self._loss_sum(out, self.y[idx])
        with warnings.catch_warnings():
            # Opacus's backward hooks warn when no input needs a gradient (the label owner alone).
            warnings.simplefilter("ignore", UserWarning)
            loss.backward()
        if not self.cfg.dp:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad /= max(1, len(pos))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["steps_done"].append([rnd, step])
        self._persist()
        if e is None:
            return None
        grads = e.grad.detach() if e.grad is not None else torch.zeros_like(e)
        if self.cfg.dp and self.cfg.label_dp:
            c = self.cfg.label_max_grad_norm
            grads = grads * (c / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            grads = grads + _generate_noise(self.noise_multiplier(rnd) * c, grads, self._generator, True)
        return grads.float()

    @torch.no_grad()
    def evaluate(self, passive: torch.Tensor | None) -> dict[str, float]:
        """Held-out metrics of the joint model on the aligned test customers."""
        assert self.y is not None
        idx = torch.as_tensor(self.test_pos, dtype=torch.long)
        if self.cfg.passive_embed_dim > 0 and (passive is None or passive.shape != (len(idx), self.cfg.passive_embed_dim)):
            raise DataError("test embeddings do not match the held-out customers")
        self.model.eval()
        raw = self.model(self.X[idx], passive)
        self.model.train()
        y = self.y[idx]
        loss = float(self._loss_sum(raw, y) / max(1, len(idx)))
        if self.cfg.task == "repayment":
            metrics = classification_metrics(y.numpy(), torch.sigmoid(raw).numpy())
        else:
            metrics = regression_metrics(np.expm1(y.numpy()), to_spend(raw).numpy())
        return {"loss": loss, **metrics}

    # --- end of job -----------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Keep the party's final model part at home; return what anyone needs to recheck its epsilon."""
        path = self.final_path()
        tmp = path.with_suffix(".tmp")
        torch.save({"run_id": self.cfg.run_id, "role": self.cfg.role, "model": self.model.state_dict(),
                    "feature_spec": self.cfg.spec.to_dict(), "embed_dim": self.cfg.embed_dim, "hidden": self.cfg.hidden,
                    "passive_embed_dim": self.cfg.passive_embed_dim}, tmp)
        os.replace(tmp, path)
        return self.accounting()

    def accounting(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dp": self.cfg.dp, "role": self.cfg.role}
        if self.ledger is None:
            return out
        state = self.ledger.accounting_state()
        q, steps = self._q_steps()
        out.update({
            "accountant": state["accountant"], "noise_multiplier": self.state["sigma"], "sample_rate": q,
            "steps_per_round": steps, "delta": self.ledger.budget.delta, "max_grad_norm": self.cfg.max_grad_norm,
            "sampling": "poisson", "history": state["gaussian_history"], "approx_charges": state["approx_charges"],
        })
        if self.active:
            out["label_dp"] = {"enabled": self.cfg.label_dp and self.cfg.passive_embed_dim > 0,
                               "label_max_grad_norm": self.cfg.label_max_grad_norm, "use_cap": self.use_cap(),
                               "max_uses": int(self.state["counts"].max()),
                               "per_use_noise_multiplier": self._label_sigma(self.state["sigma"] or 0.0)}
        else:
            out["embedding_noise"] = {"noise_multiplier": self.cfg.embedding_noise, "clip": self.cfg.embedding_clip,
                                      "accounted": False}
        return out

    def _check_positions(self, positions: np.ndarray, allowed: np.ndarray, what: str) -> None:
        if positions.ndim != 1 or (len(positions) and not np.isin(positions, allowed).all()):
            raise DataError(f"requested rows are not all {what} customers of the aligned set; refusing to release them")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
