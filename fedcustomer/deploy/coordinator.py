"""The coordinator: a Flower SuperLink plus our ServerApp, submitted through Flower's Control API.

The coordinator holds no partner data. Its working directory keeps the SuperLink
state, its log, the Flower CLI config (connection + CA), and the job's app
directory (a pyproject.toml naming our installed ServerApp/ClientApp and the job's
run config), so a restarted coordinator can resume the same run id.

How the coordinator runs the ServerApp (``serverapp``): ``warm`` (the default where ``os.fork``
exists) runs the SuperLink in Flower's ``process`` isolation with the warm ServerApp executor beside
it, supervised (:mod:`fedcustomer.deploy.node_supervisor`, :mod:`fedcustomer.deploy.warm_serverapp`):
a job starts without a fresh process paying the imports. ``subprocess`` is Flower's default: the
SuperLink's own SuperExec starts a ``flwr-serverapp`` process per run.

A job is submitted and watched with the requests ``flwr run`` and ``flwr ls`` send, from this process
(:mod:`fedcustomer.deploy.control_api`: no ``flwr`` process per request); ``FEDCUSTOMER_SUBMIT=flwr-cli``
goes back to the ``flwr`` processes, and a user may always ``flwr run`` the app directory themselves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_bytes, atomic_write_text
from fedcustomer.data.features import FeatureSpec
from fedcustomer.deploy import control_api
from fedcustomer.deploy.flower import CONNECTION, executable, flower_env, flwr_cli, start
from fedcustomer.deploy.pki import Certificates
from fedcustomer.errors import ConfigError, FederationError, KeyMaterialError, error_class
from fedcustomer.server.deployment import BUILTIN_SPECS
from fedcustomer.server.job import JobConfig

log = logging.getLogger(__name__)

INSECURE_WARNING = (
    "WARNING: --insecure: TLS and SuperNode authentication are OFF. Model updates travel in clear text and "
    "any process that reaches the port can join as a partner. Use only on a closed test network."
)
WARM, SUBPROCESS = "warm", "subprocess"
SERVERAPP_MODES = (WARM, SUBPROCESS)
ENDING_POLL_S = 0.25  # status checks once the ServerApp wrote its summary (one Control API request each)
DEFAULT_SERVERAPP = WARM if hasattr(os, "fork") and sys.platform != "darwin" else SUBPROCESS
SUPERLINK_ENV = "FEDCUSTOMER_SUPERLINK"  # gated (default) or flower: Flower's SuperLink as shipped
GATED, FLOWER_STACK = "gated", "flower"


@dataclass(frozen=True)
class CoordinatorDir:
    """Where a coordinator keeps its state (one directory, mounted as a volume in Docker)."""

    root: Path

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    @property
    def fab_cache(self) -> Path:
        """The job's built app bundle, kept while the app directory's content is unchanged."""
        return self.root / "fab-cache"

    @property
    def log_path(self) -> Path:
        return self.root / "superlink.log"

    @property
    def database(self) -> Path:
        return self.root / "superlink.db"

    @property
    def job_path(self) -> Path:
        return self.root / "job.json"

    @property
    def secret_path(self) -> Path:
        """The SuperLink's SuperExec secret: only the coordinator's own executor may take its jobs."""
        return self.root / "runtime-api.secret"


def check_serverapp(serverapp: str) -> str:
    if serverapp not in SERVERAPP_MODES:
        raise ConfigError(f"--serverapp must be {' or '.join(SERVERAPP_MODES)}, got {serverapp!r}")
    if serverapp == WARM and not hasattr(os, "fork"):
        raise ConfigError("--serverapp warm needs os.fork (Linux); use --serverapp subprocess here")
    return serverapp


def superlink_launcher() -> list[str]:
    """What runs ``flower-superlink``: the gate of :mod:`fedcustomer.deploy.superlink_gate`, or nothing.

    ``FEDCUSTOMER_SUPERLINK=flower`` runs Flower's SuperLink exactly as Flower ships it.
    """
    mode = os.environ.get(SUPERLINK_ENV, GATED).strip() or GATED
    if mode not in (GATED, FLOWER_STACK):
        raise ConfigError(f"{SUPERLINK_ENV} must be {GATED} or {FLOWER_STACK}, got {mode!r}")
    return [] if mode == FLOWER_STACK else [sys.executable, "-m", "fedcustomer.deploy.superlink_gate", "--"]


def superlink_command(
    cdir: CoordinatorDir,
    *,
    host: str,
    port: int,
    certs: Certificates | None,
    node_auth: bool = True,
    health_port: int | None = None,
    serverapp: str = SUBPROCESS,
) -> list[str]:
    """The flower-superlink command line. ``certs=None`` means the explicit insecure opt-in.

    ``serverapp="warm"``: process isolation (no SuperExec of Flower's own), task polling signed with
    the secret in the workdir (see :func:`warm_coordinator_command`).
    """
    cmd = [
        *superlink_launcher(),
        executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(cdir.database),
        "--disable-runtime-dependency-installation",
    ]
    if certs is None:
        if node_auth:
            raise ConfigError(
                "SuperNode authentication needs TLS; drop --insecure or pass --no-node-auth too"
            )
        cmd.append("--insecure")
    else:
        certs.check()
        cmd += [
            "--ssl-ca-certfile",
            str(certs.ca_cert),
            "--ssl-certfile",
            str(certs.server_cert),
            "--ssl-keyfile",
            str(certs.server_key),
        ]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    if health_port is not None:
        cmd += ["--health-server-address", f"{host}:{health_port}"]
    if check_serverapp(serverapp) == WARM:
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(cdir.secret_path.resolve())]
    return cmd


def write_runtime_secret(cdir: CoordinatorDir) -> Path:
    """A fresh random secret for the SuperLink's task API, written at each start (0600)."""
    cdir.root.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(cdir.secret_path, secrets.token_bytes(32), mode=0o600, exact=True)


def warm_coordinator_command(
    cdir: CoordinatorDir, superlink_cmd: list[str], runtime_address: str, certs: Certificates | None
) -> list[str]:
    """The supervisor's command line: the SuperLink and the warm ServerApp executor beside it.

    ``runtime_address`` is where the executor reaches the SuperLink (its TLS port, by a name the
    server certificate covers); a fresh secret is written for this start.
    """
    cmd = [
        sys.executable,
        "-m",
        "fedcustomer.deploy.node_supervisor",
        "--executor",
        "serverapp",
        "--runtime-api-address",
        runtime_address,
        "--secret-file",
        str(write_runtime_secret(cdir).resolve()),
    ]
    cmd += ["--insecure"] if certs is None else ["--root-certificates", str(Path(certs.ca_cert).resolve())]
    return [*cmd, "--", *superlink_cmd]


def write_flwr_config(cdir: CoordinatorDir, address: str, ca_cert: Path | None) -> Path:
    """The Flower CLI connection the coordinator's own `flwr` commands use (register, run, ls)."""
    cdir.flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{address}"',
    ]
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{Path(ca_cert).resolve()}"')
    return atomic_write_text(cdir.flwr_home / "config.toml", "\n".join(lines) + "\n")


