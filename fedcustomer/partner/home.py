"""A partner's home directory: the one place a partner node keeps its state.

Layout (see README, "Partner home")::

    partner.toml   name, the partner's privacy budget (one for all its customers) and its accountant
                   (rdp or pld), policy file,
                   where the keys live ([keyring]: the key file, or a PKCS#11 token)
                   and second locations for signed audit checkpoints ([audit])
    store.db       governed customer store (SQLite)
    people.jsonl   signed registry of people and services: identity keys and roles
    keys/          keyring, pseudonym key, audit signing key, node's service identity (0600)
    ledger.db      every privacy charge, with accountant inputs
    audit/         hash-chained audit log and signed checkpoints
    state/         node-local state: cached updates, checkpoints
"""

from __future__ import annotations

import copy
import fcntl
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcustomer.common.files import atomic_write_text
from fedcustomer.errors import ConfigError
from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig
from fedcustomer.privacy.dp.budget import DatasetBudget

if TYPE_CHECKING:  # the ledger pulls in the accountant (torch, opacus): only when a ledger is opened
    from fedcustomer.privacy.audit.anchors import AnchorSinks
    from fedcustomer.privacy.audit.keys import CheckpointSigner
    from fedcustomer.privacy.audit.reach import ReachRecord
    from fedcustomer.privacy.audit.writer import AuditLog
    from fedcustomer.privacy.dp.accountants import Accountant
    from fedcustomer.privacy.dp.ledger import BudgetLedger
    from fedcustomer.privacy.dp.ledger_file import WalHold


@dataclass
class PartnerConfig:
    """Contents of ``partner.toml``.

    The privacy unit is the partner's customer: one budget covers every release about
    the partner's customers, whatever dataset or file it came from, so renaming a file
    or ingesting the same people twice cannot start a fresh budget. Homes written by
    earlier versions kept one ``[budgets.NAME]`` section per dataset; they are read as
    the most restrictive of those sections (see :func:`_migrate`).
    """

    name: str
    budget: DatasetBudget | None = None
    policy_file: str | None = None
    migrated_from: dict[str, DatasetBudget] = field(default_factory=dict)
    keyring: KeyringConfig = field(default_factory=KeyringConfig)
    # [audit]: second locations for every signed checkpoint (see privacy/audit/anchors.py)
    anchor_file: str | None = None
    anchor_syslog: str | bool | None = None
    # [budget] accountant = "rdp" | "pld" (and pld_discretization): how the budget's spend is composed
    accountant: str = "rdp"
    pld_discretization: float | None = None
    # [secagg] trust = true: the partner accepts the SecAgg+ trust assumption, so a distributed-DP
    # round is charged with its guarantee against the coordinator (full noise), not the weaker one
    # against a single update (its own noise share). See docs/PRIVACY.md.
    secagg_trust: bool = False
    # [training] allow_non_private = true: the partner lets a job train on its customers WITHOUT DP
    # (``--no-dp``, baselines). Off unless written: such an update has no epsilon bound at all, so the
    # coordinator must not be able to ask for one. Simulated homes (one machine) are created with it.
    allow_non_private: bool = False

    def accountant_spec(self) -> Accountant:
        """The accountant partner.toml selects (RDP unless it says otherwise)."""
        from fedcustomer.privacy.dp.accountants import accountant_named

        return accountant_named(self.accountant, self.pld_discretization)

    def budget_for(self, dataset: str | None = None) -> DatasetBudget:
        """The partner's budget; ``dataset`` only names what was asked for in the error."""
        if self.budget is None:
            what = f" (asked for dataset {dataset!r})" if dataset else ""
            raise ConfigError(
                f"partner {self.name!r} has no privacy budget{what}; set the budget that covers every release about "
                f"its customers with 'fedcustomer budget set --home HOME --epsilon E --delta D'"
            )
        return self.budget


