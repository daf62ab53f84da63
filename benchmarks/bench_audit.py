"""Audit log throughput: appends/s and verified entries/s, against baselines in the same run.

Baselines: appending the same JSON lines with one ``os.write`` each on an ``O_APPEND``
descriptor (no hashing, no locking, no checkpoints), and parsing them back with
``json.loads`` (no hash checks, no signatures). The ratios show what tamper evidence costs.
Targets: >= 5,000 appends/s and >= 50,000 verified entries/s.

Run: ``python benchmarks/bench_audit.py [--entries 20000] [--processes 4] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcustomer.privacy.audit.records import canonical_json
from fedcustomer.privacy.audit.writer import AuditLog


def _record(i: int) -> dict:
    return dict(
        actor=f"analyst-{i % 7}",
        role="data_scientist",
        action="read",
        decision="allowed" if i % 10 else "denied",
        dataset="loans",
        fields=["income", "age", "balance"],
        tier="sensitive",
        purpose="credit_risk_training",
        approvals=["officer-2"],
        row_count=1200,
        pseudonyms=[f"ps_{i:08x}", f"ps_{i + 1:08x}"],
        details={"run_id": "bench", "round": i % 50},
    )


def bench_append(directory: Path, n: int, every: int) -> float:
    log = AuditLog.open(directory / "audit", keys_dir=directory / "keys", checkpoint_every=every)
    records = [_record(i) for i in range(n)]
    t0 = time.perf_counter()
    for r in records:
        log.append(**r)
    log.close()
    return n / (time.perf_counter() - t0)


def bench_baseline_append(path: Path, n: int) -> float:
    records = [_record(i) for i in range(n)]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    t0 = time.perf_counter()
    for i, r in enumerate(records):
        os.write(fd, canonical_json({**r, "seq": i + 1}) + b"\n")
    os.close(fd)
    return n / (time.perf_counter() - t0)


def bench_verify(directory: Path) -> tuple[float, int]:
    log = AuditLog(directory / "audit")
    t0 = time.perf_counter()
    report = log.verify()
    dt = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"benchmark log failed verification: {report.message}")
    return report.entries / dt, report.checkpoints


def bench_baseline_parse(path: Path) -> float:
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
            n += 1
    return n / (time.perf_counter() - t0)


def _proc(directory: str, n: int, w: int) -> None:
    log = AuditLog.open(Path(directory) / "audit", keys_dir=Path(directory) / "keys", checkpoint_every=1000)
    for i in range(n):
        log.append(**_record(w * n + i))
    log.close()


def bench_concurrent(directory: Path, n: int, procs: int) -> float:
    AuditLog.open(directory / "audit", keys_dir=directory / "keys")
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=_proc, args=(str(directory), n // procs, w)) for w in range(procs)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    report = AuditLog(directory / "audit").verify()
    if not report.ok or report.entries != (n // procs) * procs:
        raise SystemExit(f"concurrent appends lost or broke entries: {report.message}")
    return report.entries / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        (root / "c").mkdir()
        base_append = bench_baseline_append(root / "baseline.jsonl", args.entries)
        append = bench_append(root / "a", args.entries, args.checkpoint_every)
        base_parse = bench_baseline_parse(root / "baseline.jsonl")
        verify, cps = bench_verify(root / "a")
        conc = bench_concurrent(root / "c", args.entries, args.processes) if args.processes > 1 else None

    results = {
        "entries": args.entries,
        "checkpoint_every": args.checkpoint_every,
        "checkpoints": cps,
        "append_per_s": round(append),
        "baseline_append_per_s": round(base_append),
        "append_ratio_to_baseline": round(append / base_append, 3),
        "verify_entries_per_s": round(verify),
        "baseline_parse_per_s": round(base_parse),
        "verify_ratio_to_baseline": round(verify / base_parse, 3),
        "concurrent_processes": args.processes,
        "concurrent_append_per_s": round(conc) if conc else None,
        "targets_met": append >= 5000 and verify >= 50000,
    }
    print(
        f"append : {append:>10,.0f} entries/s  (baseline raw write {base_append:,.0f}/s, ratio {append / base_append:.2f})"
    )
    print(
        f"verify : {verify:>10,.0f} entries/s  (baseline json.loads {base_parse:,.0f}/s, ratio {verify / base_parse:.2f}, {cps} checkpoints)"
    )
    if conc:
        print(f"append : {conc:>10,.0f} entries/s total with {args.processes} processes (verified intact)")
    print(
        f"targets (>= 5,000 appends/s, >= 50,000 verified/s): {'met' if results['targets_met'] else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
