"""Running Flower's own executables (SuperLink, SuperNode, `flwr`) as child processes.

Flower's Deployment Engine is the transport; this module only builds the exact
command lines (every flag checked against Flower 1.42's ``--help``) and starts them
with an environment where Flower's helper executables (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``) are found next to the running Python.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from fedcustomer.errors import ConfigError, FederationError

CONNECTION = "fedcustomer"  # the SuperLink connection name in the coordinator's Flower config


def bin_dir() -> Path:
    """The directory holding this environment's console scripts (flwr, flower-superlink, ...)."""
    return Path(sys.executable).parent


def executable(name: str) -> str:
    path = bin_dir() / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name!r} not found; install fedcustomer with its Flower dependency (make setup)")
    return found


def flower_env(flwr_home: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: our bin dir first on PATH, quiet telemetry, one torch thread."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FEDCUSTOMER_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (for tests and local walkthroughs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:PORT``), refusing anything else with the expected form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink must look like HOST:PORT (e.g. 127.0.0.1:9093), got {address!r}")
    return host.strip("[]"), int(port)


def start(
    cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process started by :func:`start` and its children (its own process group)."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a process group at once (a crash, as tests simulate it)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def flwr_cli(args: list[str], flwr_home: Path, *, timeout: float = 120.0, cwd: Path | None = None) -> dict:
    """Run ``flwr <args> --format json`` and return its JSON; errors become FederationError with Flower's text."""
    cmd = [executable("flwr"), *args, "--format", "json"]
    try:
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=flower_env(flwr_home),
            timeout=timeout,
            cwd=str(cwd) if cwd else None,
        )
    except subprocess.TimeoutExpired:
        raise FederationError(
            f"`flwr {' '.join(args[:2])}` did not answer within {timeout:g} s; is the coordinator up?"
        ) from None
    payload = _last_json(res.stdout)
    if res.returncode != 0 or payload is None or not payload.get("success", False):
        detail = (payload or {}).get("error-message") or (res.stderr or res.stdout).strip()[-800:]
        raise FederationError(f"`flwr {' '.join(args[:2])}` failed: {detail}")
    return payload


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    try:
        return json.loads(text[text.index("{") :])
    except (ValueError, json.JSONDecodeError):
        return None
