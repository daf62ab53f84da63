"""Submitting and watching a run through Flower's Control API from this process, as ``flwr run``/``ls`` do.

Why: every ``flwr`` command is a new process that imports Flower's CLI before it sends one request (about
1 s of CPU each on a small machine). The coordinator submitted each job that way and checked its status with
a ``flwr ls`` process every few seconds, CPU taken from the job's own parties when they share the machine.
Here the same requests go out from the coordinator's process: the connection read from the coordinator's
Flower config (``FLWR_HOME``) by Flower's own reader, the client built by Flower's own function (the same TLS
settings, version and account-auth interceptors as the CLI), the same ``StartRun`` and ``ListRuns``
requests, and Flower's own error texts.

Flower internals this relies on (Flower's CLI modules, not a documented API; the versions they were checked
against are pinned by ``tests/deploy/test_control_api.py``, so an upgrade that moves them fails a test):
``flwr.cli.flower_config.read_superlink_connection``, ``flwr.cli.utils.init_http_client_from_connection`` and
``flwr_cli_exc_handler``, ``flwr.cli.config_utils.load_and_validate``, ``flwr.cli.build.build_fab_from_disk``,
``flwr.cli.run_utils.format_runs``, ``flwr.common.serde`` (``fab_to_proto``, ``user_config_to_proto``,
``run_from_proto``), ``flwr.common.config.parse_config_args``, ``flwr.supercore.fab.Fab``.

Setting ``FEDCUSTOMER_SUBMIT=flwr-cli`` makes the coordinator use the ``flwr`` processes again (the fallback).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedcustomer.common.files import atomic_write_bytes, atomic_write_text
from fedcustomer.deploy.flower import CONNECTION
from fedcustomer.errors import ConfigError, FederationError

log = logging.getLogger(__name__)

SUBMIT_ENV = "FEDCUSTOMER_SUBMIT"
IN_PROCESS, FLWR_CLI = "in-process", "flwr-cli"
FAB_SUFFIX = ".fab"
_ENV_LOCK = threading.Lock()  # FLWR_HOME is process-wide: one Control API call at a time sets it


def submit_mode() -> str:
    """How the coordinator talks to its SuperLink: in this process (default) or through ``flwr`` processes."""
    mode = os.environ.get(SUBMIT_ENV, IN_PROCESS).strip() or IN_PROCESS
    if mode not in (IN_PROCESS, FLWR_CLI):
        raise ConfigError(f"{SUBMIT_ENV} must be {IN_PROCESS} or {FLWR_CLI}, got {mode!r}")
    return mode


@contextlib.contextmanager
def _flower_home(flwr_home: Path) -> Iterator[None]:
    """Flower's config reader and credential store look at ``FLWR_HOME``: point it at the coordinator's."""
    with _ENV_LOCK:
        before = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(flwr_home)
        try:
            # Flower's CLI helpers print progress ("Using SuperLink ...") for a terminal; not ours to show
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            if before is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = before


@contextlib.contextmanager
def control_client(flwr_home: Path, command: str) -> Iterator[tuple[Any, Any]]:
    """Flower's Control API client and the coordinator's connection; Flower's errors as FederationError.

    ``command`` names the ``flwr`` command this stands for in error messages (they read as before).
    """
    import click
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import flwr_cli_exc_handler, init_http_client_from_connection

    if not (Path(flwr_home) / "config.toml").is_file():
        raise FederationError(
            f"`{command}` failed: no Flower CLI config in {flwr_home}; start the coordinator first "
            "(`fedcustomer coordinator start`)"
        )
    try:
        with _flower_home(Path(flwr_home)):
            connection = read_superlink_connection(CONNECTION)
            client = init_http_client_from_connection(connection)
            try:
                with flwr_cli_exc_handler():
                    yield client, connection
            finally:
                client.close()
    except click.ClickException as exc:
        raise FederationError(f"`{command}` failed: {exc.format_message()}") from None


def app_digest(app_dir: Path) -> str:
    """SHA-256 over the app directory's files (relative path and content): the bundle's cache key."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(app_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(app_dir).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def cached_fab(app_dir: Path, cache_dir: Path) -> tuple[bytes, bool]:
    """The app directory's FAB and whether it came from the cache (built by Flower's builder otherwise).

    Reused while the app directory's content is unchanged; a cached file whose recorded digest does not
    match its content is rebuilt, never sent. :func:`keep_fab` stores a new one once a run was started.
    """
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    key = app_digest(app_dir)
    path, check = Path(cache_dir) / f"{key}{FAB_SUFFIX}", Path(cache_dir) / f"{key}.sha256"
    if path.is_file() and check.is_file():
        data = path.read_bytes()
        if check.read_text(encoding="ascii").strip() == hashlib.sha256(data).hexdigest():
            return data, True
    with warnings.catch_warnings():  # Flower's builder uses a pathspec API its newer releases deprecate
        warnings.simplefilter("ignore", DeprecationWarning)
        load_and_validate(Path(app_dir) / "pyproject.toml")  # raises with Flower's reason, as `flwr run` does
        return build_fab_from_disk(Path(app_dir)), False