def start_superlink(
    cdir: CoordinatorDir,
    *,
    host: str = "127.0.0.1",
    port: int = 9093,
    certs: Certificates | None,
    node_auth: bool = True,
    health_port: int | None = None,
    connect_host: str | None = None,
    timeout: float = 60.0,
    serverapp: str = DEFAULT_SERVERAPP,
) -> subprocess.Popen[bytes]:
    """Start the SuperLink in the background, logging to ``superlink.log``; returns once it answers.

    With ``serverapp="warm"`` the process returned is the coordinator's supervisor; it, the SuperLink
    and the executor share one process group (:func:`fedcustomer.deploy.flower.stop` / ``kill`` end all).
    """
    cdir.root.mkdir(parents=True, exist_ok=True)
    cmd = superlink_command(
        cdir,
        host=host,
        port=port,
        certs=certs,
        node_auth=node_auth,
        health_port=health_port,
        serverapp=serverapp,
    )
    target = connect_host or ("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    if serverapp == WARM:
        cmd = warm_coordinator_command(cdir, cmd, f"{target}:{port}", certs)
    write_flwr_config(cdir, f"{target}:{port}", certs.ca_cert if certs else None)
    offset = cdir.log_path.stat().st_size if cdir.log_path.exists() else 0
    proc = start(cmd, cdir.log_path, flower_env(cdir.flwr_home), cwd=cdir.root)
    wait_until_up(cdir, proc, timeout=timeout, offset=offset)
    return proc


def wait_until_up(
    cdir: CoordinatorDir, proc: subprocess.Popen[bytes], timeout: float = 60.0, offset: int = 0
) -> None:
    """Wait for this start's "running" line (the log is appended to across restarts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"the SuperLink exited with code {proc.returncode}; see {cdir.log_path}")
        if cdir.log_path.exists() and b"Uvicorn running on" in cdir.log_path.read_bytes()[offset:]:
            return
        time.sleep(0.2)
    raise FederationError(f"the SuperLink did not start within {timeout:g} s; see {cdir.log_path}")


_NOT_UP = ("SuperLink is unavailable", "did not answer within", "No such file", "not found in")


def wait_for_coordinator(
    cdir: CoordinatorDir,
    timeout: float = 60.0,
    poll: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Block until the coordinator's Control API answers: it may have been started a moment ago in the background.

    Retries only "not up yet" failures (no CLI config yet, SuperLink unreachable) until ``timeout``;
    any other error (bad certificate, ...) is raised at once.
    """
    deadline = time.monotonic() + timeout
    last = f"no Flower CLI config in {cdir.flwr_home} yet"
    waited = False
    while True:
        if (cdir.flwr_home / "config.toml").exists():
            try:
                probe_coordinator(cdir, timeout=max(5.0, min(60.0, timeout)))
                if waited and progress:
                    progress("the coordinator is up")
                return
            except FederationError as exc:
                if not any(marker in str(exc) for marker in _NOT_UP):
                    raise
                last = str(exc)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FederationError(
                f"the coordinator in {cdir.root} did not answer within {timeout:g} s ({last}). Is "
                f"`fedcustomer coordinator start --workdir {cdir.root}` running? Its log: {cdir.log_path}"
            )
        if progress and not waited:
            progress(f"waiting up to {timeout:g} s for the coordinator in {cdir.root} to come up ...")
        waited = True
        time.sleep(min(poll, remaining))


def probe_coordinator(cdir: CoordinatorDir, timeout: float = 60.0) -> None:
    """One Control API request to the coordinator (``flwr ls`` with ``FEDCUSTOMER_SUBMIT=flwr-cli``)."""
    if control_api.submit_mode() == control_api.FLWR_CLI:
        flwr_cli(["ls", CONNECTION], cdir.flwr_home, timeout=timeout)
    else:
        control_api.ping(cdir.flwr_home)


def register_node(cdir: CoordinatorDir, public_key: Path, name: str | None = None) -> int:
    """Add a partner's node public key to the coordinator's allow-list; returns its node id."""
    if not Path(public_key).is_file():
        raise KeyMaterialError(
            f"{public_key} not found; the partner creates it with `fedcustomer node keys --home DIR`"
        )
    args = ["supernode", "register", str(Path(public_key).resolve()), CONNECTION]
    if name:
        args += ["--name", name]
    return int(flwr_cli(args, cdir.flwr_home)["node-id"])


def list_nodes(cdir: CoordinatorDir) -> list[dict[str, Any]]:
    return list(flwr_cli(["supernode", "ls", CONNECTION], cdir.flwr_home).get("nodes", []))


# --- the job as a Flower app --------------------------------------------------------
def run_config_for(
    job: JobConfig, *, feature_spec: str, wait_for_partners: float = 120.0, secagg: bool = False
) -> dict[str, Any]:
    """Flat run config (TOML-safe: no None) the deployed ServerApp turns back into the job."""
    cfg: dict[str, Any] = {k.replace("_", "-"): v for k, v in job.to_dict().items() if v is not None}
    cfg["out"] = str(Path(job.out).resolve())
    cfg.update(
        {
            "deployment": True,
            "feature-spec": feature_spec,
            "resume": False,
            "wait-for-partners": float(wait_for_partners),
            "secagg": bool(secagg),
        }
    )
    return cfg


def write_app(cdir: CoordinatorDir, run_config: dict[str, Any]) -> Path:
    """A minimal Flower app: components from the installed package, the job in [tool.flwr.app.config]."""
    import tomli_w

    secagg = bool(run_config.get("secagg"))
    serverapp = "fedcustomer.apps.secagg:server_app" if secagg else "fedcustomer.apps.server:app"
    if run_config.get("mode") in ("psi", "vertical"):  # two parties: PSI / split learning
        serverapp = "fedcustomer.apps.vertical:app"
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedcustomer-job",
            "version": "1.0.0",
            "description": "A fedcustomer federated job",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedcustomer",
                    "components": {
                        "serverapp": serverapp,
                        "clientapp": "fedcustomer.apps.secagg:client_app"
                        if secagg
                        else "fedcustomer.apps.client:app",
                    },
                    "config": run_config,
                }
            }
        },
    }
    cdir.app_dir.mkdir(parents=True, exist_ok=True)
    path = cdir.app_dir / "pyproject.toml"
    atomic_write_text(path, tomli_w.dumps(doc))
    atomic_write_text(cdir.job_path, json.dumps(run_config, indent=2, sort_keys=True) + "\n")
    return path


