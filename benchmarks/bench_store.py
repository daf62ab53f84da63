"""Throughput of the governed store on one CPU core, against plain SQLite in the same run.

What it measures (``--customers`` bank customers, 4 core fields each, default 25,000
customers = 100,000 core fields):

- write: the store's write path for prepared rows (per-customer data key, key wrap,
  AES-GCM encryption of every core field, insert of the row, its wrapped key and
  bookkeeping) in one transaction -> core fields/s. Baseline: ``executemany`` of the
  same rows with the core fields as plain text into a table of the same shape.
- read+decrypt: ``PartnerStore.read`` of the 4 core fields by an approved risk
  officer (unwrap each data key, decrypt, build the DataFrame, one audit entry)
  -> core fields/s. Baseline: plain ``SELECT`` of the same rows into a DataFrame.
- training read: the training pipeline's read of 10 public/sensitive features
  (no decryption) -> rows/s, against the same plain SELECT.
- end-to-end ingest of the CSV (read, validate, pseudonymise, write) -> rows/s.

Targets: >= 100k core fields/s for write and for read+decrypt.
Usage: ``python benchmarks/bench_store.py [--customers N] [--json]``. Everything is
written to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.ingest import IngestReport, prepare_chunk, read_chunks
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_ingest import ChunkWriter
from fedcustomer.data.validators import prc_id_check_char
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor

ADMIN = Actor("bench_admin", "partner_admin")
RISK = Actor("bench_risk", "risk_officer")
CORE = ["customer_id", "national_id", "full_name", "phone"]
FEATURES = [
    "age",
    "income",
    "credit_limit",
    "balance",
    "utilisation",
    "num_late_payments",
    "months_on_book",
    "num_products",
    "debt_to_income",
    "defaulted",
]


def bank_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    first17 = [
        f"110105{rng.integers(1950, 2000)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        f"{rng.integers(0, 1000):03d}"
        for _ in range(n)
    ]
    limit = rng.integers(10, 200, n) * 100.0
    util = rng.uniform(0, 1, n).round(4)
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:08d}" for i in range(n)],
            "national_id": [f + prc_id_check_char(f) for f in first17],
            "full_name": [f"Customer Name {i}" for i in range(n)],
            "phone": [f"13{v:09d}" for v in rng.integers(0, 10**9, n)],
            "region": rng.choice(["north", "south", "east", "west", "central"], n),
            "age": rng.integers(20, 80, n),
            "income": rng.integers(50, 500, n) * 100.0,
            "credit_limit": limit,
            "balance": (util * limit).round(2),
            "utilisation": util,
            "num_late_payments": rng.integers(0, 5, n),
            "months_on_book": rng.integers(1, 300, n),
            "num_products": rng.integers(1, 5, n),
            "debt_to_income": rng.uniform(0, 2, n).round(3),
            "defaulted": rng.integers(0, 2, n),
            "updated_at": "2024-06-01T00:00:00Z",
        }
    )


def timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run(customers: int, repeat: int) -> dict:
    schema = load_bundled("bank")
    n_core = customers * len(CORE)
    results: dict = {"customers": customers, "core_fields": n_core}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        csv = tmp_path / "bank.csv"
        bank_frame(customers).to_csv(csv, index=False)

        # --- write path: prepared rows -> encrypted rows in one transaction ------------------
        def write_once() -> PartnerStore:
            home = PartnerHome(tmp_path / f"home{time.perf_counter_ns()}")
            store = PartnerStore.init(home, "bench")
            store.register_schema(schema)
            chunks = [prepare_chunk(schema, c, store.pseudonymizer)[0] for c in read_chunks(csv, 50_000)]
            report = IngestReport("bank", csv.name, "0" * 64, {})
            writer = ChunkWriter(store, schema, 1, report)
            t0 = time.perf_counter()
            with store.backend.transaction():
                for chunk in chunks:
                    writer.write(chunk)
            store.bench_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
            return store

        stores = [write_once() for _ in range(repeat)]
        write_s = min(s.bench_seconds for s in stores)  # type: ignore[attr-defined]
        for s in stores[1:]:
            s.close()
        store = stores[0]

        # Baseline: plain SQLite insert of the same rows, core fields as text.
        frame = bank_frame(customers)
        rows = list(frame.astype(object).itertuples(index=False, name=None))

        def plain_insert() -> sqlite3.Connection:
            path = tmp_path / f"plain{time.perf_counter_ns()}.db"
            con = sqlite3.connect(path, isolation_level=None)
            cols = ", ".join(f'"{c}"' for c in frame.columns)
            con.execute(f"CREATE TABLE t (pk INTEGER PRIMARY KEY, {cols})")
            con.execute("BEGIN")
            con.executemany(f"INSERT INTO t ({cols}) VALUES ({','.join('?' * len(frame.columns))})", rows)
            con.execute("COMMIT")
            return con

        plain_write_s, con = timed(plain_insert, repeat)
        results["write"] = {
            "seconds": write_s,
            "core_fields_per_s": n_core / write_s,
            "plain_sqlite_seconds": plain_write_s,
            "plain_fields_per_s": n_core / plain_write_s,
            "slowdown_vs_plain": write_s / plain_write_s,
        }

        # --- read + decrypt by an approved risk officer ------------------------------------
        rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
        StoreApprovals(store).approve(ADMIN, rid)
        StoreApprovals(store).approve(Actor("bench_compliance", "compliance_officer"), rid)
        read_s, got = timed(lambda: store.read(RISK, "risk_review", CORE, dataset="bank"), repeat)
        assert len(got) == customers and got["national_id"].notna().all()
        cols = ", ".join(f'"{c}"' for c in CORE)
        plain_read_s, _ = timed(
            lambda: pd.DataFrame(con.execute(f"SELECT {cols} FROM t").fetchall(), columns=CORE), repeat
        )
        results["read_decrypt"] = {
            "seconds": read_s,
            "core_fields_per_s": n_core / read_s,
            "plain_sqlite_seconds": plain_read_s,
            "plain_fields_per_s": n_core / plain_read_s,
            "slowdown_vs_plain": read_s / plain_read_s,
        }

        # --- training read (no decryption) --------------------------------------------------
        train = Actor("node:bench", "training_pipeline")
        train_s, got = timed(lambda: store.read(train, "training", FEATURES, dataset="bank"), repeat)
        assert all(str(got[c].dtype) in ("int64", "float64") for c in FEATURES)
        fcols = ", ".join(f'"{c}"' for c in FEATURES)
        plain_train_s, _ = timed(
            lambda: pd.DataFrame(con.execute(f"SELECT {fcols} FROM t").fetchall(), columns=FEATURES), repeat
        )
        results["training_read"] = {
            "seconds": train_s,
            "rows_per_s": customers / train_s,
            "plain_sqlite_seconds": plain_train_s,
            "slowdown_vs_plain": train_s / plain_train_s,
        }
        con.close()
        store.close()

        # --- end-to-end ingest -------------------------------------------------------------
        home = PartnerHome(tmp_path / "e2e")
        with PartnerStore.init(home, "bench") as e2e:
            t0 = time.perf_counter()
            report = e2e.ingest(ADMIN, schema, csv)
            e2e_s = time.perf_counter() - t0
        assert report.inserted == customers
        results["ingest_end_to_end"] = {
            "seconds": e2e_s,
            "rows_per_s": customers / e2e_s,
            "core_fields_per_s": n_core / e2e_s,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=25_000, help="customers (4 core fields each)")
    parser.add_argument("--repeat", type=int, default=2, help="best of R runs")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
        except OSError:
            pass
    results = run(args.customers, args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    w, r, t, e = (
        results["write"],
        results["read_decrypt"],
        results["training_read"],
        results["ingest_end_to_end"],
    )
    print(
        f"governed store, {results['customers']:,} customers, {results['core_fields']:,} core fields, one core"
    )
    print(
        f"  encrypt+insert : {w['core_fields_per_s']:>12,.0f} core fields/s  "
        f"(plain SQLite {w['plain_fields_per_s']:,.0f}/s, {w['slowdown_vs_plain']:.1f}x slower)  target >= 100,000"
    )
    print(
        f"  read+decrypt   : {r['core_fields_per_s']:>12,.0f} core fields/s  "
        f"(plain SQLite {r['plain_fields_per_s']:,.0f}/s, {r['slowdown_vs_plain']:.1f}x slower)  target >= 100,000"
    )
    print(
        f"  training read  : {t['rows_per_s']:>12,.0f} rows/s x {len(FEATURES)} features  "
        f"({t['slowdown_vs_plain']:.1f}x plain SELECT)"
    )
    print(f"  ingest (CSV, validate, pseudonymise, encrypt, write): {e['rows_per_s']:,.0f} rows/s")


if __name__ == "__main__":
    main()
