"""Audit of a vertical (split-learning) run directory: canaries per mechanism, membership inference.

Why this module: a vertical run claims, per party, the epsilon of its DP-SGD and (label
owner) of its label release; the run's summary.json holds what each party's ledger
charged (noise multiplier, public sample rate, steps per round, rounds, the label
release). :func:`audit_vertical` measures each claimed mechanism with the one-run canary
replay of :mod:`fedcustomer.privacy_audit.vertical_replay`, at that mechanism's own
claimed epsilon, and attacks the joint model the label owner holds with membership
inference (members: aligned training customers; non-members: the held-out aligned
customers, equal counts), beside a non-private replay of the same recipe.

The parties' aligned rows are read from their homes by the governed store, as the job
read them (each read is in the party's audit log, after an entry naming the person who
asked for the audit). Nothing is charged to any ledger;
nothing about a customer is written, only scores' summaries. The passive party's
embeddings carry no claimed epsilon (``embedding_noise`` is not accounted), so they are
listed as not audited rather than measured against a claim they do not make.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy_audit import membership
from fedcustomer.privacy_audit.authorization import AuditAuthorizer
from fedcustomer.privacy_audit.canaries import KINDS, canary_report
from fedcustomer.privacy_audit.json_files import read_json_object
from fedcustomer.privacy_audit.vertical_replay import (
    DPSGDSetting,
    JointInput,
    Recipe,
    label_canaries,
    replay_dpsgd,
)
from fedcustomer.vertical.data import ACTIVE, PASSIVE, load_party_table, split_positions
from fedcustomer.vertical.labels import LabelRelease
from fedcustomer.vertical.models import ActiveModel, BottomMLP, LabelHead

WHAT = {ACTIVE: "joint model", PASSIVE: "bottom model"}


def _setting(run: Path, p: dict[str, Any]) -> DPSGDSetting:
    acct = p.get("accounting") or {}
    try:
        return DPSGDSetting(
            party=str(p["name"]),
            role=str(p["role"]),
            noise_multiplier=float(acct["noise_multiplier"]),
            sample_rate=float(acct["sample_rate"]),
            steps_per_round=int(acct["steps_per_round"]),
            rounds=int(p.get("rounds_trained", 0)),
            max_grad_norm=float(acct["max_grad_norm"]),
            delta=float(acct["delta"]),
        )
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{run / 'summary.json'}: party {p.get('name')!r} lacks its accounting "
            "(noise_multiplier, sample_rate, steps_per_round, max_grad_norm, delta)"
        ) from None


def _label_release(run: Path, p: dict[str, Any]) -> LabelRelease | None:
    label = (p.get("accounting") or {}).get("label_dp") or {}
    if not label.get("enabled"):
        return None
    try:
        return LabelRelease(
            str(label["mechanism"]),
            float(label["epsilon"]),
            keep_probability=label.get("keep_probability"),
            noise_std=label.get("noise_std"),
            bound=label.get("bound"),
        )
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{run / 'summary.json'}: the label release of {p.get('name')!r} is incomplete"
        ) from None


class _Parties:
    """Both parties' homes, aligned tables and final model parts, as the run left them."""

    def __init__(
        self,
        run: Path,
        summary: dict[str, Any],
        config: dict[str, Any],
        homes: Path,
        authorize: AuditAuthorizer,
    ) -> None:
        rows = {str(p.get("role")): p for p in summary.get("partners", [])}
        if set(rows) != {ACTIVE, PASSIVE}:
            raise DataError(f"{run / 'summary.json'} does not name an active and a passive party")
        for p in rows.values():  # both parties agree before either party's rows are read
            if not (homes / str(p["name"]) / "partner.toml").exists():
                raise ConfigError(
                    f"partner home {homes / str(p['name'])} not found; pass --homes DIR (the job's --homes)"
                )
            authorize(PartnerHome(homes / str(p["name"])))
        self.rows = rows
        specs = read_json_object(run / "feature_specs.json", "the features each party trained on")
        parts = (summary.get("model") or {}).get("parts") or {}
        self.homes: dict[str, PartnerHome] = {}
        self.tables: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self.blobs: dict[str, dict[str, Any]] = {}
        for role, p in rows.items():
            name, peer = str(p["name"]), str(rows[PASSIVE if role == ACTIVE else ACTIVE]["name"])
            home_dir = homes / name
            if not (home_dir / "partner.toml").exists():
                raise ConfigError(f"partner home {home_dir} not found; pass --homes DIR (the job's --homes)")
            if name not in specs or name not in parts:
                raise DataError(f"{run}: no feature spec or final model part recorded for party {name!r}")
            home = PartnerHome(home_dir)
            part = home_dir / str(parts[name])
            if not part.exists():
                raise ConfigError(f"{part} not found: party {name!r} keeps no final model part of this run")
            self.blobs[role] = load_weights_only(part, f"{name}'s final model part")
            # a party on its own data kept its spec at home, in its final part (the run holds none)
            spec = FeatureSpec.from_dict(specs[name]["feature_spec"] or self.blobs[role]["feature_spec"])
            table = load_party_table(home, name, str(specs[name]["dataset"]), peer, spec, role == ACTIVE)
            self.homes[role] = home
            self.tables[role] = (np.asarray(table.X, np.float32), table.y)
        # The label head is in the label owner's running state, beside its final part.
        running = (
            homes / str(rows[ACTIVE]["name"]) / str(parts[rows[ACTIVE]["name"]]).replace("-final.pt", ".pt")
        )
        if not running.exists():
            raise ConfigError(f"{running} not found: the label owner keeps no label head of this run")
        self.head_state = load_weights_only(running, "the label owner's label head")
        n = len(self.tables[ACTIVE][0])
        self.train_pos, self.test_pos = split_positions(
            n, float(config.get("test_fraction", 0.25)), int(config.get("seed", 0))
        )
        self.embedding_noise = float(config.get("embedding_noise", 0.0))
        self.embedding_clip = float(config.get("embedding_clip", 1.0))

    def joint_inputs(self) -> np.ndarray:
        """Every aligned customer's input to the joint model: the label owner's columns, the head's score."""
        passive = self.blobs[PASSIVE]
        bottom = BottomMLP(
            self.tables[PASSIVE][0].shape[1], int(passive["embed_dim"]), int(passive["hidden"])
        )
        bottom.load_state_dict(passive["model"])
        active = self.blobs[ACTIVE]
        head = LabelHead(int(active["passive_embed_dim"]), int(active["hidden"]))
        if self.head_state.get("head") is None:
            raise DataError("the label owner's saved state holds no label head")
        head.load_state_dict(self.head_state["head"])
        with torch.no_grad():
            e = bottom(torch.as_tensor(self.tables[PASSIVE][0]))
            if self.embedding_noise > 0:  # the party clips before it noises; the noise itself is not replayed
                e = e * (self.embedding_clip / e.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            score = head(e).unsqueeze(-1).numpy()
        return np.concatenate([self.tables[ACTIVE][0], score.astype(np.float32)], axis=1)

    def joint_model(self) -> JointInput:
        active = self.blobs[ACTIVE]
        own = self.tables[ACTIVE][0].shape[1]
        model = ActiveModel(own, 1, embed_dim=int(active["embed_dim"]), hidden=int(active["hidden"]))
        model.load_state_dict(active["model"])
        return JointInput(model, own)


def audit_vertical(
    run: Path,
    *,
    homes: Path | None = None,
    n_canaries: int,
    shadows: int,
    nonprivate: bool,
    seed: int,
    confidence: float,
    authorize: AuditAuthorizer | None = None,
) -> dict[str, Any]:
    """Canary audit of every claimed mechanism of a vertical run, and membership inference on its joint model."""
    config = read_json_object(run / "config.json", "the job's options")
    summary = read_json_object(run / "summary.json", "the job's summary")
    if not summary.get("dp", config.get("dp", True)):
        raise ConfigError(f"{run} was trained with --no-dp: there is no epsilon to audit")
    if summary.get("status") == "failed" or not int(summary.get("rounds_completed") or 0):
        raise ConfigError(
            f"{run} trained no round to the end (status {summary.get('status')!r}): nothing to audit"
        )
    if n_canaries < 2:
        raise ConfigError(f"--canaries must be at least 2, got {n_canaries}")
    homes = Path(homes) if homes is not None else Path(str(config.get("homes") or run / "partners"))
    if not homes.is_dir():
        raise ConfigError(f"partner homes not found at {homes}; pass --homes DIR (the job's --homes)")
    task = str(config.get("task", summary.get("task")))
    recipe = Recipe(
        task=task,
        lr=float(config.get("lr", 0.05)),
        optimizer=str(config.get("optimizer", "adam")),
        embed_dim=int(config.get("embed_dim", 8)),
        hidden=int(config.get("hidden", 16)),
        seed=int(config.get("seed", 0)),
    )
    parties = _Parties(run, summary, config, homes, authorize or AuditAuthorizer(run, None))
    started = time.perf_counter()
    joint = parties.joint_inputs()
    y_active = np.asarray(parties.tables[ACTIVE][1], np.float32)
    settings = {role: _setting(run, parties.rows[role]) for role in (ACTIVE, PASSIVE)}
    mechanisms: list[dict[str, Any]] = []
    for role in (ACTIVE, PASSIVE):
        setting = settings[role]
        if role == ACTIVE:
            X, y = joint[parties.train_pos], y_active[parties.train_pos]
        else:  # its steps follow the label head on protected labels; any labels exercise the mechanism
            X = parties.tables[PASSIVE][0][parties.train_pos]
            y = (np.random.default_rng(seed).random(len(X)) < 0.5).astype(np.float32)
            if task != "repayment":
                y = y * 5.0
        for kind in KINDS:
            result = replay_dpsgd(setting, recipe, X, y, canaries=n_canaries, kind=kind, seed=seed)
            report = canary_report(result, setting.claimed_epsilon(), setting.delta, confidence)
            report["mechanism"] = f"vertical dpsgd ({setting.party}, {WHAT[role]}): {kind} canaries"
            report["party"] = setting.party
            mechanisms.append(report)
    release = _label_release(run, parties.rows[ACTIVE])
    if release is not None:
        result = label_canaries(
            release, task, canaries=n_canaries, embed_dim=recipe.embed_dim, hidden=recipe.hidden, seed=seed
        )
        report = canary_report(
            result,
            release.epsilon,
            0.0 if release.mechanism != "gaussian" else settings[ACTIVE].delta,
            confidence,
        )
        report.update(
            mechanism=f"vertical label release ({settings[ACTIVE].party}, {release.mechanism})",
            method="one-run canary audit: canary labels through the label release, guessed from the "
            "gradients the label head returns",
            party=settings[ACTIVE].party,
        )
        mechanisms.append(report)
    mia = _membership(parties, joint, y_active, settings[ACTIVE], recipe, shadows, nonprivate, seed)
    audit_seconds = time.perf_counter() - started
    job_seconds = float(sum(summary.get("round_wall_time_s") or []))
    return {
        "run_kind": "vertical",
        "task": task,
        "partners_audited": [settings[r].party for r in (ACTIVE, PASSIVE)],
        "claimed_epsilon_by_partner": {s.party: s.claimed_epsilon() for s in settings.values()},
        "label_release_epsilon": release.epsilon if release is not None else None,
        "epsilon_spent_all_releases": {
            str(p["name"]): p.get("epsilon_spent_all_releases", p.get("epsilon_spent"))
            for p in summary.get("partners", [])
        },
        "not_audited": [
            {
                "release": f"embeddings sent by {settings[PASSIVE].party}",
                "why": "no epsilon is claimed for them (embedding noise is not accounted)",
            }
        ],
        "mechanisms": mechanisms,
        "membership_inference": mia,
        "audit_seconds": round(audit_seconds, 3),
        "job_seconds": round(job_seconds, 3),
        "audit_to_job_time": round(audit_seconds / job_seconds, 3) if job_seconds > 0 else None,
    }


def _membership(
    parties: _Parties,
    joint: np.ndarray,
    y: np.ndarray,
    setting: DPSGDSetting,
    recipe: Recipe,
    shadows: int,
    nonprivate: bool,
    seed: int,
) -> dict[str, Any]:
    data = membership.MembershipData(
        joint[parties.train_pos], y[parties.train_pos], joint[parties.test_pos], y[parties.test_pos]
    )

    def trainer(private: bool) -> membership.ShadowTrainer:
        def train(X: np.ndarray, yy: np.ndarray, s: int) -> torch.nn.Module:
            return replay_dpsgd(setting, recipe, X, yy, canaries=0, seed=s, private=private).model

        return train

    out = {
        "joint_model": membership.membership_inference(
            parties.joint_model(), recipe.task, data, trainer(True), shadows=shadows, seed=seed
        )
    }
    if nonprivate:
        plain = replay_dpsgd(
            setting, recipe, data.X_members, data.y_members, canaries=0, seed=seed, private=False
        )
        out["nonprivate_replay"] = membership.membership_inference(
            plain.model, recipe.task, data, trainer(False), shadows=shadows, seed=seed
        )
    return out