def submit_run(cdir: CoordinatorDir, *, resume: bool = False) -> int:
    """Submit the job in the app directory to this coordinator's SuperLink, as `flwr run` does; Flower's run id.

    The bundle is built once per app content (``fab_cache``); ``resume`` is ``--run-config resume=true``.
    """
    if not (cdir.app_dir / "pyproject.toml").exists():
        raise ConfigError(f"no job in {cdir.app_dir}; start one with `fedcustomer coordinator run`")
    overrides = ["resume=true"] if resume else []
    if control_api.submit_mode() == control_api.IN_PROCESS:
        return control_api.start_run(cdir.flwr_home, cdir.app_dir, cdir.fab_cache, overrides)
    args = ["run", str(cdir.app_dir), CONNECTION]
    for override in overrides:
        args += ["--run-config", override]
    return int(flwr_cli(args, cdir.flwr_home, timeout=300)["run-id"])


def run_status(cdir: CoordinatorDir, run_id: int) -> dict[str, Any]:
    """The run's record as `flwr ls --run-id` lists it (status, times, network traffic)."""
    if control_api.submit_mode() == control_api.IN_PROCESS:
        record = control_api.run_record(cdir.flwr_home, run_id)
        runs = [record] if record is not None else []
    else:
        runs = flwr_cli(["ls", CONNECTION, "--run-id", str(run_id)], cdir.flwr_home).get("runs", [])
    if not runs:
        raise FederationError(f"the coordinator does not know run {run_id}")
    return dict(runs[0])


