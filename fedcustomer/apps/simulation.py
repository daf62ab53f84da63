"""Run a horizontal job on Flower's simulation engine: the ServerApp and the partners' ClientApp in one process."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustomer.apps.client import make_client_app
from fedcustomer.apps.server import make_server_app
from fedcustomer.apps.simulation_feed import pace_simulation_feed
from fedcustomer.data.features import FeatureSpec
from fedcustomer.errors import FedCustomerError, FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.secure_noise import NOISE_AHEAD_ENV, draw_ahead_wanted
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import check_budgets, prepare_partners
from fedcustomer.server.run import RoundCallback
from fedcustomer.server.strategies import central_cap_notice

# Address of an existing Ray cluster (e.g. "auto" on a cluster node, or "ray://head:10001"); see docs/SCALE.md.
RAY_ADDRESS_ENV = "FEDCUSTOMER_RAY_ADDRESS"


def run_simulated_job(
    job: JobConfig,
    *,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    verbose: bool = False,
    on_notice: Callable[[str], None] | None = None,
    prepared: tuple[FeatureSpec, list[PartnerHome]] | None = None,
) -> dict[str, Any]:
    """Run ``job`` in Flower's simulation engine; returns the run's summary.json content.

    Notices (a partner budget that is not ``--epsilon``, budgets already spent by earlier
    jobs, a split kept from the homes' first provisioning, a guessed label) go to
    ``on_notice`` before training starts and into summary.json. A job whose partners have
    no budget left is refused before anything runs. ``prepared`` is what
    ``prepare_partners(job)`` returned when the caller already ran it (a benchmark timing it apart).
    """
    from flwr.simulation import run_simulation

    draw_ahead_wanted()  # a setting the workers would refuse is refused before anything is prepared
    notices: list[str] = []
    spec, homes = prepared if prepared is not None else prepare_partners(job, notices)
    if job.dp:
        notices.extend(check_budgets(homes, job))
    cap_notice = central_cap_notice(job)
    if cap_notice is not None:
        notices.append(cap_notice)
    for notice in notices:
        if on_notice is not None:
            on_notice(notice)
    errors: list[BaseException] = []
    server_app = make_server_app(
        job, spec, num_partners=len(homes), on_round=on_round, resume=resume, errors=errors, notices=notices
    )
    client_app = make_client_app([str(h.root.resolve()) for h in homes])
    _quiet_flower(verbose)
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray runs its workers (the partners' ClientApps) at niceness 15; the job's driver and
    # ServerApp run at the caller's. On a busy machine the partners then starve while the
    # coordinator waits on them: the job is one workload, so its workers share its priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    workers = max(1, min(len(homes), os.cpu_count() or 1))
    init_args: dict[str, Any] = {
        "num_cpus": workers,
        "log_to_driver": verbose,
        "include_dashboard": False,
    }
    if os.environ.get(RAY_ADDRESS_ENV):  # join a running Ray cluster instead of starting one here
        init_args = {"address": os.environ[RAY_ADDRESS_ENV], "log_to_driver": verbose}
    pace_simulation_feed()  # pushed messages reach the workers within ~0.01 s; sweeps kept to a CPU share
    # Workers that fill every core leave none for DP-SGD's noise helper thread; the local workers
    # inherit this when Ray starts them (a cluster's nodes take it from their own environment).
    ahead = _noise_ahead_off(workers >= (os.cpu_count() or 1))
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(homes),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
            verbose_logging=verbose,
        )
    except Exception as exc:
        _ledgers_to_rest(homes)
        if errors and isinstance(errors[0], FedCustomerError):
            raise errors[0] from None
        raise FederationError(f"the simulation engine stopped: {exc}") from exc
    finally:
        ahead.restore()
    _ledgers_to_rest(homes)
    if errors:
        if isinstance(errors[0], FedCustomerError):
            raise errors[0]
        raise FederationError(f"the coordinator failed: {type(errors[0]).__name__}: {errors[0]}") from errors[
            0
        ]
    summary_path = Path(job.out) / "summary.json"
    if not summary_path.exists():
        raise FederationError("the job ended without writing summary.json; see the log above")
    return json.loads(summary_path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class _EnvSetting:
    """An environment variable as it was before a job set it, to put back after the job."""

    name: str
    before: str | None

    def restore(self) -> None:
        if self.before is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.before


def _noise_ahead_off(every_core_busy: bool) -> _EnvSetting:
    """Turn DP-SGD's noise drawn ahead off for the job's workers when they fill every core,
    unless the caller chose a setting (see ``fedcustomer.privacy.dp.secure_noise``)."""
    setting = _EnvSetting(NOISE_AHEAD_ENV, os.environ.get(NOISE_AHEAD_ENV))
    if every_core_busy and setting.before is None:
        os.environ[NOISE_AHEAD_ENV] = "off"
    return setting


def _ledgers_to_rest(homes: list[Any]) -> None:
    """The engine ends its workers without closing what they held: a partner's ledger may keep the
    write-ahead log its job held (durable as it is, see clients/ledger_holds.py); fold it back in."""
    from fedcustomer.privacy.dp.ledger_file import put_to_rest

    for home in homes:
        try:
            put_to_rest(home.ledger_path)
        except sqlite3.Error as exc:  # the log stays durable; the next use of the ledger folds it in
            logging.getLogger(__name__).debug("ledger %s not folded back: %s", home.ledger_path, exc)


def _quiet_flower(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
