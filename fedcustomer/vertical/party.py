"""One party's side of split learning: its bottom model, DP-SGD, its ledger, its releases.

The protocol has two phases per round, so that the label owner's data reaches the
passive party only through labels it has already paid for:

1. *Passive phase* (public batches). The label owner draws Poisson batches (rate ``q``,
   public) and reveals them. For each batch the passive party sends the embeddings of
   its bottom model; the label owner's *label head* (embeddings -> task output, trained
   on the **protected labels** only) returns the per-customer gradients with respect to
   those embeddings; the passive party takes one DP-SGD step on its bottom model.
2. *Joint phase* (private batches). The passive party sends the embeddings of all
   aligned customers; the label owner turns them into the label head's score and trains
   its joint model (its own bottom model and the top model over its embedding and that
   score, true labels) with DP-SGD on batches it samples privately, then evaluates it on
   the held-out customers. Nothing of the joint model goes back.

What each party releases and what protects it
---------------------------------------------
*Passive party* (features only): embeddings of its bottom model. Its bottom model is
trained with Opacus DP-SGD (per-sample clipping of ``J_i^T g_i`` to ``max_grad_norm``,
noise ``sigma_p * max_grad_norm``), charged per round as ``GaussianSteps(sigma_p, q,
steps)``: this protects its customers in the trained bottom model. The released
embeddings are a direct function of each customer's row and are NOT covered by that
guarantee; optional ``embedding_noise`` clips each embedding to ``embedding_clip`` and adds
N(0, (embedding_noise * embedding_clip)^2) per coordinate. That blunts inversion by the
label owner and the coordinator, but it is not charged to any ledger and no epsilon is
claimed for it.

*Label owner* (active: its features, the label, the joint model):

- Protected labels (``label_dp``): privatised once per job before anything leaves, so every
  gradient returned to the passive party is post-processing of them (see ``labels``).
- Joint model: DP-SGD (noise multiplier ``s``, Poisson rate ``q`` over the aligned training
  customers, batches drawn privately), charged per round as ``GaussianSteps(s, q, steps)``.
  It never leaves the label owner; the guarantee covers anyone who later obtains it.
- The ledger charges both, so the reported epsilon bounds everything the label owner
  released in the job (labels by basic composition for randomised response, in RDP for
  Gaussian noise). Without ``label_dp`` the head trains on the true labels and the
  returned gradients carry them unprotected (a comparison setting, never a default).

Both parties refuse a round before releasing anything and charge before releasing (see ``spend``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _generate_noise

from fedcustomer.errors import ConfigError, DataError
from fedcustomer.models.clv import to_spend
from fedcustomer.models.metrics import classification_metrics, regression_metrics
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.dpsgd import secure_generator
from fedcustomer.privacy.dp.release import safe_name
from fedcustomer.vertical.data import ACTIVE, PASSIVE, PartyTable, load_party_table, split_positions
from fedcustomer.vertical.declaration import own_spec
from fedcustomer.vertical.labels import label_release_for, protect_labels
from fedcustomer.vertical.models import ActiveModel, BottomMLP, LabelHead
from fedcustomer.vertical.party_audit import PartyAudit
from fedcustomer.vertical.session_config import SessionConfig
from fedcustomer.vertical.spend import PartySpend, RoundDecision, q_steps

_TABLES: dict[tuple[str, str, str, str, str], PartyTable] = {}
_SESSIONS: dict[tuple[str, str, str], PartySession] = {}


def session_for(home: PartnerHome, cfg: SessionConfig) -> PartySession:
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
            raise ConfigError(
                f"this node is partner {self.name!r}, but the job expects {cfg.name!r} as the {cfg.role} party"
            )
        self.active = cfg.role == ACTIVE
        self.spec = cfg.spec if cfg.spec is not None else own_spec(home, cfg.dataset, self.active)
        self.has_passive = self.active and cfg.passive_embed_dim > 0
        table = self._table()
        self.n_aligned = len(table.X)
        self.train_pos, self.test_pos = split_positions(self.n_aligned, cfg.test_fraction, cfg.seed)
        if len(self.train_pos) < 2:
            raise DataError(
                f"only {self.n_aligned} shared customers: too few to train and hold out; need a larger overlap"
            )
        self.X = torch.as_tensor(table.X)
        self.y = torch.as_tensor(table.y) if table.y is not None else None
        self.ledger = home.ledger(cfg.dataset, config.budget_for(cfg.dataset)) if cfg.dp else None
        self.label_release = (
            label_release_for(cfg.task, cfg.label_epsilon, self.ledger.budget.delta, cfg.label_bound)
            if self.has_passive and self.ledger is not None and cfg.label_dp
            else None
        )
        torch.manual_seed(cfg.seed * 101 + (1 if self.active else 2))
        if self.active:
            self.model: torch.nn.Module = ActiveModel(
                self.X.shape[1], 1 if self.has_passive else 0, embed_dim=cfg.embed_dim, hidden=cfg.hidden
            )
            self.head = LabelHead(cfg.passive_embed_dim, cfg.hidden) if self.has_passive else None
        else:
            self.model = BottomMLP(self.X.shape[1], cfg.embed_dim, cfg.hidden)
            self.head = None
        base = self._optimizer(self.model.parameters())
        self.head_optimizer = self._optimizer(self.head.parameters()) if self.head is not None else None
        self.state: dict[str, Any] = {
            "sigma": None,
            "plans": {},
            "charged": [],
            "fitted": {},
            "labels": None,
            "steps_done": [],
        }
        path = self.state_path
        if path.exists():
            blob = load_weights_only(path, "vertical party state")
            self.model.load_state_dict(blob["model"])
            base.load_state_dict(blob["optimizer"])
            if self.head is not None and self.head_optimizer is not None and blob.get("head") is not None:
                self.head.load_state_dict(blob["head"])
                self.head_optimizer.load_state_dict(blob["head_optimizer"])
            self.state = _state_from_saved(blob["state"])
        self.base_optimizer = base
        self.spend = (
            PartySpend(self.ledger, cfg, self.name, self.label_release, lambda: self.state, self._persist)
            if self.ledger is not None
            else None
        )
        self.audit = PartyAudit(home, self.name, cfg, lambda: self.state, self._persist)
        self._generator = secure_generator()
        self.wrapped: torch.nn.Module = self.model
        self.optimizer: torch.optim.Optimizer = base
        self._dp_ready = False

    def _optimizer(self, params: Any) -> torch.optim.Optimizer:
        return (torch.optim.Adam if self.cfg.optimizer == "adam" else torch.optim.SGD)(params, lr=self.cfg.lr)

    # --- bookkeeping ---------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.home.state_dir / "vertical" / f"run-{safe_name(self.cfg.run_id)}-{self.cfg.role}.pt"

    def final_path(self) -> Path:
        return self.home.state_dir / "vertical" / f"run-{safe_name(self.cfg.run_id)}-{self.cfg.role}-final.pt"

    def _persist(self) -> None:
        path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        blob = {
            "model": self.model.state_dict(),
            "optimizer": self.base_optimizer.state_dict(),
            "state": _state_for_saving(self.state),
            "head": self.head.state_dict() if self.head is not None else None,
            "head_optimizer": self.head_optimizer.state_dict() if self.head_optimizer is not None else None,
        }
        torch.save(blob, tmp)
        os.replace(tmp, path)

    def _table(self) -> PartyTable:
        cfg = self.cfg
        spec_key = json.dumps(self.spec.to_dict(), sort_keys=True)  # a re-declared spec reads afresh
        key = (str(self.home.root.resolve()), cfg.dataset, cfg.peer, cfg.role, spec_key)
        if key not in _TABLES:
            _TABLES[key] = load_party_table(
                self.home, self.name, cfg.dataset, cfg.peer, self.spec, with_label=self.active
            )
        return _TABLES[key]

    @property
    def n_train(self) -> int:
        return len(self.train_pos)

    def describe(self) -> dict[str, float]:
        """Sizes the coordinator needs to fix the public sampling rate (no data)."""
        return {
            "aligned": float(self.n_aligned),
            "train": float(self.n_train),
            "test": float(len(self.test_pos)),
            "input-dim": float(self.X.shape[1]),
        }

    # --- sampling and accounting ----------------------------------------------------
    def _q_steps(self) -> tuple[float, int]:
        return q_steps(self.cfg)

    def noise_multiplier(self, rnd: int) -> float:
        assert self.spend is not None
        return self.spend.noise_multiplier(rnd)

    def _public_batches(self, rnd: int) -> list[np.ndarray]:
        """The passive phase's Poisson batches (kept so a re-sent request gets the same ones)."""
        key = str(rnd)
        if key not in self.state["plans"]:
            q, steps = self._q_steps()
            self.state["plans"][key] = [self._poisson(q) for _ in range(steps)]
            self._persist()
        return self.state["plans"][key]

    def _poisson(self, q: float) -> np.ndarray:
        draw = torch.rand(self.n_train, generator=self._generator, dtype=torch.float64).numpy() < q
        return self.train_pos[draw].astype(np.int64)

    def check_round(self, rnd: int) -> RoundDecision:
        """Would this round fit the budget? Nothing is charged or released; a refusal is audited once."""
        decision = self.spend.check_round(rnd) if self.spend is not None else RoundDecision(True)
        if not decision.ok:
            self.audit.round(rnd, decision)
        return decision

    def begin_round(self, rnd: int) -> RoundDecision:
        """Charge the round (and, once per job, the label release); the label owner then reveals its batches."""
        metrics: dict[str, float] = {}
        if self.spend is not None:
            decision = self.spend.charge_round(rnd)
            if not decision.ok:
                self.audit.round(rnd, decision)
                return decision
            metrics = decision.metrics
        if self.has_passive and self.state["labels"] is None:
            self.state["labels"] = protect_labels(self.label_release, self.y, self._generator)
        batches = self._public_batches(rnd) if self.has_passive else None
        if str(rnd) not in self.state["charged"]:
            self.state["charged"].append(str(rnd))
        decision = RoundDecision(True, metrics=metrics, batches=batches)
        self.audit.round(rnd, decision)  # logged before anything of the round leaves, once
        if batches is not None:  # sent as int64 positions and per-batch sizes
            self.audit.sent(rnd, "batch_positions", 8 * (sum(len(b) for b in batches) + len(batches)))
        self._persist()
        return decision

    # --- DP-SGD machinery ----------------------------------------------------------------
    def _ensure_dp(self, rnd: int) -> None:
        if self._dp_ready or not self.cfg.dp:
            return
        q, _ = self._q_steps()
        self.wrapped = GradSampleModule(self.model, batch_first=True, loss_reduction="sum")
        self.optimizer = DPOptimizer(
            self.base_optimizer,
            noise_multiplier=self.noise_multiplier(rnd),
            max_grad_norm=self.cfg.max_grad_norm,
            expected_batch_size=max(1, int(round(q * self.n_train))),
            loss_reduction="mean",
            generator=secure_generator(),
            secure_mode=True,
        )
        self._dp_ready = True

    def _require_paid(self, rnd: int) -> None:
        if str(rnd) not in self.state["charged"]:
            raise ConfigError(
                f"round {rnd} was not opened at partner {self.name!r}; nothing is released before it is paid"
            )

    # --- passive party ----------------------------------------------------------------
    def _embed(self, module: torch.nn.Module, positions: np.ndarray) -> torch.Tensor:
        e = module(self.X[torch.as_tensor(positions, dtype=torch.long)])
        if self.cfg.embedding_noise > 0:
            norms = e.norm(dim=1, keepdim=True).clamp_min(1e-12)
            e = e * (self.cfg.embedding_clip / norms).clamp(max=1.0)
        return e

    def forward(self, rnd: int, positions: np.ndarray) -> torch.Tensor:
        """Embeddings of a public batch's customers (noised if asked)."""
        self._check_positions(positions, self.train_pos, "training")
        self._require_paid(rnd)
        with torch.no_grad():
            e = self._noisy_embeddings(self._embed(self.model, positions))
        self._sent(rnd, "embeddings", e)
        return e

    def embed_all(self, rnd: int) -> torch.Tensor:
        """Embeddings of every aligned customer, for the label owner's joint phase and evaluation."""
        self._require_paid(rnd)
        with torch.no_grad():
            e = self._noisy_embeddings(self._embed(self.model, np.arange(self.n_aligned)))
        self._sent(rnd, "embeddings", e)
        return e

    def _sent(self, rnd: int, kind: str, tensor: torch.Tensor) -> None:
        self.audit.sent(rnd, kind, tensor.numel() * tensor.element_size())
        self._persist()

    def _noisy_embeddings(self, e: torch.Tensor) -> torch.Tensor:
        if self.cfg.embedding_noise > 0:
            e = e + _generate_noise(
                self.cfg.embedding_noise * self.cfg.embedding_clip, e, self._generator, True
            )
        return e.detach().float()

    def backward(self, rnd: int, step: int, positions: np.ndarray, gradients: torch.Tensor) -> None:
        """One DP-SGD step of the bottom model from the gradients that came back."""
        self._check_positions(positions, self.train_pos, "training")
        self._require_paid(rnd)
        if [rnd, step] in self.state["steps_done"]:
            return  # asked again after a coordinator restart: each paid step is taken once
        if gradients.shape != (len(positions), self.cfg.embed_dim):
            raise DataError(
                f"gradients have shape {tuple(gradients.shape)}; expected ({len(positions)}, {self.cfg.embed_dim})"
            )
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

    # --- label owner ------------------------------------------------------------------
    def _loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.task == "repayment":
            return torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum")
        return torch.nn.functional.huber_loss(out, y, reduction="sum", delta=1.0)

    def step(self, rnd: int, step: int, passive: torch.Tensor) -> torch.Tensor:
        """One label-head step on a public batch; returns the gradients for the passive party.

        Only the protected labels and the passive party's embeddings enter here, so what
        goes back is post-processing of the label release (nothing of the label owner's
        features or of its joint model).
        """
        self._require_paid(rnd)
        if self.head is None or self.head_optimizer is None:
            raise ConfigError("this job has no passive party; the label owner takes no passive-phase steps")
        batches = self.state["plans"].get(str(rnd))
        if batches is None or not 0 <= step < len(batches):
            raise ConfigError(f"round {rnd} has no step {step} at the label owner")
        pos = batches[step]
        if passive.shape != (len(pos), self.cfg.passive_embed_dim):
            raise DataError(
                f"embeddings for step {step} have shape {tuple(passive.shape)}; "
                f"expected ({len(pos)}, {self.cfg.passive_embed_dim})"
            )
        kept = self.state.get("head_steps") or {}
        if kept.get("round") == rnd and str(step) in kept["grads"]:  # re-sent after a coordinator restart:
            return kept["grads"][str(step)].clone()  # the head steps once; the same gradients go back
        self.audit.sent(rnd, "gradients", passive.numel() * 4)  # float32, the embeddings' shape
        return self.label_gradients(pos, passive, taken=(rnd, step))  # (saved with the head's step)

    def label_gradients(
        self, positions: np.ndarray, passive: torch.Tensor, taken: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Head update on (embeddings, protected labels); d loss / d embedding per customer.

        ``taken`` (round, step): keep the gradients with the head's state, so a step asked again
        after a restart returns them instead of moving the head twice (the current round's only).
        """
        assert self.head is not None and self.head_optimizer is not None
        labels = torch.as_tensor(self.state["labels"])[torch.as_tensor(positions, dtype=torch.long)]
        e = passive.detach().clone().requires_grad_(True)
        loss = self._loss_sum(self.head(e), labels)
        self.head_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.head.parameters():
            if p.grad is not None:
                p.grad /= max(1, len(positions))
        self.head_optimizer.step()
        grads = (e.grad if e.grad is not None else torch.zeros_like(e)).detach().float()
        if taken is not None:
            rnd, step = taken
            kept = self.state.get("head_steps") or {}
            if kept.get("round") != rnd:
                kept = {"round": rnd, "grads": {}}
            kept["grads"][str(step)] = grads.clone()
            self.state["head_steps"] = kept
        self._persist()
        return grads

    def fit(self, rnd: int, passive: torch.Tensor | None) -> dict[str, float]:
        """The joint phase: DP-SGD on privately drawn batches, then held-out metrics."""
        assert self.y is not None
        self._require_paid(rnd)
        if self.has_passive and (
            passive is None or passive.shape != (self.n_aligned, self.cfg.passive_embed_dim)
        ):
            shape = None if passive is None else tuple(passive.shape)
            raise DataError(
                f"embeddings of the aligned customers have shape {shape}; "
                f"expected ({self.n_aligned}, {self.cfg.passive_embed_dim})"
            )
        emb = self._head_scores(passive) if self.has_passive and passive is not None else None
        if str(rnd) not in self.state["fitted"]:
            self._ensure_dp(rnd)
            q, steps = self._q_steps()
            for _ in range(steps):
                pos = self._poisson(q)
                idx = torch.as_tensor(pos, dtype=torch.long)
                out = self.wrapped(self.X[idx], emb[idx] if emb is not None else None)
                loss = self._loss_sum(out, self.y[idx])
                if not self.cfg.dp:
                    loss = loss / max(1, len(pos))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # Opacus hooks: no input needs a gradient
                    loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.state["fitted"][str(rnd)] = steps
            self._persist()
        return self.evaluate(
            emb[torch.as_tensor(self.test_pos, dtype=torch.long)] if emb is not None else None
        )

    @torch.no_grad()
    def _head_scores(self, passive: torch.Tensor) -> torch.Tensor:
        """The label head's output per customer: the passive party's contribution to the joint model.

        A fixed meaning (the task output predicted from the passive side) across rounds,
        unlike the raw embeddings, whose coordinates move whenever the passive party steps.
        """
        assert self.head is not None
        return self.head(passive.detach().float()).unsqueeze(-1)

    @torch.no_grad()
    def evaluate(self, passive: torch.Tensor | None) -> dict[str, float]:
        """Held-out metrics of the joint model on the aligned test customers."""
        assert self.y is not None
        idx = torch.as_tensor(self.test_pos, dtype=torch.long)
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
        torch.save(
            {
                "run_id": self.cfg.run_id,
                "role": self.cfg.role,
                "model": self.model.state_dict(),
                "feature_spec": self.spec.to_dict(),
                "embed_dim": self.cfg.embed_dim,
                "hidden": self.cfg.hidden,
                "passive_embed_dim": self.cfg.passive_embed_dim,
            },
            tmp,
        )
        os.replace(tmp, path)
        accounting = self.accounting()
        spent = None
        if self.ledger is not None:
            total = self.ledger.spent()
            spent = {"epsilon_total": total.epsilon, "epsilon_target": total.epsilon_target}
        self.audit.finish(accounting, path, spent)
        return accounting

    def accounting(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dp": self.cfg.dp, "role": self.cfg.role}
        if self.spend is None:
            return out
        out.update(self.spend.accounting(self.cfg.max_grad_norm))
        if self.active:
            release = self.label_release
            out["label_dp"] = {
                "enabled": release is not None,
                **(release.to_dict() if release is not None else {}),
            }
        else:
            out["embedding_noise"] = {
                "noise_multiplier": self.cfg.embedding_noise,
                "clip": self.cfg.embedding_clip,
                "accounted": False,
            }
        return out

    def _check_positions(self, positions: np.ndarray, allowed: np.ndarray, what: str) -> None:
        if positions.ndim != 1 or (len(positions) and not np.isin(positions, allowed).all()):
            raise DataError(
                f"requested rows are not all {what} customers of the aligned set; refusing to release them"
            )


def _state_for_saving(state: dict[str, Any]) -> dict[str, Any]:
    """The bookkeeping with numpy arrays as tensors, so it loads weights-only (no pickled classes)."""
    out = dict(state)
    out["plans"] = {k: [torch.from_numpy(np.asarray(b)) for b in v] for k, v in state["plans"].items()}
    if state["labels"] is not None:
        out["labels"] = torch.from_numpy(np.asarray(state["labels"]))
    return out


def _state_from_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_state_for_saving`."""
    out = dict(saved)
    out["plans"] = {k: [b.numpy() for b in v] for k, v in saved["plans"].items()}
    if saved["labels"] is not None:
        out["labels"] = saved["labels"].numpy()
    return out
