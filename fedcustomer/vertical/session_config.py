"""What the coordinator tells a party about a vertical job (decoded from a ConfigRecord).

A preset job (synthetic, UCI credit) names each party's dataset and feature spec; a job on
the parties' own data names the dataset each declared and no spec: the party reads its own
from its home (:mod:`fedcustomer.vertical.declaration`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import ConfigError


@dataclass(frozen=True)
class SessionConfig:
    """What the coordinator tells a party about the job (decoded from a ConfigRecord)."""

    run_id: str
    role: str
    name: str
    peer: str
    dataset: str
    spec: FeatureSpec | None  # None: the party's own, declared in its home (vertical.declaration)
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
    label_epsilon: float = 1.0
    label_bound: float = 12.0
    embedding_noise: float = 0.0
    embedding_clip: float = 1.0
    max_noise_multiplier: float = 50.0
    test_fraction: float = 0.25
    seed: int = 0
    steps_per_round: int = 0  # 0 until the label owner announced the sample rate
    sample_rate: float = 0.0
    reserve_epsilon: float = 0.0  # left unspent for a later release in the same job (the baseline)
    # A job of the label owner alone run beside another of its jobs (the comparison model in the
    # joint job's idle slots): that job's run id and rounds, whose unpaid rounds its noise leaves room for.
    alongside_run: str = ""
    alongside_rounds: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SessionConfig:
        try:
            return cls(
                run_id=str(cfg["run-id"]),
                role=str(cfg["role"]),
                name=str(cfg["name"]),
                peer=str(cfg["peer"]),
                dataset=str(cfg["dataset"]),
                spec=FeatureSpec.from_dict(json.loads(str(cfg["feature-spec"])))
                if "feature-spec" in cfg
                else None,
                task=str(cfg["task"]),
                rounds=int(cfg["rounds"]),
                batch_size=int(cfg["batch-size"]),
                lr=float(cfg.get("lr", 0.05)),
                optimizer=str(cfg.get("optimizer", "adam")),
                embed_dim=int(cfg.get("embed-dim", 8)),
                hidden=int(cfg.get("hidden", 16)),
                passive_embed_dim=int(cfg.get("passive-embed-dim", 8)),
                dp=bool(cfg.get("dp", True)),
                max_grad_norm=float(cfg.get("max-grad-norm", 1.0)),
                label_dp=bool(cfg.get("label-dp", True)),
                label_epsilon=float(cfg.get("label-epsilon", 1.0)),
                label_bound=float(cfg.get("label-bound", 12.0)),
                embedding_noise=float(cfg.get("embedding-noise", 0.0)),
                embedding_clip=float(cfg.get("embedding-clip", 1.0)),
                max_noise_multiplier=float(cfg.get("max-noise-multiplier", 50.0)),
                test_fraction=float(cfg.get("test-fraction", 0.25)),
                seed=int(cfg.get("seed", 0)),
                steps_per_round=int(cfg.get("steps-per-round", 0)),
                sample_rate=float(cfg.get("sample-rate", 0.0)),
                reserve_epsilon=float(cfg.get("reserve-epsilon", 0.0)),
                alongside_run=str(cfg.get("alongside-run", "")),
                alongside_rounds=int(cfg.get("alongside-rounds", 0)),
            )
        except KeyError as exc:
            raise ConfigError(f"vertical instructions lack {exc.args[0]!r}") from None
