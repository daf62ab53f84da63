"""Two-party jobs (PSI, vertical training) on the coordinator, and a party's demo home.

The coordinator's side is the same as a horizontal job's (app directory, ``flwr run``,
wait, read the summary); only the ServerApp and the run config differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.psi.chunked import check_chunk_size
from fedcustomer.psi.intersection_sum import SumParams
from fedcustomer.psi.noisy_count import check_count_epsilon
from fedcustomer.psi.protocol import REVEAL_COUNT, REVEAL_IDS, REVEALS
from fedcustomer.psi.signing import ensure_link_key
from fedcustomer.psi.sum_protocol import REVEAL_SUM
from fedcustomer.vertical.deployed import TWO_PARTY_MODES
from fedcustomer.vertical.job import VerticalJob

TWO_PARTY_SERVERAPP = "fedcustomer.apps.vertical:app"


def two_party_run_config(
    job: VerticalJob,
    *,
    mode: str,
    wait_for_partners: float = 120.0,
    reveal: str = REVEAL_IDS,
    count_epsilon: float | None = None,
    sum_options: dict[str, Any] | None = None,
    psi_chunk_size: int | None = None,
) -> dict[str, Any]:
    """Flat run config (TOML-safe: no None) the two-party ServerApp turns back into the job.

    ``sum_options`` (with ``reveal="sum"``): ``value`` and ``where`` columns, ``epsilon``, ``value_max``.
    """
    if mode not in TWO_PARTY_MODES:
        raise ConfigError(f"--mode must be horizontal, {' or '.join(TWO_PARTY_MODES)}, got {mode!r}")
    reveals = (*REVEALS, REVEAL_SUM)
    if reveal not in reveals or (mode == "vertical" and reveal != REVEAL_IDS):
        raise ConfigError(
            f"--reveal must be one of {', '.join(reveals)} (count only with --mode psi, as is sum), got {reveal!r}"
        )
    cfg: dict[str, Any] = {k.replace("_", "-"): v for k, v in job.to_dict().items() if v is not None}
    cfg["out"] = str(Path(job.out).resolve())
    cfg |= _sum_config(reveal, sum_options or {})
    if count_epsilon is not None:
        if reveal != REVEAL_COUNT:
            raise ConfigError("--count-epsilon needs --reveal count")
        cfg["count-epsilon"] = check_count_epsilon(count_epsilon)
    if psi_chunk_size is not None:  # ids per PSI message (default 1,000,000; 100,000 with --reveal sum)
        cfg["psi-chunk-size"] = check_chunk_size(psi_chunk_size)
    cfg.update(
        {
            "deployment": True,
            "mode": mode,
            "reveal": reveal,
            "resume": False,
            "wait-for-partners": float(wait_for_partners),
        }
    )
    return cfg


def _sum_config(reveal: str, options: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v is not None}
    if reveal != REVEAL_SUM:
        if given:
            raise ConfigError("--value, --where, --sum-epsilon and --value-max go with --reveal sum")
        return {}
    if not given.get("value") or not given.get("where"):
        raise ConfigError(
            "--reveal sum needs --value COLUMN (the label owner's) and --where COLUMN (the other party's)"
        )
    params = SumParams(epsilon=given.get("epsilon", 1.0), value_max=given.get("value_max", 1.0))
    return {"sum-value": str(given["value"]), "sum-where": str(given["where"]), "sum-epsilon": params.epsilon,
            "value-max": params.value_max}  # fmt: skip


def prepare_party_home(
    home: Path,
    partner: str,
    *,
    task: str = "repayment",
    customers: int = 20000,
    shared_fraction: float = 0.7,
    retail_signal: float = 1.5,
    seed: int = 0,
    epsilon: float = 8.0,
    delta: float = 1e-5,
) -> PartnerHome:
    """Give the bank or the retailer its table of the synthetic federation (demo, tests).

    The same tables the one-machine vertical runner provisions (same seed); a real party
    instead ingests its own file with ``fedcustomer init`` / ``ingest``. The home has no
    people yet (a development home, as in-process tests and benchmarks use it);
    ``node prepare`` then gives it its demo admin (:func:`give_demo_admin`).
    """
    from fedcustomer.vertical.data import party_frames, plan_parties, provision_party

    job = VerticalJob(
        task=task,
        customers=customers,
        shared_fraction=shared_fraction,
        retail_signal=retail_signal,
        seed=seed,
        epsilon=epsilon,
        delta=delta,
    )
    plans = {p.name: p for p in plan_parties(job)}
    if partner not in plans:
        raise ConfigError(f"--partner must be one of {', '.join(sorted(plans))} for a vertical job")
    frame = party_frames(job)[partner]
    home_obj = provision_party(Path(home), plans[partner], frame, DatasetBudget(epsilon, delta))
    ensure_link_key(home_obj)
    return home_obj


def demo_admin_key_path(home: PartnerHome, partner: str) -> Path:
    return home.root / "demo-people" / f"{partner}-admin.key"


def give_demo_admin(home: PartnerHome, partner: str, passphrase: str) -> Path:
    """Start the home's people registry with a demo partner admin, ``<partner>-admin``.

    Its identity key (encrypted with ``passphrase``) is written inside the home, so the demo's
    governance acts (``node keys``, ``node pin-peer``, ``node setup``) can be signed like a
    real party's; a real party starts its registry with ``fedcustomer init --identity``.
    """
    from fedcustomer.data.people_admin import PeopleAdmin
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.privacy.access.person_keys import KeySigner, write_identity_file

    path = demo_admin_key_path(home, partner)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    signer = KeySigner.generate()
    write_identity_file(path, signer, passphrase)
    try:
        with PartnerStore.open(home) as store:
            PeopleAdmin(store).create(signer, f"{partner}-admin")
    except BaseException:
        path.unlink(missing_ok=True)
        Path(f"{path}.pub").unlink(missing_ok=True)
        raise
    return path
