"""Scale mode of ``bench_psi.py``: streaming PSI from files at millions of ids, time and peak memory.

Each size runs in a child process (``python bench_psi_scale.py --one A.csv B.csv WORKERS``) so
its peak memory is its own. Peak RSS is sampled once a second over the child's process tree
(the main process, the forkserver and the worker processes) from ``/proc``; the main process's
own high-water mark (``VmHWM``) is reported beside it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve()


def write_ids(path: Path, start: int, n: int) -> None:
    """A CSV with a ``customer_id`` column of ``n`` synthetic ids, written a million rows at a time."""
    with path.open("w") as f:
        f.write("customer_id\n")
        for lo in range(start, start + n, 1_000_000):
            hi = min(lo + 1_000_000, start + n)
            f.write("".join(f"CUST-{i:09d}\n" for i in range(lo, hi)))


def _status_kib(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


TICK = os.sysconf("SC_CLK_TCK")


def tree_rss_kib(root: int, cpu: dict[int, float] | None = None) -> int:
    """RSS of ``root`` and all its descendants (parent links read from /proc/*/stat); ``cpu`` gets
    each one's CPU seconds so far (user + system)."""
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _status_kib(pid, "VmRSS")
        if cpu is not None and pid in seconds:
            cpu[pid] = max(cpu.get(pid, 0.0), seconds[pid])
        stack.extend(children.get(pid, []))
    return total


class PeakSampler(threading.Thread):
    """Samples the process tree's RSS every ``interval`` seconds; ``peak_kib`` is the largest seen."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_kib = interval, 0
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds, last seen
        self._stop_event = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self._stop_event.is_set():
            self.peak_kib = max(self.peak_kib, tree_rss_kib(os.getpid(), self.cpu))
            if time.monotonic() - last >= 60:  # so a run stopped before its end still tells its peak
                last = time.monotonic()
                print(
                    f"peak RSS so far (process tree): {self.peak_kib / 1024:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_one(path_a: Path, path_b: Path, workers: int, n: int) -> dict:
    """One streaming session from the two files, in this process; its figures as a dict."""
    from fedcustomer.cli.progress import Progress
    from fedcustomer.psi.source import id_batches
    from fedcustomer.psi.stream import run_psi_stream

    progress = Progress()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    ra, rb = run_psi_stream(
        id_batches(path_a, "customer_id"),
        id_batches(path_b, "customer_id"),
        workers=workers,
        max_set_size=max(n, 1),
        workdir=path_a.parent,
        progress=progress.count,
        totals=(n, n),
    )
    seconds = time.perf_counter() - start
    sampler.stop()
    cpu_s = sum(sampler.cpu.values())
    assert ra.size == rb.size == n // 2 and ra.digest == rb.digest, (ra, rb)
    return {
        "impl": "fedcustomer-stream",
        "n_per_side": n,
        "workers": workers,
        "seconds": round(seconds, 1),
        "records_per_s": round(2 * n / seconds),
        "peak_rss_tree_mib": round(sampler.peak_kib / 1024),
        "peak_rss_main_mib": round(_status_kib(os.getpid(), "VmHWM") / 1024),
        "intersection": ra.size,
        # CPU seconds of the process tree (sampled each second, so up to ~1 s per worker missed):
        # records per CPU second compares implementations on a loaded machine
        "cpu_s": round(cpu_s, 1),
        "records_per_cpu_s": round(2 * n / cpu_s) if cpu_s else None,
    }


def _log(log: Path | None, row: dict) -> None:
    print(json.dumps(row), file=sys.stderr, flush=True)
    if log is not None:
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")


def run_scale(
    sizes: list[int],
    workers: list[int] | None,
    baseline: Callable[[int], dict | None] | None,
    baseline_n: int,
    log: Path | None,
    as_json: bool,
) -> None:
    """openmined.psi at ``baseline_n``, then the streaming PSI at each size; ratios against the baseline."""
    w = (workers or [os.cpu_count() or 1])[0]
    rows: list[dict] = []
    base_rate = None
    if baseline is not None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        base = baseline(baseline_n)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if base is not None:
            cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            base_rate = 2 * baseline_n / base["seconds"]
            row = {
                "impl": f"openmined.psi {base['version']}",
                "n_per_side": baseline_n,
                "seconds": round(base["seconds"], 1),
                "records_per_s": round(base_rate),
                "cpu_s": round(cpu_s, 1),  # the child's CPU, its Python start and id generation included
                "records_per_cpu_s": round(2 * baseline_n / cpu_s) if cpu_s else None,
            }
            rows.append(row)
            _log(log, row)
    with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
        for n in sizes:
            a, b = Path(tmp) / "a.csv", Path(tmp) / "b.csv"
            write_ids(a, 0, n)
            write_ids(b, n // 2, n)
            out = subprocess.run(
                [sys.executable, str(HERE), "--one", str(a), str(b), str(w), str(n)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if base_rate:
                row["ratio_vs_baseline"] = round(row["records_per_s"] / base_rate, 2)
                if rows[0].get("records_per_cpu_s") and row.get("records_per_cpu_s"):
                    row["cpu_ratio_vs_baseline"] = round(
                        row["records_per_cpu_s"] / rows[0]["records_per_cpu_s"], 2
                    )
            rows.append(row)
            _log(log, row)
    if as_json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        result = run_one(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(result))
    else:
        sys.exit("usage: run through bench_psi.py --scale N [N ...]")
