"""CPU an idle federation burns: a SuperLink (TLS, node authentication, warm ServerApp executor) and
two warm SuperNodes with no job, measured over ``--seconds`` once every process is up and past its
busy window.

Why: the deployed path polls (nodes ask the SuperLink for messages, executors ask for tasks); polling
that makes jobs start sooner must not make an idle node expensive. Prints one JSON object: CPU
seconds per process over the window (user + system, from /proc), their total, and the share of one
core. Linux only (reads /proc).
Usage: python benchmarks/bench_node_idle.py [--seconds 60] [--settle 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_deploy import PARTIES, _start_node, _vertical_homes, _wait_for_line

from fedcustomer.deploy import coordinator as co
from fedcustomer.deploy import flower as fl
from fedcustomer.deploy import pki

ROLES = ("flower-superlink", "warm_serverapp", "supernode_poll", "warm_clientapp")


def _tree(root_pid: int) -> list[int]:
    """``root_pid`` and every process below it (from /proc's parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    found, frontier = [root_pid], [root_pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _cpu_by_role(pids: list[int]) -> dict[str, float]:
    """User + system CPU seconds so far of ``pids``, summed per role (by command line)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = next((r for r in ROLES if r in cmd), "other")
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="the idle window measured")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after start-up before measuring")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="fedcustomer-idle-"))
    certs = pki.make_dev_certificates(root / "certs")
    cdir = co.CoordinatorDir(root / "coordinator")
    port = fl.free_port()
    procs = [co.start_superlink(cdir, port=port, certs=certs, serverapp="warm")]
    try:
        _wait_for_line(cdir.log_path, "warm ServerApp: ready", procs[0])
        for home, name in zip(_vertical_homes(root, 200), PARTIES, strict=True):
            procs.append(_start_node(cdir, port, certs, home, name, "warm", partner=name))
        time.sleep(args.settle)  # past every busy window: what follows is a federation with no job
        pids = [p for proc in procs for p in _tree(proc.pid)]
        before, started = _cpu_by_role(pids), time.monotonic()
        time.sleep(args.seconds)
        after, window = _cpu_by_role(pids), time.monotonic() - started
    finally:
        for proc in reversed(procs):
            fl.stop(proc)
    used = {role: round(after.get(role, 0.0) - before.get(role, 0.0), 3) for role in after}
    total = sum(used.values())
    print(
        json.dumps(
            {
                "window_s": round(window, 1),
                "cpu_s": used,
                "cpu_s_total": round(total, 3),
                "share_of_one_core": round(total / window, 4),
                "load_average": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