def wait_run(
    cdir: CoordinatorDir,
    run_id: int,
    timeout: float = 3600.0,
    poll: float = 1.0,
    progress: Callable[[str], None] | None = None,
    watch: Callable[[], None] | None = None,
    *,
    most: float = 10.0,
    finished_hint: Callable[[], bool] | None = None,
    tick: float = 0.25,
    ending_poll: float | None = None,
) -> dict[str, Any]:
    """Block until Flower reports the run finished; returns its status record (network traffic included).

    Each status check is a Control API request (a ``flwr ls`` process, a second or more of CPU, with
    ``FEDCUSTOMER_SUBMIT=flwr-cli``), so checks start every ``poll`` s, double while nothing
    changes, up to ``most`` s, and are prompt again after a change. ``finished_hint`` is a cheap local
    sign that the run is ending (the ServerApp wrote its summary): once it is true, checks come every
    ``ending_poll`` s (default ``poll``; the Control API's checks are cheap enough for a short one). ``progress`` hears every change of the run's status; ``watch`` is called every
    ``tick`` s.
    """
    deadline = time.monotonic() + timeout
    after_hint = poll if ending_poll is None else ending_poll
    seen: object = None
    interval, next_check, hinted = poll, time.monotonic(), False
    while True:
        now = time.monotonic()
        hint_now = not hinted and finished_hint is not None and finished_hint()
        if hint_now:
            hinted, interval = True, after_hint
        if now >= next_check or hint_now:
            status = run_status(cdir, run_id)
            if status.get("status") != seen:
                seen = status.get("status")
                interval = after_hint if hinted else poll
                if progress:
                    progress(f"Flower run {run_id}: {seen}")
            else:
                interval = after_hint if hinted else min(interval * 2, max(poll, most))
            if str(status.get("status", "")).startswith("finished"):
                if watch is not None:
                    watch()
                return status
            next_check = time.monotonic() + interval
        if watch is not None:
            watch()
        if time.monotonic() > deadline:
            raise FederationError(f"run {run_id} still {seen} after {timeout:g} s")
        time.sleep(max(0.0, min(tick, next_check - time.monotonic())))


