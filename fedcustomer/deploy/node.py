"""A partner's node: a Flower SuperNode running our ClientApp against the partner's own home.

The node connects out to the coordinator (no inbound port is opened to the outside:
its local port only serves Flower's ClientApp process on the same machine), proves
its identity with its private key and checks the coordinator's TLS certificate
against the CA it was given.

How the node runs its ClientApp (``--clientapp``): ``warm`` (the default where ``os.fork`` exists)
runs the SuperNode in Flower's ``process`` isolation with a warm executor beside it, supervised
(:mod:`fedcustomer.deploy.node_supervisor`, :mod:`fedcustomer.deploy.warm_clientapp`): the imports are
paid once per node and a run's party state stays in memory between its messages. ``subprocess`` is
Flower's default: a fresh ``flwr-clientapp`` process per message.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.deploy.flower import executable, flower_env, parse_address, start
from fedcustomer.deploy.node_supervisor import executor_command, supervise
from fedcustomer.deploy.pki import NodeKeys, check_node_private_key
from fedcustomer.deploy.supernode_poll import ADAPTIVE, POLL_MODES
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

WARM, SUBPROCESS = "warm", "subprocess"
CLIENTAPP_MODES = (WARM, SUBPROCESS)
# warm needs fork (POSIX); elsewhere Flower's own per-message process is the only choice
DEFAULT_CLIENTAPP = WARM if hasattr(os, "fork") and sys.platform != "darwin" else SUBPROCESS
SECRET_FILE = "runtime-api.secret"


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
    clientapp: str = SUBPROCESS,
    secret_file: Path | None = None,
    poll: str = ADAPTIVE,
) -> list[str]:
    """The flower-supernode command line (flags as in Flower 1.42's ``flower-supernode --help``).

    ``clientapp="warm"``: process isolation (no executor of Flower's own), task polling signed with
    the secret in ``secret_file`` (see :func:`write_runtime_secret`). ``poll="adaptive"``: Flower's
    SuperNode run through :mod:`fedcustomer.deploy.supernode_poll` (short waits after traffic);
    ``"flower"``: the ``flower-supernode`` executable itself.
    """
    parse_address(superlink)
    check_clientapp(clientapp)
    check_poll(poll)
    home_abs = Path(home).resolve()
    if not PartnerHome(home_abs).config_path.exists():
        raise ConfigError(
            f"{home_abs} is not a partner home (no partner.toml); run `fedcustomer node prepare` or `init`"
        )
    supernode = [executable("flower-supernode")]
    if poll == ADAPTIVE:
        supernode = [sys.executable, "-m", "fedcustomer.deploy.supernode_poll", "--poll", poll, "--"]
    cmd = [
        *supernode,
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
    if clientapp == WARM:
        cmd += ["--isolation", "process"]
        if secret_file is not None:
            cmd += ["--superexec-auth-secret-file", str(Path(secret_file).resolve())]
    return cmd


def check_clientapp(clientapp: str) -> str:
    if clientapp not in CLIENTAPP_MODES:
        raise ConfigError(f"--clientapp must be {' or '.join(CLIENTAPP_MODES)}, got {clientapp!r}")
    if clientapp == WARM and not hasattr(os, "fork"):
        raise ConfigError("--clientapp warm needs os.fork (Linux); use --clientapp subprocess here")
    return clientapp


def check_poll(poll: str) -> str:
    if poll not in POLL_MODES:
        raise ConfigError(f"--poll must be {' or '.join(POLL_MODES)}, got {poll!r}")
    return poll


def write_runtime_secret(home: Path) -> Path:
    """A fresh random secret for this node's Runtime API (only its own executor may take its tasks)."""
    path = PartnerHome(home).state_dir / SECRET_FILE
    return atomic_write_bytes(path, secrets.token_bytes(32), mode=0o600, exact=True)


def warm_node_command(supernode_cmd: list[str], runtime_port: int, secret_file: Path) -> list[str]:
    """The supervisor's command line: it starts ``supernode_cmd`` and the warm executor beside it."""
    return [
        sys.executable,
        "-m",
        "fedcustomer.deploy.node_supervisor",
        "--runtime-api-address",
        f"127.0.0.1:{runtime_port}",
        "--secret-file",
        str(Path(secret_file).resolve()),
        "--",
        *supernode_cmd,
    ]


def run_warm_node(
    supernode_cmd: list[str], runtime_port: int, secret_file: Path, env: dict[str, str], cwd: Path
) -> int:
    """Run the node in the foreground (``fedcustomer node start``): SuperNode + warm executor."""
    address = f"127.0.0.1:{runtime_port}"
    return supervise(
        supernode_cmd,
        lambda pid: executor_command(address, Path(secret_file).resolve(), pid),
        env=env,
        cwd=cwd,
    )


def default_auth_key(home: Path) -> Path:
    return NodeKeys.in_dir(PartnerHome(home).keys_dir).private_key


def node_exit_message(code: int, home: Path, superlink: str, root_cert: Path | None) -> str:
    """Why a SuperNode that stopped on its own may have stopped, and what to check.

    Flower reports a refused TLS certificate and an unregistered node key alike (its exit code 305,
    "could not establish a connection"), so a node that stops says where each of the three usual
    causes is fixed instead of leaving the user with Flower's code.
    """
    public_key = NodeKeys.in_dir(PartnerHome(home).keys_dir).public_key
    cert = f"--root-cert {root_cert}" if root_cert is not None else "--root-cert"
    return (
        f"the node exited with code {code}; see its log above. If it could not connect to the coordinator "
        f"(Flower: 'Failed to initialize the connection to the SuperLink'), check: the address --superlink "
        f"{superlink}; that {cert} is the coordinator's CA certificate (ca.crt from `fedcustomer certs`; "
        f"'CERTIFICATE_VERIFY_FAILED' means it is not); that the coordinator registered this node's key "
        f"('Failed to activate SuperNode' means it did not): `fedcustomer coordinator register {public_key} "
        f"--name {PartnerHome(home).config().name}` on the coordinator"
    )


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
    clientapp: str = DEFAULT_CLIENTAPP,
    poll: str = ADAPTIVE,
) -> subprocess.Popen[bytes]:
    """Start the node in the background (log in the home's state dir unless ``log_path``).

    With ``clientapp="warm"`` the process returned is the node's supervisor; it, the SuperNode and
    the executor share one process group (:func:`fedcustomer.deploy.flower.stop` / ``kill`` end all).
    """
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
        clientapp=check_clientapp(clientapp),
        secret_file=home_obj.state_dir / SECRET_FILE,
        poll=poll,
    )
    if clientapp == WARM:
        cmd = warm_node_command(cmd, runtime_port, write_runtime_secret(home_obj.root))
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
