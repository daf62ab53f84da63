"""One partner node as one service: the SuperNode plus its warm ClientApp executor, supervised.

In ``--clientapp warm`` mode the SuperNode runs with ``--isolation process`` and starts no executor
of its own; this supervisor starts it and the warm executor (:mod:`fedcustomer.deploy.warm_clientapp`)
as its children, restarts the executor if it dies (a bounded number of times: an executor that keeps
failing stops the node, with the reason in its log, rather than leaving a node that never answers),
and ends when the SuperNode ends, with its exit code. SIGTERM / Ctrl-C reach both children. All three
share one process group, so stopping or killing the group stops the whole node, as before.

This module imports neither flwr nor torch: it stays small and starts at once.

    python -m fedcustomer.deploy.node_supervisor --runtime-api-address 127.0.0.1:9094 \
        --secret-file HOME/state/runtime-api.secret -- flower-supernode ... --isolation process ...
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MAX_RESTARTS = 5  # executor restarts allowed within RESTART_WINDOW_S before the node gives up
RESTART_WINDOW_S = 300.0
EXECUTOR_FAILED = 3  # exit code when the executor kept failing (the SuperNode's own codes pass through)


def executor_command(runtime_address: str, secret_file: Path | None, parent_pid: int) -> list[str]:
    """The warm executor's command line, for the SuperNode with pid ``parent_pid``."""
    cmd = [
        sys.executable,
        "-m",
        "fedcustomer.deploy.warm_clientapp",
        "--runtime-api-address",
        runtime_address,
    ]
    if secret_file is not None:
        cmd += ["--secret-file", str(secret_file)]
    return cmd + ["--parent-pid", str(parent_pid)]


def _say(text: str) -> None:
    print(f"fedcustomer node: {text}", file=sys.stderr, flush=True)


def _end(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def supervise(
    supernode_cmd: list[str],
    executor_cmd: Callable[[int], list[str]],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    max_restarts: int = MAX_RESTARTS,
    window_s: float = RESTART_WINDOW_S,
    check_s: float = 0.5,
) -> int:
    """Run the SuperNode and its executor until the SuperNode ends; returns the node's exit code.

    ``executor_cmd`` builds the executor's command from the SuperNode's pid.
    """
    node = subprocess.Popen(supernode_cmd, env=env, cwd=str(cwd) if cwd else None)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for proc in (node, executor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

    executor: subprocess.Popen[bytes] | None = None
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    restarts: list[float] = []
    try:
        executor = subprocess.Popen(executor_cmd(node.pid), env=env, cwd=str(cwd) if cwd else None)
        while True:
            try:
                code = node.wait(timeout=check_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if stopping or executor.poll() is None:
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < window_s] + [now]
            if len(restarts) > max_restarts:
                _say(
                    f"the warm ClientApp executor failed {len(restarts)} times within {window_s:g} s "
                    f"(last exit code {executor.returncode}); stopping the node (see the lines above)"
                )
                _end(node)
                return EXECUTOR_FAILED
            _say(f"the warm ClientApp executor exited with code {executor.returncode}; restarting it")
            executor = subprocess.Popen(executor_cmd(node.pid), env=env, cwd=str(cwd) if cwd else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            _end(executor)
        _end(node)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: node_supervisor [options] -- SUPERNODE COMMAND...", file=sys.stderr)
        return 2
    split = args.index("--")
    ap = argparse.ArgumentParser(description="Supervise a SuperNode and its warm ClientApp executor.")
    ap.add_argument("--runtime-api-address", required=True)
    ap.add_argument("--secret-file", type=Path, default=None)
    opts = ap.parse_args(args[:split])
    supernode_cmd = args[split + 1 :]
    if not supernode_cmd:
        print("node_supervisor: no SuperNode command after --", file=sys.stderr)
        return 2
    return supervise(
        supernode_cmd, lambda pid: executor_command(opts.runtime_api_address, opts.secret_file, pid)
    )


if __name__ == "__main__":
    sys.exit(main())