def keep_fab(app_dir: Path, cache_dir: Path, data: bytes) -> None:
    """Cache ``data`` as the bundle of the app directory's current content, dropping any older bundle."""
    key = app_digest(app_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for old in Path(cache_dir).iterdir():
        if old.suffix in (FAB_SUFFIX, ".sha256") and old.stem != key:
            old.unlink(missing_ok=True)
    atomic_write_bytes(Path(cache_dir) / f"{key}{FAB_SUFFIX}", data)
    atomic_write_text(Path(cache_dir) / f"{key}.sha256", hashlib.sha256(data).hexdigest() + "\n")


def start_run(flwr_home: Path, app_dir: Path, cache_dir: Path, run_config: list[str]) -> int:
    """Flower's ``StartRun`` for the app in ``app_dir`` (``run_config``: ``--run-config`` overrides); its run id."""
    from flwr.common.config import parse_config_args
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    command = f"flwr run {app_dir}"
    try:
        fab_bytes, cached = cached_fab(app_dir, cache_dir)
    except Exception as exc:  # Flower's builder refusing the app: its reason, as `flwr run` printed it
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise FederationError(f"`{command}` failed: {message}") from None
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    with control_client(flwr_home, command) as (client, connection):
        res = client.StartRun(
            StartRunRequest(
                fab=fab_to_proto(fab),
                override_config=user_config_to_proto(parse_config_args(run_config or None)),
                federation=connection.federation or "",
            )
        )
    if res.HasField("note"):  # `flwr run` prints it as "Note: ..."
        log.info("Flower's note on the submission: %s", res.note)
    if not res.HasField("run_id"):
        raise FederationError(f"`{command}` failed: Failed to start run")
    if not cached:  # only now: a submission that failed leaves the coordinator's directory as it was
        keep_fab(app_dir, cache_dir, fab_bytes)
    return int(res.run_id)


def run_record(flwr_home: Path, run_id: int) -> dict[str, Any] | None:
    """The run as ``flwr ls --run-id N --format json`` lists it (None when the SuperLink has no such run)."""
    from flwr.cli.run_utils import format_runs
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest

    with control_client(flwr_home, f"flwr ls {CONNECTION}") as (client, _connection):
        res = client.ListRuns(ListRunsRequest(run_id=int(run_id)))
    rows = format_runs([run_from_proto(p) for p in res.run_dict.values()], res.now)
    return _row_dict(rows[0]) if rows else None


def ping(flwr_home: Path) -> None:
    """One cheap Control API request (``ListRuns`` of the latest run): raises unless the SuperLink answers."""
    from flwr.proto.control_pb2 import ListRunsRequest

    with control_client(flwr_home, f"flwr ls {CONNECTION}") as (client, _connection):
        client.ListRuns(ListRunsRequest(limit=1))


def _row_dict(row: Any) -> dict[str, Any]:
    """The fields ``flwr ls --format json`` writes for one run (same keys, same values)."""
    inbound, outbound = row.network_traffic_inbound, row.network_traffic_outbound
    server_s, client_s = row.compute_time_serverapp, row.compute_time_clientapp
    return {
        "run-id": f"{row.run_id}",
        "federation-id": row.federation_id,
        "fab-id": row.fab_id,
        "fab-name": row.fab_id.split("/")[-1],
        "fab-version": row.fab_version,
        "fab-hash": row.fab_hash,
        "status": row.status_text,
        "status-details": row.details,
        "elapsed": row.elapsed,
        "pending-at": row.pending_at,
        "starting-at": row.starting_at,
        "running-at": row.running_at,
        "finished-at": row.finished_at,
        "network-traffic": {
            "inbound-bytes": inbound,
            "outbound-bytes": outbound,
            "total-bytes": inbound + outbound,
        },
        "compute-time": {
            "serverapp-seconds": server_s,
            "clientapp-seconds": client_s,
            "total-seconds": server_s + client_s,
        },
    }