def ending_poll() -> float | None:
    """How often ``coordinator run`` checks a run whose summary is written: 0.25 s through the Control API.

    With ``FEDCUSTOMER_SUBMIT=flwr-cli`` each check is a ``flwr`` process, so ``poll`` stays (None).
    """
    return ENDING_POLL_S if control_api.submit_mode() == control_api.IN_PROCESS else None


def file_rewritten(path: Path) -> Callable[[], bool]:
    """True once ``path`` is written after this call (a new file, or a new modification time)."""

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    before = stamp()
    return lambda: (now := stamp()) is not None and now != before


def read_summary(
    run_config: dict[str, Any], cdir: CoordinatorDir | None = None, run_id: int | None = None
) -> dict[str, Any]:
    """The run's summary; a run that wrote none is reported with its ServerApp's own error.

    The ServerApp's output is kept by the SuperLink (``flwr log``), not in the coordinator's log
    file, so without this the reason (e.g. a partner that never connected) stayed out of sight.
    """
    path = Path(str(run_config["out"])) / "summary.json"
    if not path.exists():
        if cdir is None or run_id is None:
            raise FederationError(f"the run ended without writing {path}; see the coordinator log")
        reason = serverapp_error(serverapp_log(cdir, run_id))
        where = f"`FLWR_HOME={cdir.flwr_home} flwr log {run_id} --show` has the ServerApp's log"
        # a job refused for its configuration exits 3, as it would in `run`
        raise error_class((reason or "").partition(":")[0])(
            f"the run ended without writing {path}: {reason}; {where}"
            if reason
            else f"the run ended without writing {path}; {where}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def serverapp_log(cdir: CoordinatorDir, run_id: int, timeout: float = 60.0) -> str:
    """The ServerApp's log of one run as the SuperLink keeps it ('' when it cannot be read)."""
    try:
        res = subprocess.run(
            [executable("flwr"), "log", str(run_id), "--show"],
            capture_output=True,
            text=True,
            env=flower_env(cdir.flwr_home),
            timeout=timeout,
            cwd=str(cdir.root),
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout + res.stderr


def serverapp_error(log_text: str) -> str | None:
    """The last fedcustomer error the ServerApp raised, as ``Kind: message`` (None when there is none)."""
    found = re.findall(r"fedcustomer\.errors\.(\w+): (.+)", log_text)
    return f"{found[-1][0]}: {found[-1][1].strip()}" if found else None


def partner_shortfall(
    summary: dict[str, Any], wanted: int, nodes: list[dict[str, Any]] | None = None
) -> str | None:
    """Why fewer than ``wanted`` partners trained in this job (None when enough did), naming who.

    Partners that connected but trained no round are named with their reason; nodes that never
    took part are named by the node id and status the coordinator has for them.
    """
    partners = summary.get("partners") or []
    if summary.get("aggregation") == "secagg+" and not partners:
        return None  # SecAgg+ summaries carry no per-partner section by design
    trained = sorted(p["name"] for p in partners if p.get("rounds_trained", 0) > 0)
    if len(trained) >= wanted:
        return None
    parts = [
        f"only {len(trained)} of the {wanted} partners asked for trained "
        f"({', '.join(trained) if trained else 'none'})"
    ]
    for p in partners:
        if p.get("rounds_trained", 0) == 0:
            why = (p.get("failures") or p.get("refusals") or [{}])[0].get("reason") or "no reason given"
            parts.append(f"{p['name']} took part but trained no round: {why}")
    absent = wanted - len(partners)
    if absent > 0:
        offline = [
            f"node {n.get('node-id')} ({n.get('status')})"
            for n in (nodes or [])
            if n.get("status") != "online"
        ]
        parts.append(
            f"{absent} partner(s) never joined"
            + (f"; registered but not online: {', '.join(offline)}" if offline else "; check their node logs")
        )
    return "; ".join(parts)


def pin_spec(cdir: CoordinatorDir, ref: str) -> str:
    """Check a feature spec before submitting; a JSON file is copied into the coordinator's directory.

    The ServerApp runs in the coordinator's directory, where a path relative to the user's
    shell means nothing, and a resumed job must use the spec it started with.
    """
    if ref in BUILTIN_SPECS:
        return ref
    spec = FeatureSpec.load(ref)
    cdir.root.mkdir(parents=True, exist_ok=True)
    path = cdir.root / "feature_spec.json"
    atomic_write_text(path, json.dumps(spec.to_dict(), indent=2) + "\n")
    return str(path.resolve())
