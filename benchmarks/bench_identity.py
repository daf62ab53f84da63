"""What authenticated people cost a governed read, against the same read without them, in one run.

Two partner homes hold the same ``--rows`` bank customers. In the first (a development
home) a data scientist reads 10 public/sensitive fields as a bare actor; in the second
(a home with a people registry) the same person reads the same fields with their
identity key: the request is signed, the registry re-checked, the Ed25519 signature
verified, the nonce recorded and the signed request kept in the audit entry. Each read
is repeated ``--repeat`` times in alternation; the medians and their ratio are reported,
and the authentication step alone is timed too (the end-to-end ratio is noisy on a busy
machine; the step's share of the read is not).

Target (issue 15): signature verification adds <= 10% to a 1,000-row governed read.
Usage: ``python benchmarks/bench_identity.py [--rows N] [--repeat N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_store import FEATURES, bank_frame

from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.person_keys import KeySigner
from fedcustomer.privacy.access.policy import Actor

FIELDS = [f for f in FEATURES if f != "defaulted"] + ["region"]


def run(rows: int, repeat: int) -> dict:
    schema = load_bundled("bank")
    admin, dana = KeySigner.generate(), KeySigner.generate()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "bank.csv"
        bank_frame(rows).to_csv(csv, index=False)
        plain = PartnerStore.init(PartnerHome(Path(tmp) / "plain"), "bench")
        plain.ingest(Actor("admin", "partner_admin"), schema, csv)
        signed = PartnerStore.init(
            PartnerHome(Path(tmp) / "signed"), "bench", admin=admin, admin_name="admin"
        )
        PeopleAdmin(signed).add(admin, dana.public_key, "dana", "data_scientist")
        signed.ingest(admin, schema, csv)
        bare = Actor("dana", "data_scientist")
        timings: dict[str, list[float]] = {"bare": [], "signed": []}
        for _ in range(repeat):
            for kind, store, who in (("bare", plain, bare), ("signed", signed, dana)):
                t0 = time.perf_counter()
                frame = store.read(who, "analytics", FIELDS, dataset="bank")
                timings[kind].append(time.perf_counter() - t0)
                assert len(frame) == rows
        auth: list[float] = []
        for _ in range(repeat):  # the authentication step alone, exactly as a read runs it
            t0 = time.perf_counter()
            signed.principal(
                dana, action="read", audit_action="read", dataset="bank", fields=FIELDS, purpose="x"
            )
            auth.append(time.perf_counter() - t0)
        plain.close()
        signed.close()
    bare_s, signed_s = statistics.median(timings["bare"]), statistics.median(timings["signed"])
    auth_s = statistics.median(auth)
    return {
        "rows": rows,
        "fields": len(FIELDS),
        "repeat": repeat,
        "bare_read_ms": round(bare_s * 1000, 2),
        "signed_read_ms": round(signed_s * 1000, 2),
        "overhead_ratio": round(signed_s / bare_s, 3),
        "auth_step_ms": round(auth_s * 1000, 2),
        "auth_step_share": round(auth_s / bare_s, 3),
        "target_ratio": 1.10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.rows, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['rows']:,}-row governed read of {result['fields']} fields, median of {result['repeat']}: "
        f"bare actor {result['bare_read_ms']} ms, signed request {result['signed_read_ms']} ms, "
        f"ratio {result['overhead_ratio']} (target <= {result['target_ratio']}); the authentication step alone "
        f"(sign, registry, signature, nonce) {result['auth_step_ms']} ms = {result['auth_step_share']:.1%} of the read"
    )


if __name__ == "__main__":
    main()
