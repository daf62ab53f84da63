"""The web console's two targets: a filtered audit page over 1M entries, and a 100-round run page.

1. Audit search. An audit log of ``--entries`` entries (default 1,000,000; hash-chained
   exactly as the writer chains them, written directly so the set-up takes seconds rather
   than an hour of appends) is indexed once by the console's audit index; then pages of
   50 are asked with typical filters (actor; decision=denied; a field; actor + decision +
   purpose; a time window; a page deep in the log). Each timing is one whole page as the
   console serves it: catching up with the log, the index query, and the 50 entries read
   back from the log. Target (issue 18): < 300 ms per filtered page.
2. Run page. A run directory with ``--rounds`` rounds x ``--partners`` partners (default
   100 x 10): loading it (metrics.csv, summary.json) and rendering the page with its
   charts. Target: < 500 ms.

Usage: ``python benchmarks/bench_console.py [--entries N] [--rounds N] [--partners N] [--repeat N] [--json]``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcustomer.console.audit_index import AuditIndex
from fedcustomer.console.pages import ENV
from fedcustomer.console.routes_runs import charts
from fedcustomer.console.runs import RunsFolder
from fedcustomer.privacy.audit.records import GENESIS_HASH, LOG_NAME, canonical_json, entry_hash

ACTORS = [f"person{i:03d}" for i in range(200)]
ROLES = ["data_scientist", "marketing_analyst", "risk_officer", "partner_admin", "training_pipeline"]
ACTIONS = ["read", "fl_round", "query", "ingest", "approve", "audit_query"]
PURPOSES = ["training", "analytics", "marketing", "risk_review", "administration"]
FIELDS = ["age", "income", "region", "balance", "credit_limit", "utilisation", "phone", "national_id"]
START = datetime(2026, 1, 1, tzinfo=UTC)


def write_log(directory: Path, n: int) -> None:
    """``n`` chained entries, one every 3 seconds from START, 1 in 50 denied."""
    directory.mkdir(parents=True)
    prev = GENESIS_HASH
    with open(directory / LOG_NAME, "wb") as f:
        for i in range(n):
            rec = {
                "seq": i + 1,
                "time": (START + timedelta(seconds=3 * i)).isoformat(timespec="microseconds"),
                "actor": ACTORS[(i * 7) % len(ACTORS)],
                "role": ROLES[i % len(ROLES)],
                "action": ACTIONS[(i // 3) % len(ACTIONS)],
                "decision": "denied" if i % 50 == 0 else "allowed",
                "dataset": "bank",
                "fields": [FIELDS[i % len(FIELDS)], FIELDS[(i // 8) % len(FIELDS)]],
                "tier": None,
                "purpose": PURPOSES[(i // 5) % len(PURPOSES)],
                "approvals": [],
                "row_count": 100,
                "reason": None,
                "pseudonyms": [],
                "details": {},
            }
            h = entry_hash(prev, rec)
            rec["prev_hash"], rec["hash"] = prev, h
            f.write(canonical_json(rec) + b"\n")
            prev = h


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def audit_search(tmp: Path, entries: int, repeat: int) -> dict:
    audit = tmp / "audit"
    t = time.perf_counter()
    write_log(audit, entries)
    written = time.perf_counter() - t
    index = AuditIndex(audit, tmp / "index.db")
    t = time.perf_counter()
    index.update()
    index.analyze()
    built = time.perf_counter() - t
    mid = START + timedelta(seconds=3 * entries // 2)
    deep = entries // 2
    cases = {
        "actor": ({"actor": "person042"}, None, None, None),
        "decision=denied": ({"decision": "denied"}, None, None, None),
        "field": ({"field": "national_id"}, None, None, None),
        "actor+decision+purpose": (
            {"actor": "person007", "decision": "allowed", "purpose": "training"},
            None,
            None,
            None,
        ),
        "time window (1 h)": (
            {},
            mid.isoformat(timespec="microseconds"),
            (mid + timedelta(hours=1)).isoformat(timespec="microseconds"),
            None,
        ),
        "role, deep page": ({"role": "risk_officer"}, None, None, deep),
    }
    results = {}
    for name, (filters, since, until, before) in cases.items():
        page = index.page(filters, since=since, until=until, before=before)
        assert page.entries, name
        results[name] = round(
            median_ms(
                functools.partial(index.page, filters, since=since, until=until, before=before), repeat
            ),
            1,
        )
    return {
        "entries": entries,
        "write_s": round(written, 1),
        "index_build_s": round(built, 1),
        "page_ms": results,
    }


def run_page(tmp: Path, rounds: int, partners: int, repeat: int) -> dict:
    run = tmp / "runs" / "big-run"
    run.mkdir(parents=True)
    names = [f"partner_{i:02d}" for i in range(partners)]
    rows = []
    for r in range(1, rounds + 1):
        row = {
            "round": r,
            "applied": 1,
            "partners_trained": partners,
            "partners_refused": 0,
            "partners_failed": 0,
            "wall_time_s": 1.0,
            "eval_auc": 0.6 + r / 1000,
            "eval_loss": 0.7 - r / 1000,
            "eval_ks": 0.3,
            "eval_brier": 0.2,
            "eval_accuracy": 0.8,
        }
        row.update({f"epsilon_{p}": 0.01 * r * (1 + i / 10) for i, p in enumerate(names)})
        rows.append(row)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "status": "completed",
        "rounds_planned": rounds,
        "rounds_completed": rounds,
        "metrics": {"auc": 0.7, "loss": 0.5},
        "partners": [
            {
                "name": p,
                "epsilon_target": 3.0,
                "epsilon_spent": 1.0,
                "rounds_trained": rounds,
                "rounds_refused": 2,
                "rounds_failed": 0,
                "refusals": [{"round": r, "reason": "budget"} for r in (rounds - 1, rounds)],
                "failures": [],
            }
            for p in names
        ],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    folder = RunsFolder(tmp / "runs")
    template = ENV.get_template("run.html")

    def render() -> int:
        loaded = folder.load("big-run")
        return len(
            template.render(partner="bench", person=None, nav=[], csrf="", run=loaded, charts=charts(loaded))
        )

    size = render()
    return {
        "rounds": rounds,
        "partners": partners,
        "page_bytes": size,
        "render_ms": round(median_ms(render, repeat), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--partners", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        search = audit_search(Path(tmp), args.entries, args.repeat)
        page = run_page(Path(tmp), args.rounds, args.partners, args.repeat)
    result = {"audit_search": search, "run_page": page, "machine": f"{os.cpu_count()} cores"}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"audit log of {search['entries']:,} entries: written in {search['write_s']} s, indexed in "
        f"{search['index_build_s']} s (once; later pages index only new lines)"
    )
    print("filtered page of 50 (median ms, target < 300):")
    for name, ms in search["page_ms"].items():
        print(f"  {name:<26} {ms:8.1f}")
    print(
        f"run page, {page['rounds']} rounds x {page['partners']} partners: {page['render_ms']} ms "
        f"(target < 500), {page['page_bytes']:,} bytes"
    )
    worst = max(search["page_ms"].values())
    if worst >= 300 or page["render_ms"] >= 500:
        print("TARGET MISSED")


if __name__ == "__main__":
    main()