def kept_budget_notice(config: PartnerConfig, requested: DatasetBudget) -> str | None:
    """What to tell the user when a job asks for ``requested`` but the partner keeps its own budget.

    None when the partner has no budget yet or its budget equals ``requested``. A job never
    changes a partner's budget: that is ``budget set``, by the partner's own people.
    """
    if config.budget is None or config.budget == requested:
        return None
    return (
        f"partner {config.name!r} keeps its own budget epsilon {config.budget.epsilon:g}, delta "
        f"{config.budget.delta:g} (set when its home was created or by `budget set`); the requested epsilon "
        f"{requested.epsilon:g}, delta {requested.delta:g} is not used, and this job may spend all of the "
        "partner's budget that is left"
    )


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
    def people_path(self) -> Path:
        """The signed registry of people and services (identity keys and roles)."""
        return self.root / "people.jsonl"

    @property
    def nonces_path(self) -> Path:
        """Nonces of signed requests already used (replays are refused)."""
        return self.state_dir / "nonces.db"

    def service_key_path(self, role: str) -> Path:
        """The node's own identity key for one pipeline role (training, analytics)."""
        return self.keys_dir / f"service_{role}.pem"

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
    @contextmanager
    def config_change(self) -> Iterator[PartnerConfig]:
        """partner.toml read under an exclusive lock, for a read-change-write by one governance command.

        Two commands that each read the file, wait (a passphrase, the audit log) and write it back
        would otherwise lose one change; the lock file lives in ``state/`` beside the nonces.
        """
        self.state_dir.mkdir(exist_ok=True)
        fd = os.open(self.state_dir / "partner.toml.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.config()
        finally:
            os.close(fd)  # closing releases the lock

    def write_config_recorded(self, config: PartnerConfig, record: Callable[[], None]) -> None:
        """Write ``config``, then ``record`` its audit entry; if the entry cannot be written the previous
        file is put back, so neither an unlogged change nor a logged change that did not happen is left."""
        previous = self.config_path.read_text(encoding="utf-8")
        self.write_config(config)
        try:
            record()
        except BaseException:
            atomic_write_text(self.config_path, previous)
            raise

    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        name: str,
        budget: DatasetBudget | None = None,
        policy_file: str | None = None,
        *,
        allow_non_private: bool = False,
    ) -> PartnerHome:
        """Create the directory skeleton and write ``partner.toml``."""
        home = cls(root)
        home.root.mkdir(parents=True, exist_ok=True)
        for sub in (home.keys_dir, home.audit_dir, home.state_dir):
            sub.mkdir(exist_ok=True)
        os.chmod(home.keys_dir, 0o700)
        home.write_config(
            PartnerConfig(
                name=name, budget=budget, policy_file=policy_file, allow_non_private=allow_non_private
            )
        )
        return home

    def write_config(self, config: PartnerConfig) -> None:
        lines = [f"name = {_toml_str(config.name)}"]
        if config.policy_file:
            lines.append(f"policy_file = {_toml_str(config.policy_file)}")
        if config.budget is not None:
            lines += [
                "",
                "# One budget for every release about this partner's customers (all datasets, all jobs).",
                "[budget]",
                f"epsilon = {config.budget.epsilon!r}",
                f"delta = {config.budget.delta!r}",
            ]
            if config.accountant != "rdp" or config.pld_discretization is not None:
                lines.append(
                    f"accountant = {_toml_str(config.accountant)}  # how the spend is composed: rdp or pld"
                )
            if config.pld_discretization is not None:
                lines.append(f"pld_discretization = {config.pld_discretization!r}")
        lines += config.keyring.toml_lines()
        if config.anchor_file or config.anchor_syslog:
            lines += [
                "",
                "# Every signed audit checkpoint is also written here (off this volume).",
                "[audit]",
            ]
            if config.anchor_file:
                lines.append(f"anchor_file = {_toml_str(config.anchor_file)}")
            if config.anchor_syslog:
                syslog = config.anchor_syslog
                lines.append(f"anchor_syslog = {'true' if syslog is True else _toml_str(str(syslog))}")
        if config.secagg_trust:
            lines += [
                "",
                "# Distributed DP rounds are charged assuming SecAgg+ holds (docs/PRIVACY.md).",
                "[secagg]",
                "trust = true",
            ]
        if config.allow_non_private:
            lines += [
                "",
                "# Jobs may train on these customers WITHOUT differential privacy (--no-dp): no epsilon bound.",
                "[training]",
                "allow_non_private = true",
            ]
        atomic_write_text(self.config_path, "\n".join(lines) + "\n")

    def config(self) -> PartnerConfig:
        """partner.toml as it is now (a fresh object each call: callers may change and write it back)."""
        raw = _parsed_toml(self.config_path, self.root)
        if "name" not in raw:
            raise ConfigError(f"{self.config_path}: missing 'name'")
        _refuse_unknown_keys(raw, self.config_path)
        try:
            budget = _budget(raw["budget"]) if "budget" in raw else None
            legacy = {str(ds): _budget(b) for ds, b in raw.get("budgets", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.config_path}: a budget needs numeric epsilon and delta ({exc})"
            ) from None
        if budget is None and legacy:
            budget = _migrate(legacy)
        accountant, pld_discretization = _accountant(raw.get("budget", {}), self.config_path)
        keyring = KeyringConfig.from_mapping(raw.get("keyring", {}), str(self.config_path))
        audit = raw.get("audit", {})
        if not isinstance(audit, dict):
            raise ConfigError(f"{self.config_path}: [audit] must be a table")
        anchor_file, anchor_syslog = audit.get("anchor_file"), audit.get("anchor_syslog")
        if not isinstance(anchor_file, str | None):
            raise ConfigError(f"{self.config_path}: [audit] anchor_file must be a file path")
        if not isinstance(anchor_syslog, str | bool | None):
            raise ConfigError(f"{self.config_path}: [audit] anchor_syslog must be true or an address")
        secagg = raw.get("secagg", {})
        if not isinstance(secagg, dict) or not isinstance(secagg.get("trust", False), bool):
            raise ConfigError(f"{self.config_path}: [secagg] trust must be true or false")
        training = raw.get("training", {})
        if not isinstance(training, dict) or not isinstance(training.get("allow_non_private", False), bool):
            raise ConfigError(f"{self.config_path}: [training] allow_non_private must be true or false")
        return PartnerConfig(
            name=str(raw["name"]),
            budget=budget,
            policy_file=raw.get("policy_file"),
            migrated_from=legacy,
            keyring=keyring,
            anchor_file=anchor_file,
            anchor_syslog=anchor_syslog,
            accountant=accountant,
            pld_discretization=pld_discretization,
            secagg_trust=bool(secagg.get("trust", False)),
            allow_non_private=bool(training.get("allow_non_private", False)),
        )

    def keyring_config(self) -> KeyringConfig:
        """Where this home's keys live; the key file when partner.toml is absent or says nothing."""
        return self.config().keyring if self.config_path.exists() else KeyringConfig()

    def audit_signer(self) -> CheckpointSigner | None:
        """The audit signing key on the token when [keyring] puts it there; None: the key file in keys/."""
        keyring = self.keyring_config()
        if not keyring.audit_on_token:
            return None
        from fedcustomer.privacy.crypto.keyring_factory import open_audit_signer

        return open_audit_signer(keyring, self.config().name)

    def anchor_sink(self) -> AnchorSinks | None:
        """Where every signed audit checkpoint also goes (partner.toml ``[audit]``); None: nowhere else."""
        from fedcustomer.privacy.audit.anchors import anchor_sinks

        if not self.config_path.exists():
            return None
        config = self.config()
        return anchor_sinks(config.name, file=config.anchor_file, syslog=config.anchor_syslog)

    def open_audit_log(self, reach: ReachRecord | None = None) -> AuditLog:
        """The home's audit log for appending: its signing key (file or token), reach and anchor sinks.

        ``reach``: where the log's reach is recorded (default: this home's ``store.db``, a
        connection per update; a node holding the log for a job passes a held one)."""
        from fedcustomer.privacy.audit.reach import HomeReach
        from fedcustomer.privacy.audit.writer import AuditLog

        return AuditLog.open(
            self.audit_dir,
            keys_dir=self.keys_dir,
            reach=reach if reach is not None else HomeReach.for_home(self),
            signer=self.audit_signer(),
            anchor_sink=self.anchor_sink(),
        )

    def ledger(
        self, dataset: str, budget: DatasetBudget | None = None, *, hold: WalHold | None = None
    ) -> BudgetLedger:
        """The partner's ledger, new charges recorded under ``dataset``, composed against the
        partner's one budget (partner.toml's unless ``budget`` is given, e.g. one being proposed);
        ``hold``: the connection a job holds for the ledger file, lent from the start."""
        from fedcustomer.privacy.dp.ledger import BudgetLedger

        config = self.config()
        return BudgetLedger(
            self.ledger_path,
            dataset,
            budget if budget is not None else config.budget_for(dataset),
            config.accountant_spec(),
            hold=hold,
        )

    def ensure_budget(self, budget: DatasetBudget) -> tuple[DatasetBudget, str | None]:
        """Give the partner ``budget`` if it has none; otherwise keep its own and say so when they differ.

        Returns the budget in force and a notice for the user (None when it equals ``budget``).
        """
        config = self.config()
        if config.budget is None:
            config.budget = budget
            self.write_config(config)
            return budget, None
        if config.migrated_from:
            self.write_config(config)  # rewrite the legacy per-dataset sections as the one budget
        return config.budget, kept_budget_notice(config, budget)

    def __repr__(self) -> str:
        return f"PartnerHome({str(self.root)!r})"


