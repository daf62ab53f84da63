"""Audit one run directory: what it released, measured against the epsilon it claims.

Why this module: a compliance officer points :func:`audit_run` (``fedcustomer audit
privacy --run DIR``) at a run directory and gets ``privacy_audit.json`` and
``privacy_audit.png`` beside the run's own outputs, linked from its ``summary.json``.

* A horizontal training run (``config.json`` + ``summary.json``): the canary replay of
  :mod:`~fedcustomer.privacy_audit.canaries` at each partner's own noise multiplier, and
  membership inference (:mod:`~fedcustomer.privacy_audit.membership`) on the released
  ``model.pt``, beside a non-private replay of the same recipe for comparison. The
  partners' rows are read from their homes (the run's ``partners/`` folder, or
  ``homes``) by the governed store, as the training pipeline reads them: each read is in
  the partner's audit log, after an entry naming the person who asked for the audit
  (:mod:`~fedcustomer.privacy_audit.authorization`). Nothing is charged to any ledger; nothing about a customer is
  written, only scores' summaries.
* A vertical (split-learning) run (``summary.json`` with mode ``vertical``):
  :mod:`~fedcustomer.privacy_audit.vertical_audit`, each party's DP-SGD and the label
  owner's label release at their own claimed epsilon, and membership inference on the joint model.
* An analytics release (``result.json`` of ``query``, ``rfm.json`` of ``rfm``):
  :mod:`~fedcustomer.privacy_audit.analytics_audit`, linked from that file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcustomer.analytics.mechanisms import LAPLACE
from fedcustomer.analytics.spec import spec_from_dict
from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import Signer
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accountants import accountant_named
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer
from fedcustomer.privacy_audit import analytics_audit, canaries, membership, vertical_audit
from fedcustomer.privacy_audit.authorization import AuditAuthorizer
from fedcustomer.privacy_audit.bounds import CONFIDENCE
from fedcustomer.privacy_audit.json_files import read_json_object
from fedcustomer.privacy_audit.plot import write_plot

REPORT = "privacy_audit.json"
PLOT = "privacy_audit.png"
FORMAT = "fedcustomer.privacy_audit/1"
RELEASE_FILES = ("result.json", "rfm.json")  # analytics releases: `query`, `rfm`


def _release_file(run: Path) -> Path | None:
    """The analytics release a query or rfm run wrote, if this is one."""
    return next((run / n for n in RELEASE_FILES if (run / n).exists()), None)


def _kind(run: Path) -> str:
    if _release_file(run) is not None:
        return "query"
    if (run / "summary.json").exists() and (run / "config.json").exists():
        config = read_json_object(run / "config.json", "")
        return "vertical" if "label_dp" in config else "horizontal"
    subruns = sorted(p.name for p in run.iterdir() if (p / "summary.json").exists()) if run.is_dir() else []
    hint = (
        f"; it holds runs {', '.join(subruns)}: pass one of them (e.g. {run / subruns[0]})" if subruns else ""
    )
    raise ConfigError(
        f"{run} is not a training run (config.json + summary.json) or an analytics run "
        f"(result.json of query, rfm.json of rfm){hint}"
    )


def _partner_rows(
    home: PartnerHome, dataset: str, spec: FeatureSpec, split: str
) -> tuple[np.ndarray, np.ndarray]:
    # Named so the partner's audit log tells the audit's reads from the job's own.
    frame = PartnerDataAccess(home, f"{home.root.name}-privacy-audit").training_frame(dataset, spec, split)
    X, y = spec.transform(frame)
    return np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float32)


def _recipe(config: dict[str, Any]) -> canaries.Recipe:
    return canaries.Recipe(
        task=str(config["task"]),
        arch=str(config["arch"]),
        lr=float(config["lr"]),
        batch_size=int(config["batch_size"]),
        local_epochs=int(config.get("local_epochs", 1)),
        max_grad_norm=float(config["max_grad_norm"]),
        optimizer=str(config.get("optimizer", "sgd")),
        proximal_mu=float(config.get("proximal_mu", 0.0)) if config.get("strategy") == "fedprox" else 0.0,
        seed=int(config.get("seed", 0)),
    )


def shadow_trainer(recipe: canaries.Recipe, sigma: float | None, epochs: int) -> membership.ShadowTrainer:
    """Shadow models: the job's model and optimiser, trained centrally for the job's epochs."""

    def train(X: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
        model = build_model(recipe.task, recipe.arch, X.shape[1], seed=seed)
        Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
        common: dict[str, Any] = {
            "batch_size": min(recipe.batch_size, len(Xt)),
            "lr": recipe.lr,
            "optimizer": recipe.optimizer,
        }
        trainer: Any
        if sigma is None:
            trainer = PlainTrainer(model, Xt, yt, loss_for(recipe.task), seed=seed, **common)
        else:
            trainer = DPTrainer(
                model,
                Xt,
                yt,
                loss_for(recipe.task),
                noise_multiplier=sigma,
                max_grad_norm=recipe.max_grad_norm,
                noise_generator=torch.Generator().manual_seed(seed),
                sampling_generator=torch.Generator().manual_seed(seed + 1),
                **common,
            )
        for _ in range(epochs):
            trainer.train_epoch()
        return model

    return train


def audit_training(
    run: Path,
    *,
    homes: Path | None = None,
    n_canaries: int = canaries.DEFAULT_CANARIES,
    shadows: int = membership.DEFAULT_SHADOWS,
    nonprivate: bool = True,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    authorize: AuditAuthorizer | None = None,
) -> dict[str, Any]:
    """Canary audit and membership inference for a horizontal training run."""
    config = read_json_object(run / "config.json", "the job's options")
    summary = read_json_object(run / "summary.json", "the job's summary")
    if not summary.get("dp", config.get("dp", True)):
        raise ConfigError(f"{run} was trained with --no-dp: there is no epsilon to audit")
    if not (run / "model.pt").exists():
        raise ConfigError(f"{run / 'model.pt'} not found: the job released no model (did it train a round?)")
    homes = Path(homes) if homes is not None else run / "partners"
    if not homes.is_dir():
        raise ConfigError(f"partner homes not found at {homes}; pass --homes DIR (the job's --homes)")
    spec_path = run / "feature_spec.json"
    if not spec_path.exists():
        raise ConfigError(f"{spec_path} not found; the audit reads the features the job trained on")
    spec = FeatureSpec.load(spec_path)
    recipe = _recipe(config)
    dataset = str(summary.get("dataset") or config.get("data"))
    partners: list[canaries.PartnerData] = []
    Xn_all, yn_all = [], []
    claims, spent_all = [], []
    delta = float(summary.get("budget_requested", {}).get("delta", config.get("delta", 1e-5)))
    audited = []
    for p in summary.get("partners", []):
        acct = p.get("accounting") or {}
        if int(p.get("rounds_trained", 0)) < 1 or not acct.get("dp"):
            continue
        home_dir = homes / str(p["name"])
        if not (home_dir / "partner.toml").exists():
            raise ConfigError(f"partner home {home_dir} not found; pass --homes DIR (the job's --homes)")
        audited.append((p, acct, PartnerHome(home_dir)))
    authorize = authorize or AuditAuthorizer(run, None)
    for _, _, home in audited:  # every home agrees before any home's rows are read
        authorize(home)
    for p, acct, home in audited:
        rounds = int(p["rounds_trained"])
        X, y = _partner_rows(home, dataset, spec, "train")
        Xn, yn = _partner_rows(home, dataset, spec, "test")
        Xn_all.append(Xn)
        yn_all.append(yn)
        try:
            sigma, q, steps = (
                float(acct["noise_multiplier"]),
                float(acct["sample_rate"]),
                int(acct["steps_per_round"]),
            )
            delta = float(acct.get("delta", delta))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{run / 'summary.json'}: partner {p['name']!r} lacks its accounting "
                "(noise_multiplier, sample_rate, steps_per_round)"
            ) from None
        claims.append(accounting.epsilon([GaussianSteps(sigma, q, steps)] * rounds, delta))
        spent_all.append(float(p.get("epsilon_spent", 0.0)))
        partners.append(canaries.PartnerData(str(p["name"]), X, y, sigma, rounds, claims[-1]))
    if not partners:
        raise ConfigError(f"no partner of {run} trained with DP; there is nothing to audit")
    started = time.perf_counter()
    mechs = []
    for (
        kind
    ) in canaries.KINDS:  # gradient canaries: sampling, noise, accounting; record canaries: clipping too
        result = canaries.replay(recipe, partners, canaries=n_canaries, seed=seed, kind=kind, delta=delta)
        mechs.append(canaries.canary_report(result, None, delta, confidence))
    data = membership.MembershipData(
        np.concatenate([p.X for p in partners]),
        np.concatenate([p.y for p in partners]),
        np.concatenate(Xn_all),
        np.concatenate(yn_all),
    )
    epochs = max(p.rounds for p in partners) * recipe.local_epochs
    sigma_mean = float(np.mean([p.noise_multiplier or 0.0 for p in partners]))
    released = build_model(recipe.task, recipe.arch, spec.input_dim)
    released.load_state_dict(load_weights_only(run / "model.pt", "the released model"))
    mia: dict[str, Any] = {
        "released_model": membership.membership_inference(
            released,
            recipe.task,
            data,
            shadow_trainer(recipe, sigma_mean, epochs),
            shadows=shadows,
            seed=seed,
        )
    }
    if nonprivate:
        plain = canaries.replay(recipe, partners, seed=seed, private=False)
        mia["nonprivate_replay"] = membership.membership_inference(
            plain.model, recipe.task, data, shadow_trainer(recipe, None, epochs), shadows=shadows, seed=seed
        )
    audit_seconds = time.perf_counter() - started
    job_seconds = float(sum(summary.get("round_wall_time_s") or []))
    return {
        "run_kind": "horizontal",
        "task": recipe.task,
        "dataset": dataset,
        "partners_audited": [p.name for p in partners],
        "replay": {
            "strategy": "fedavg",
            "clipping": "fast",
            "job_strategy": config.get("strategy"),
            "job_clipping": config.get("clipping"),
        },
        "claimed_epsilon_by_partner": {p.name: p.epsilon for p in partners},
        "epsilon_spent_all_releases": dict(zip([p.name for p in partners], spent_all)),
        "mechanisms": mechs,
        "membership_inference": mia,
        "audit_seconds": round(audit_seconds, 3),
        "job_seconds": round(job_seconds, 3),
        "audit_to_job_time": round(audit_seconds / job_seconds, 3) if job_seconds > 0 else None,
    }


def audit_query_run(run: Path, *, releases: int, seed: int, confidence: float) -> dict[str, Any]:
    """The analytics audit of the release a ``result.json`` (query) or ``rfm.json`` (rfm) records."""
    path = _release_file(run)
    assert path is not None
    result = read_json_object(path, "the query's result")
    if not isinstance(result.get("spec"), dict):
        raise DataError(f"{path} holds no query spec")
    if "partners" in result and not result["partners"]:
        raise ConfigError(f"{path}: every partner refused this query; it released nothing to audit")
    spec = spec_from_dict(result["spec"], source=str(path))
    partners = [str(p) for p in result.get("partners", [])]
    # One audit per accountant the partners sized their noise with (a release from before this
    # was recorded was sized with RDP): each replays the noise those partners really added.
    calibrated = dict(result.get("calibrated_with") or {})
    by_accountant: dict[str | None, list[str]] = {}
    for partner in partners or [""]:
        name = calibrated.get(partner) if spec.mechanism != LAPLACE else None
        by_accountant.setdefault(name, []).append(partner)
    reports = []
    for name, released_by in sorted(by_accountant.items(), key=lambda kv: str(kv[0])):
        report = analytics_audit.audit_query(
            spec,
            releases=releases,
            seed=seed,
            confidence=confidence,
            accountant=None if name is None else accountant_named(name),
        )
        report["released_by"] = [p for p in released_by if p]
        reports.append(report)
    kind = "rfm" if path.name == "rfm.json" else "query"
    return {"run_kind": kind, "release_file": path.name, "mechanisms": reports, "membership_inference": {}}


def audit_run(
    run: str | Path,
    *,
    homes: str | Path | None = None,
    canaries_count: int = canaries.DEFAULT_CANARIES,
    shadows: int = membership.DEFAULT_SHADOWS,
    releases: int = analytics_audit.DEFAULT_RELEASES,
    nonprivate: bool = True,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Audit ``run``; write privacy_audit.json and .png there and link them from summary.json.

    ``signer`` is the person asking (their identity key): each partner home whose rows are
    read first checks and records them (:mod:`~fedcustomer.privacy_audit.authorization`).
    """
    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"run directory {run} not found")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence must be in [0.5, 1), got {confidence}")
    kind = _kind(run)
    if kind == "query":
        body = audit_query_run(run, releases=releases, seed=seed, confidence=confidence)
    else:  # DP-SGD, horizontal or vertical: canaries and membership inference, the same options
        audit_dpsgd = vertical_audit.audit_vertical if kind == "vertical" else audit_training
        body = audit_dpsgd(
            run,
            homes=Path(homes) if homes is not None else None,
            n_canaries=canaries_count,
            shadows=shadows,
            nonprivate=nonprivate,
            seed=seed,
            confidence=confidence,
            authorize=AuditAuthorizer(run, signer),
        )
    report = {
        "format": FORMAT,
        "run": run.name,
        "confidence": confidence,
        "flagged": any(m["flagged"] for m in body["mechanisms"]),
        **body,
        "plot": PLOT,
        "note": "an empirical lower bound below the claim does not prove the claim; see docs/PRIVACY_AUDIT.md",
    }
    rd = RunDir(run)
    rd.write_json(REPORT, report)
    write_plot(report, run / PLOT)
    _link(rd, report)
    return report


def _link(rd: RunDir, report: dict[str, Any]) -> None:
    """Add (or replace) ``privacy_audit`` in summary.json, or the release file of an analytics run."""
    release = _release_file(rd.root)
    name = release.name if release is not None else "summary.json"
    data = read_json_object(rd.path(name), "")
    data["privacy_audit"] = {
        "file": REPORT,
        "plot": PLOT,
        "flagged": report["flagged"],
        "epsilon_lower_bound": max(m["epsilon_lower_bound"] for m in report["mechanisms"]),
    }
    rd.write_json(name, data)
