"""Throughput of core-field encryption on one CPU core, against a hashing baseline.

The governed store encrypts every core-tier field with its customer's data key at ingest
and decrypts it on every approved read, so field encryption must not be the bottleneck
(target: >= 100k field encryptions and decryptions per second on one core).

Workload: ``--fields`` values (default 100,000) spread over customers with five core
fields each, every customer with its own data key. Reported per second, best of
``--repeat`` runs:

- ``encrypt_record`` / ``decrypt_record`` (the store's path: one AESGCM per record),
- ``encrypt`` / ``decrypt`` called field by field,
- baseline: ``hashlib.sha256`` of the same UTF-8 strings, measured in the same run, so
  the ratio is comparable across machines,
- pseudonyms per second and data-key wrap/unwrap per second (file keyring).

Usage: ``python benchmarks/bench_crypto.py [--fields N] [--repeat R] [--json]``.
Key files live in a temporary directory that is removed afterwards; nothing else is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import FileKeyRing, data_key_context
from fedcustomer.privacy.crypto.material import new_data_key
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

FIELDS = ("national_id", "full_name", "phone", "card_number", "credit_record")


def _pin_one_core() -> str:
    """Run on a single CPU so the numbers mean 'per core'."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity on this OS)"


def _best_rate(n: int, fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def _records(n_fields: int) -> list[tuple[bytes, str, dict[str, str]]]:
    """Synthetic customers: (data key, pseudonym, core values); realistic short strings."""
    n_customers = max(1, n_fields // len(FIELDS))
    out = []
    for i in range(n_customers):
        values = {
            "national_id": f"AB{i:06d}C",
            "full_name": f"Customer Number {i}",
            "phone": f"+44 7700 {i % 1_000_000:06d}",
            "card_number": f"4111 1111 {i % 10_000:04d} {(i * 7) % 10_000:04d}",
            "credit_record": f"limit=5000;late_90d={i % 3};defaults=0;score={600 + i % 250}",
        }
        out.append((new_data_key(), f"{i:064x}", values))
    return out


def run(n_fields: int, repeat: int) -> dict[str, object]:
    pinned = _pin_one_core()
    cipher = FieldCipher("bench")
    records = _records(n_fields)
    n = len(records) * len(FIELDS)
    strings = [v.encode("utf-8") for _, _, values in records for v in values.values()]
    sha256 = hashlib.sha256

    def baseline() -> None:
        for s in strings:
            sha256(s).digest()

    def enc_records() -> list[dict[str, bytes]]:
        return [cipher.encrypt_record(dk, ps, values) for dk, ps, values in records]

    tokens = enc_records()
    pairs = list(zip(records, tokens))

    def dec_records() -> None:
        for (dk, ps, _), toks in pairs:
            cipher.decrypt_record(dk, ps, toks)

    def enc_fields() -> None:
        enc = cipher.encrypt
        for dk, ps, values in records:
            for field, value in values.items():
                enc(dk, field, ps, value)

    def dec_fields() -> None:
        dec = cipher.decrypt
        for (dk, ps, _), toks in pairs:
            for field, token in toks.items():
                dec(dk, field, ps, token)

    # Correctness check before timing: every value comes back.
    assert all(cipher.decrypt_record(dk, ps, toks) == vals for (dk, ps, vals), toks in pairs)

    rates: dict[str, float] = {"sha256_baseline": _best_rate(n, baseline, repeat)}
    rates["encrypt_record"] = _best_rate(n, enc_records, repeat)
    rates["decrypt_record"] = _best_rate(n, dec_records, repeat)
    rates["encrypt_field"] = _best_rate(n, enc_fields, repeat)
    rates["decrypt_field"] = _best_rate(n, dec_fields, repeat)

    with tempfile.TemporaryDirectory() as tmp:
        keys_dir = Path(tmp) / "keys"
        ring = FileKeyRing.create(keys_dir)
        pseudonymizer = Pseudonymizer.create(keys_dir)
        ids = [values["national_id"] for _, _, values in records]
        rates["pseudonym"] = _best_rate(len(ids), lambda: pseudonymizer.pseudonyms(ids), repeat)
        contexts = [data_key_context("bench", ps) for _, ps, _ in records]
        wrapped = [ring.wrap(dk, ctx) for (dk, _, _), ctx in zip(records, contexts)]
        rates["wrap"] = _best_rate(
            len(records), lambda: [ring.wrap(dk, ctx) for (dk, _, _), ctx in zip(records, contexts)], repeat
        )
        rates["unwrap"] = _best_rate(
            len(records), lambda: [ring.unwrap(w, ctx) for w, ctx in zip(wrapped, contexts)], repeat
        )

    base = rates["sha256_baseline"]
    return {
        "fields": n,
        "customers": len(records),
        "repeat": repeat,
        "cpu": pinned,
        "python": sys.version.split()[0],
        "per_second": {k: round(v) for k, v in rates.items()},
        "ratio_to_sha256": {k: round(v / base, 3) for k, v in rates.items() if k != "sha256_baseline"},
        "target_met": min(rates[k] for k in ("encrypt_record", "decrypt_record")) >= 100_000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=100_000, help="number of field values (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; best is kept")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.fields < len(FIELDS) or args.repeat < 1:
        parser.error(f"--fields must be >= {len(FIELDS)} and --repeat >= 1")
    result = run(args.fields, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"fedcustomer field encryption, {result['fields']:,} fields / {result['customers']:,} customers, "
        f"{result['cpu']}, best of {result['repeat']}"
    )
    per_second = result["per_second"]
    ratios = result["ratio_to_sha256"]
    assert isinstance(per_second, dict) and isinstance(ratios, dict)
    print(f"  {'operation':<18}{'per second':>14}{'x sha256':>10}")
    for name, rate in per_second.items():
        ratio = "1.000" if name == "sha256_baseline" else f"{ratios[name]:.3f}"
        print(f"  {name:<18}{rate:>14,}{ratio:>10}")
    print(
        f"  target >= 100,000 field enc/dec per second on one core: {'met' if result['target_met'] else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
