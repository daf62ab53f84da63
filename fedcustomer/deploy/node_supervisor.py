"""One partner node (or the coordinator) as one service: Flower's server process plus its warm executor, supervised.

In ``--clientapp warm`` mode the SuperNode runs with ``--isolation process`` and starts no executor
of its own; this supervisor starts it and the warm executor (:mod:`fedcustomer.deploy.warm_clientapp`)
as its children, restarts the executor if it dies (a bounded number of times: an executor that keeps
failing stops the node, with the reason in its log, rather than leaving a node that never answers),
and ends when the SuperNode ends, with its exit code. SIGTERM / Ctrl-C reach both children. All three
share one process group, so stopping or killing the group stops the whole node, as before.

The coordinator uses the same supervision (``--executor serverapp``): its SuperLink runs with
``--isolation process`` beside the warm ServerApp executor (:mod:`fedcustomer.deploy.warm_serverapp`).

This module imports neither flwr nor torch: it stays small and starts at once.

    python -m fedcustomer.deploy.node_supervisor --runtime-api-address 127.0.0.1:9094 \
        --secret-file HOME/state/runtime-api.secret -- flower-supernode ... --isolation process ...
    python -m fedcustomer.deploy.node_supervisor --executor serverapp --runtime-api-address 127.0.0.1:9093 \
        --root-certificates certs/ca.crt --secret-file WORKDIR/state/runtime-api.secret -- flower-superlink ...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedcustomer.deploy import reply_bell, task_bell

MAX_RESTARTS = 5  # executor restarts allowed within RESTART_WINDOW_S before the node gives up
RESTART_WINDOW_S = 300.0
EXECUTOR_FAILED = 3  # exit code when the executor kept failing (the SuperNode's own codes pass through)
CLIENTAPP, SERVERAPP = "clientapp", "serverapp"
# executor kind -> (its module, how the log names it, who speaks in the log)
EXECUTORS = {
    CLIENTAPP: ("fedcustomer.deploy.warm_clientapp", "the warm ClientApp executor", "fedcustomer node"),
    SERVERAPP: (
        "fedcustomer.deploy.warm_serverapp",
        "the warm ServerApp executor",
        "fedcustomer coordinator",
    ),
}


def executor_command(
    runtime_address: str,
    secret_file: Path | None,
    parent_pid: int,
    *,
    executor: str = CLIENTAPP,
    root_certificates: Path | None = None,
    insecure: bool = False,
) -> list[str]:
    """The warm executor's command line, for the SuperNode (or SuperLink) with pid ``parent_pid``.

    The ServerApp executor reaches the SuperLink's Runtime API on its TLS port: ``root_certificates``
    (the coordinator's CA) or ``insecure`` for a coordinator started with ``--insecure``.
    """
    cmd = [sys.executable, "-m", EXECUTORS[executor][0], "--runtime-api-address", runtime_address]
    if executor == SERVERAPP:
        cmd += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
    if secret_file is not None:
        cmd += ["--secret-file", str(secret_file)]
    return cmd + ["--parent-pid", str(parent_pid)]


def _say(text: str, who: str = EXECUTORS[CLIENTAPP][2]) -> None:
    print(f"{who}: {text}", file=sys.stderr, flush=True)


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
    kind: str = CLIENTAPP,
) -> int:
    """Run the SuperNode (or SuperLink) and its executor until it ends; returns its exit code.

    ``executor_cmd`` builds the executor's command from the server process's pid.
    """
    _, what, who = EXECUTORS[kind]
    # a ClientApp executor waits on the task bell the SuperNode rings (see task_bell), a ServerApp
    # executor's jobs on the reply bell the SuperLink rings (see reply_bell); this process keeps the
    # read end for a restarted executor, and only the SuperNode (SuperLink) holds the write end
    bell_r, bell_w = task_bell.open_bell()
    write_env = task_bell.ENV_FD if kind == CLIENTAPP else reply_bell.ENV_FD
    node_env = dict(os.environ if env is None else env)
    node_env[write_env] = str(bell_w)
    try:
        node = subprocess.Popen(
            supernode_cmd, env=node_env, cwd=str(cwd) if cwd else None, pass_fds=(bell_w,)
        )
    except BaseException:
        os.close(bell_r)
        os.close(bell_w)
        raise
    os.close(bell_w)

    def start_executor() -> subprocess.Popen[bytes]:
        cmd, exec_env = executor_cmd(node.pid), env
        if kind == CLIENTAPP:
            cmd += [task_bell.BELL_ARG, str(bell_r)]
        else:  # the executor's forked job children inherit it; their grids find it in the environment
            exec_env = {**(os.environ if env is None else env), reply_bell.GRID_ENV_FD: str(bell_r)}
        return subprocess.Popen(cmd, env=exec_env, cwd=str(cwd) if cwd else None, pass_fds=(bell_r,))

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
        executor = start_executor()
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
                    f"{what} failed {len(restarts)} times within {window_s:g} s (last exit code "
                    f"{executor.returncode}); stopping the {'coordinator' if kind == SERVERAPP else 'node'} "
                    "(see the lines above)",
                    who,
                )
                _end(node)
                return EXECUTOR_FAILED
            _say(f"{what} exited with code {executor.returncode}; restarting it", who)
            executor = start_executor()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            _end(executor)
        _end(node)
        os.close(bell_r)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: node_supervisor [options] -- SUPERNODE COMMAND...", file=sys.stderr)
        return 2
    split = args.index("--")
    ap = argparse.ArgumentParser(description="Supervise a SuperNode (SuperLink) and its warm executor.")
    ap.add_argument("--runtime-api-address", required=True)
    ap.add_argument("--secret-file", type=Path, default=None)
    ap.add_argument("--executor", choices=tuple(EXECUTORS), default=CLIENTAPP)
    ap.add_argument("--root-certificates", type=Path, default=None, help="serverapp: the SuperLink's CA")
    ap.add_argument("--insecure", action="store_true", help="serverapp: the SuperLink runs without TLS")
    opts = ap.parse_args(args[:split])
    server_cmd = args[split + 1 :]
    if not server_cmd:
        print("node_supervisor: no SuperNode command (or SuperLink command) after --", file=sys.stderr)
        return 2
    if opts.executor == SERVERAPP and opts.insecure == (opts.root_certificates is not None):
        print(
            "node_supervisor: --executor serverapp needs --root-certificates FILE or --insecure",
            file=sys.stderr,
        )
        return 2

    def command(pid: int) -> list[str]:
        return executor_command(
            opts.runtime_api_address,
            opts.secret_file,
            pid,
            executor=opts.executor,
            root_certificates=opts.root_certificates,
            insecure=opts.insecure,
        )

    return supervise(server_cmd, command, kind=opts.executor)


if __name__ == "__main__":
    sys.exit(main())
