"""A partner's node: a Flower SuperNode running our ClientApp against the partner's own home.

The node connects out to the coordinator (no inbound port is opened to the outside:
its local port only serves Flower's ClientApp process on the same machine), proves
its identity with its private key and checks the coordinator's TLS certificate
against the CA it was given.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from fedcustomer.deploy.flower import executable, flower_env, parse_address, start
from fedcustomer.deploy.pki import NodeKeys, check_node_private_key
from fedcustomer.errors import ConfigError, DataError, FederationError, KeyMaterialError
from fedcustomer.jobs.config import (
    DEFAULT_DATA,
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_PARTNERS,
    DEFAULT_SEED,
    DEFAULT_SPLIT,
    DEFAULT_TASK,
)
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget


def prepare_node_home(
    home: Path,
    partner: str,
    *,
    task: str = DEFAULT_TASK,
    data: str = DEFAULT_DATA,
    index: int = 0,
    partners: int = DEFAULT_PARTNERS,
    seed: int = DEFAULT_SEED,
    split: str = DEFAULT_SPLIT,
    epsilon: float = DEFAULT_EPSILON,
    delta: float = DEFAULT_DELTA,
    data_dir: Path | None = None,
) -> PartnerHome:
    """Give one partner its share of a built-in data source (its split ``index`` of ``partners``).

    The same split the simulation engine uses (same seed), provisioned through the governed
    store; a real partner instead uses ``fedcustomer init`` / ``ingest`` with its own data.
    """
    from fedcustomer.data.provision import provision_partner
    from fedcustomer.data.sources import load_partitions

    if not 0 <= index < partners:
        raise ConfigError(f"--index must be in [0, {partners - 1}] for --partners {partners}, got {index}")
    spec, datasets = load_partitions(task, data, partners, split=split, seed=seed, data_dir=data_dir)
    ds = datasets[index]
    if len(ds.train) == 0:
        raise DataError(f"split {index} has no training rows; use fewer partners or more data")
    home_obj, _ = provision_partner(
        Path(home),
        partner,
        source=data,
        task=task,
        spec=spec,
        train=ds.train,
        test=ds.test,
        budget=DatasetBudget(epsilon, delta),
    )
    return home_obj


def supernode_command(
    home: Path,
    *,
    superlink: str,
    root_cert: Path | None,
    auth_key: Path | None,
    runtime_port: int = 9094,
    insecure: bool = False,
    max_retries: int | None = None,
    health_port: int | None = None,
) -> list[str]:
    """The flower-supernode command line (flags as in Flower 1.42's ``flower-supernode --help``)."""
    parse_address(superlink)
    home_abs = Path(home).resolve()
    if not PartnerHome(home_abs).config_path.exists():
        raise ConfigError(
            f"{home_abs} is not a partner home (no partner.toml); run `fedcustomer node prepare` or `init`"
        )
    cmd = [
        executable("flower-supernode"),
        "--superlink",
        superlink,
        "--port",
        str(runtime_port),
        "--node-config",
        f'partner-home="{home_abs}"',
    ]
    if insecure:
        cmd.append("--insecure")
    else:
        if root_cert is None or not Path(root_cert).is_file():
            raise KeyMaterialError(
                f"--root-cert {root_cert}: the coordinator's CA certificate file is needed for TLS"
            )
        cmd += ["--root-certificates", str(Path(root_cert).resolve())]
    if auth_key is not None:
        check_node_private_key(Path(auth_key))
        cmd += ["--auth-supernode-private-key", str(Path(auth_key).resolve())]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if health_port is not None:
        cmd += ["--health-server-address", f"127.0.0.1:{health_port}"]
    return cmd


def default_auth_key(home: Path) -> Path:
    return NodeKeys.in_dir(PartnerHome(home).keys_dir).private_key


def start_supernode(
    home: Path,
    *,
    superlink: str,
    root_cert: Path | None,
    auth_key: Path | None,
    runtime_port: int,
    insecure: bool = False,
    log_path: Path | None = None,
    max_retries: int | None = None,
    partner: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start the node in the background (log in the home's state dir unless ``log_path``)."""
    home_obj = PartnerHome(home)
    if partner is not None and home_obj.config_path.exists() and home_obj.config().name != partner:
        raise ConfigError(
            f"--partner {partner!r} does not match the home's partner {home_obj.config().name!r}"
        )
    cmd = supernode_command(
        home,
        superlink=superlink,
        root_cert=root_cert,
        auth_key=auth_key,
        runtime_port=runtime_port,
        insecure=insecure,
        max_retries=max_retries,
    )
    log_path = log_path or home_obj.state_dir / "supernode.log"
    # Flower installs the job's app bundle under FLWR_HOME: keep it inside this partner's home.
    return start(cmd, log_path, flower_env(home_obj.state_dir / "flwr-home"), cwd=home_obj.state_dir)


def wait_connected(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> int:
    """Wait for the node to be accepted; returns its node id, or raises with the log's reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        for line in text.splitlines():
            if "SuperNode ID:" in line:
                return int(line.rsplit(":", 1)[1].strip())
        if proc.poll() is not None:
            raise FederationError(f"the node exited with code {proc.returncode}: {text.strip()[-400:]}")
        time.sleep(0.2)
    raise FederationError(f"the node did not connect within {timeout:g} s; see {log_path}")
