"""A partner's home directory: the one place a partner node keeps its state.

Layout (see README, "Partner home")::

    partner.toml   name, budget targets per dataset, policy file
    store.db       governed customer store (SQLite)
    keys/          keyring, pseudonym key, audit signing key (0600 files)
    ledger.db      every privacy charge, with accountant inputs
    audit/         hash-chained audit log and signed checkpoints
    state/         node-local state: cached updates, checkpoints
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedcustomer.errors import ConfigError


@dataclass(frozen=True)
class DatasetBudget:
    """The (epsilon, delta) a partner allows for everything released about one dataset."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (self.epsilon > 0):
            raise ConfigError(f"epsilon must be > 0, got {self.epsilon}")
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")


@dataclass
class PartnerConfig:
    """Contents of ``partner.toml``."""

    name: str
    budgets: dict[str, DatasetBudget] = field(default_factory=dict)
    policy_file: str | None = None

    def budget_for(self, dataset: str) -> DatasetBudget:
        try:
            return self.budgets[dataset]
        except KeyError:
            raise ConfigError(
                f"partner {self.name!r} has no privacy budget for dataset {dataset!r}; "
                f"add [budgets.{dataset}] epsilon/delta to partner.toml"
            ) from None


class PartnerHome:
    """Paths and configuration of one partner node's home directory."""

    CONFIG_NAME = "partner.toml"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # --- layout -------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / self.CONFIG_NAME

    @property
    def store_path(self) -> Path:
        return self.root / "store.db"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.db"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    # --- configuration ------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        name: str,
        budgets: dict[str, DatasetBudget] | None = None,
        policy_file: str | None = None,
    ) -> "PartnerHome":
        """Create the directory skeleton and write ``partner.toml``."""
        home = cls(root)
        home.root.mkdir(parents=True, exist_ok=True)
        for sub in (home.keys_dir, home.audit_dir, home.state_dir):
            sub.mkdir(exist_ok=True)
        os.chmod(home.keys_dir, 0o700)
        home.write_config(PartnerConfig(name=name, budgets=dict(budgets or {}), policy_file=policy_file))
        return home

    def write_config(self, config: PartnerConfig) -> None:
        lines = [f"name = {_toml_str(config.name)}"]
        if config.policy_file:
            lines.append(f"policy_file = {_toml_str(config.policy_file)}")
        for dataset, budget in sorted(config.budgets.items()):
            lines += ["", f"[budgets.{_toml_key(dataset)}]", f"epsilon = {budget.epsilon!r}", f"delta = {budget.delta!r}"]
        tmp = self.config_path.with_suffix(".toml.tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.config_path)

    def config(self) -> PartnerConfig:
        if not self.config_path.exists():
            raise ConfigError(f"{self.config_path} not found: is {self.root} a partner home?")
        try:
            raw = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.config_path}: invalid TOML: {exc}") from None
        if "name" not in raw:
            raise ConfigError(f"{self.config_path}: missing 'name'")
        budgets = {
            str(ds): DatasetBudget(float(b["epsilon"]), float(b["delta"]))
            for ds, b in raw.get("budgets", {}).items()
        }
        return PartnerConfig(name=str(raw["name"]), budgets=budgets, policy_file=raw.get("policy_file"))

    def __repr__(self) -> str:
        return f"PartnerHome({str(self.root)!r})"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_str(key)