_PARSED_LOCK = threading.Lock()
_PARSED: dict[str, tuple[str, dict[str, Any]]] = {}
_PARSED_MAX = 256


def _parsed_toml(path: Path, root: Path) -> dict[str, Any]:
    """``path`` parsed; parsing is skipped when the file holds exactly the text parsed last time.

    A node reads partner.toml several times a round (budget, keyring, anchor sinks, the store's
    stamp); reading it is cheap, parsing it is not. The cache is keyed by the file's whole text, so
    any change is seen at once. Callers get their own deep copy to change."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # the latter: the "home" is a file
        raise ConfigError(f"{path} not found: is {root} a partner home?") from None
    key = str(path.absolute())
    with _PARSED_LOCK:
        cached = _PARSED.get(key)
    if cached is None or cached[0] != text:
        try:
            cached = (text, tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        with _PARSED_LOCK:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[key] = cached
    return copy.deepcopy(cached[1])


def _budget(raw: object) -> DatasetBudget:
    if not isinstance(raw, dict):
        raise TypeError("expected a table")
    return DatasetBudget(float(raw["epsilon"]), float(raw["delta"]))


# What partner.toml may hold (``[keyring]`` checks its own fields). Anything else is refused rather
# than ignored: a mistyped key (``[secgg]``, ``epsilom``) would otherwise change nothing, silently,
# and be dropped the next time a governance command writes the file back.
_TOP_LEVEL = {"name", "policy_file", "budget", "budgets", "keyring", "audit", "secagg", "training"}
_SECTION_KEYS = {
    "budget": {"epsilon", "delta", "accountant", "pld_discretization"},
    "audit": {"anchor_file", "anchor_syslog"},
    "secagg": {"trust"},
    "training": {"allow_non_private"},
}


def _refuse_unknown_keys(raw: dict[str, Any], where: Path) -> None:
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) or section(s) {', '.join(unknown)}; partner.toml holds "
            f"{', '.join(sorted(_TOP_LEVEL))}"
        )
    for section, known in _SECTION_KEYS.items():
        table = raw.get(section)
        if isinstance(table, dict) and (extra := sorted(set(table) - known)):
            raise ConfigError(
                f"{where}: [{section}] has unknown field(s) {', '.join(extra)}; it holds {', '.join(sorted(known))}"
            )


def _accountant(raw: object, where: Path) -> tuple[str, float | None]:
    """``accountant`` and ``pld_discretization`` of the [budget] table, checked."""
    if not isinstance(raw, dict):
        return "rdp", None
    name, interval = raw.get("accountant", "rdp"), raw.get("pld_discretization")
    if name not in ("rdp", "pld"):
        raise ConfigError(f'{where}: [budget] accountant must be "rdp" or "pld", got {name!r}')
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (0 < interval <= 0.1)
    ):
        raise ConfigError(
            f"{where}: [budget] pld_discretization must be a number in (0, 0.1], got {interval!r}"
        )
    return str(name), None if interval is None else float(interval)


def _migrate(legacy: dict[str, DatasetBudget]) -> DatasetBudget:
    """Per-dataset budgets of an older home become one: the most restrictive of them.

    Sound because every earlier charge is now composed against this single target.
    """
    return DatasetBudget(min(b.epsilon for b in legacy.values()), min(b.delta for b in legacy.values()))


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
