"""What recording a read's customers costs: time and bytes, at 1,000,000 customers and on a real read.

Every successful governed read stores the sorted pseudonyms it returned as a content-addressed
set beside the store and cites it by digest in its audit entry
(:mod:`fedcustomer.data.store_customers`). Measured here, in one run:

- 1M customers: recording the set (first time; again, when the same customers are read again),
  its bytes in the database and in the audit entry, and looking customers up; baseline in the
  same run: the naive alternative, one row per customer per read in a plain table.
- A/B on a governed training read of ``--customers`` customers: with the set and without it
  (the recording replaced by a no-op), interleaved old/new ``--repeat`` times.

Usage: ``python benchmarks/bench_read_customers.py [--million N] [--customers N] [--repeat R] [--json]``.
Everything is written to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store import ADMIN, FEATURES, bank_frame

from fedcustomer.data import store_read
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_customers import CustomerSets, record_customers
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor


class _Backend:
    """The two calls record_customers makes, over a plain connection."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.con.execute(sql, params)


def million(n: int, tmp: Path) -> dict[str, Any]:
    pseudonyms = sorted(secrets.token_hex(32) for _ in range(n))
    con = sqlite3.connect(tmp / "sets.db", isolation_level=None)
    backend = _Backend(con)
    t0 = time.perf_counter()
    citation = record_customers(backend, "bank", pseudonyms)
    first_s = time.perf_counter() - t0
    con.execute("VACUUM")
    size = (tmp / "sets.db").stat().st_size
    t0 = time.perf_counter()
    again = record_customers(backend, "bank", pseudonyms)
    again_s = time.perf_counter() - t0
    con.execute("VACUUM")
    assert again == citation and (tmp / "sets.db").stat().st_size == size  # stored once
    sets = CustomerSets(lambda sql, params: con.execute(sql, params).fetchone())
    probes = [pseudonyms[i] for i in range(0, n, max(1, n // 500))] + [
        secrets.token_hex(32) for _ in range(500)
    ]
    t0 = time.perf_counter()
    found = [sets.reached(citation, p) for p in probes]
    lookup_s = (time.perf_counter() - t0) / len(probes)
    assert found[: len(probes) - 500] == [True] * (len(probes) - 500) and not any(found[-500:])
    naive = sqlite3.connect(tmp / "naive.db", isolation_level=None)
    naive.execute("CREATE TABLE read_rows (entry INTEGER, pseudonym TEXT)")
    t0 = time.perf_counter()
    naive.execute("BEGIN")
    naive.executemany("INSERT INTO read_rows VALUES (1, ?)", ((p,) for p in pseudonyms))
    naive.execute("COMMIT")
    naive_s = time.perf_counter() - t0
    naive.close()
    con.close()
    return {
        "customers": n,
        "record_first_s": first_s,
        "record_again_s": again_s,
        "db_bytes": size,
        "db_bytes_per_customer": size / n,
        "entry_bytes": len(json.dumps(citation)),
        "lookup_ms": lookup_s * 1000,
        "naive_insert_s": naive_s,
        "naive_db_bytes": (tmp / "naive.db").stat().st_size,
    }


def ab_read(customers: int, repeat: int, tmp: Path) -> dict[str, Any]:
    csv = tmp / "bank.csv"
    bank_frame(customers).to_csv(csv, index=False)
    home = PartnerHome(tmp / "home")
    train = Actor("node:bench", "training_pipeline")
    real = store_read.record_customers
    times: dict[str, list[float]] = {"without_set": [], "with_set": []}
    with PartnerStore.init(home, "bench") as store:
        store.ingest(ADMIN, load_bundled("bank"), csv)
        store.read(train, "training", FEATURES, dataset="bank")  # warm up: neither side pays for a cold cache
        pair = [("without_set", lambda *a: {"set_sha256": "-", "count": 0}), ("with_set", real)]
        for i in range(repeat):
            for label, recorder in pair if i % 2 == 0 else pair[::-1]:  # alternate which goes first
                store_read.record_customers = recorder  # type: ignore[assignment]
                try:
                    t0 = time.perf_counter()
                    frame = store.read(train, "training", FEATURES, dataset="bank")
                    times[label].append(time.perf_counter() - t0)
                finally:
                    store_read.record_customers = real
                assert len(frame) == customers
    old, new = statistics.median(times["without_set"]), statistics.median(times["with_set"])
    return {
        "customers": customers,
        "runs": times,
        "median_without_s": old,
        "median_with_s": new,
        "ratio": new / old,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--million", type=int, default=1_000_000, help="customers in the set-size run")
    parser.add_argument("--customers", type=int, default=20_000, help="customers in the A/B training read")
    parser.add_argument("--repeat", type=int, default=3, help="old/new pairs, interleaved")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "set": million(args.million, Path(tmp)),
            "read": ab_read(args.customers, args.repeat, Path(tmp)),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    s, r = results["set"], results["read"]
    print(f"customer set of {s['customers']:,} customers")
    print(
        f"  record: {s['record_first_s']:.2f} s first, {s['record_again_s']:.2f} s again (stored once); "
        f"{s['db_bytes'] / 2**20:.1f} MiB in the database ({s['db_bytes_per_customer']:.1f} B/customer), "
        f"{s['entry_bytes']} B in the audit entry; lookup {s['lookup_ms']:.2f} ms"
    )
    print(
        f"  naive row per customer: {s['naive_insert_s']:.2f} s, {s['naive_db_bytes'] / 2**20:.1f} MiB per read"
    )
    print(
        f"training read of {r['customers']:,} customers, median of {len(r['runs']['with_set'])} interleaved: "
        f"{r['median_without_s']:.3f} s without the set, {r['median_with_s']:.3f} s with it ({r['ratio']:.2f}x)"
    )


if __name__ == "__main__":
    main()
