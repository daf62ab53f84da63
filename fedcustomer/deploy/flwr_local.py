"""``flwr run . local`` without the 6 GB download and without a SuperLink left running.

Plain ``flwr run . local`` starts a detached ``flower-superlink`` (simulation mode) that outlives
the command, and that SuperLink installs the app's dependencies into a fresh environment with
``uv sync`` (torch from the public index: the CUDA build). Here we start that same local SuperLink
ourselves, as our child, with runtime dependency installation off (the app then runs in this
environment, where fedcustomer and CPU torch are installed), let ``flwr run`` find it on
Flower's local port, and stop it when the run ends, however it ends.

    python -m fedcustomer.deploy.flwr_local [flwr run options...]
    e.g. python -m fedcustomer.deploy.flwr_local --federation-config "num-supernodes=3" --stream
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fedcustomer.deploy.flower import executable, flower_env, start, stop

# Flower's defaults for the local SuperLink (flwr/cli/constant.py), overridable as in Flower.
HTTP_PORT = int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))
CONTROL_PORT = int(os.environ.get("FLWR_LOCAL_CONTROL_API_PORT", "39093"))


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def superlink_command(log_path: Path, database: Path) -> list[str]:
    """The command Flower's CLI uses for its local SuperLink, plus no dependency installation."""
    return [
        executable("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{CONTROL_PORT}",
        "--host",
        "127.0.0.1",
        "--port",
        str(HTTP_PORT),
        "--database",
        str(database),
        "--log-file",
        str(log_path),
        "--disable-runtime-dependency-installation",
    ]


def healthy() -> bool:
    """What ``flwr`` itself probes before deciding to start a SuperLink of its own."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/health", timeout=1.0) as res:
            return 200 <= res.status < 300
    except OSError:
        return False


def wait_until_listening(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not healthy():
        if proc.poll() is not None:
            raise SystemExit(f"the local SuperLink exited with code {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the local SuperLink did not start within {timeout:g} s; see {log_path}")
        time.sleep(0.2)


def main(argv: list[str] | None = None, app_dir: Path | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if port_in_use(HTTP_PORT) or port_in_use(CONTROL_PORT):
        print(
            f"a SuperLink is already listening on 127.0.0.1:{HTTP_PORT}/{CONTROL_PORT} (perhaps left by an earlier "
            "plain `flwr run . local`, which installs the app's dependencies, CUDA torch included). Stop it "
            "first (find it with `pgrep -af flower-superlink`), or set FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and FLWR_LOCAL_CONTROL_API_PORT to free ports.",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="fedcustomer-flwr-") as tmp:
        log_path = Path(tmp) / "superlink.log"
        env = flower_env(extra={"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
        link = start(superlink_command(log_path, Path(tmp) / "state.db"), log_path, env)
        try:
            wait_until_listening(link, log_path)
            cmd = [executable("flwr"), "run", str(app_dir or Path.cwd()), "local", *args]
            return subprocess.run(cmd, env=env, check=False).returncode
        except KeyboardInterrupt:
            return 130
        finally:
            stop(link)  # the SuperLink and everything it started (its own process group)


if __name__ == "__main__":
    sys.exit(main())
