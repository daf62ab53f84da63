"""Peak memory of the intersection-sum, old code against new, in fresh processes, interleaved.

Used by ``bench_psi_sum.py --ab N ... --old ROOT``. Each run is a child process that imports the
package from one checkout (``BENCH_CODE_ROOT``) and reports its own peak RSS (``ru_maxrss``, every
party in that one process, one worker) and wall and CPU seconds:

* ``cli``: ``fedcustomer psi --reveal sum --a bank.csv --b shop.csv`` (N ids per side, half shared;
  the bank's value a 0/1 flag, the shop's flag true for half its customers);
* ``session``: a two-party sum session on the in-process grid, each partner reading its column through
  its governed store (the synthetic bank and retailer of N customers, 70% shared), default chunks or
  ``--sum-chunk``;
* ``read``: only the bank's reads of a session's open (ids and column from its governed store).

Paillier encryption is replaced in the children by a stand-in that reuses one random ``r^n`` for
every value (one modular multiplication instead of a 4096-bit exponentiation, 12.7 ms of CPU each
on this machine, so 1,000,000 values would take 3.5 CPU hours): ciphertexts of the same size that
decrypt to the same values, so the released figures and the memory are the real protocol's. It is
INSECURE and exists only here. Runs alternate old/new (the order flips each repetition); the load
average is sampled before each run. Peak memory is the child's ``VmHWM`` (see :func:`peak_rss_kib`).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
NEW_ROOT = HERE.parents[1]


def fast_paillier() -> None:
    """The benchmark-only stand-in for Paillier encryption (see the module doc): NOT secure."""
    from fedcustomer.psi import intersection_sum

    cache: dict[int, int] = {}

    def encrypt_chunk(n: int, fixed) -> bytes:
        nsq = n * n
        if n not in cache:
            cache[n] = pow(secrets.randbelow(n - 2) + 2, n, nsq)
        obf, width = cache[n], (nsq.bit_length() + 7) // 8
        return b"".join((((n * int(v) + 1) * obf) % nsq).to_bytes(width, "big") for v in fixed)

    intersection_sum._encrypt_chunk = encrypt_chunk


def write_files(root: Path, n: int) -> tuple[Path, Path]:
    a, b = root / "bank.csv", root / "shop.csv"
    with a.open("w") as out:
        out.write("customer_id,default\n")
        out.writelines(f"CUST-{i:09d},{int(i % 3 == 0)}\n" for i in range(n))
    with b.open("w") as out:
        out.write("customer_id,top_segment\n")
        out.writelines(f"CUST-{i:09d},{'yes' if i % 2 == 0 else 'no'}\n" for i in range(n // 2, n + n // 2))
    return a, b


def make_homes(root: Path, n: int) -> None:
    from fedcustomer.deploy.two_party import prepare_party_home
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.vertical.parties import pin_each_other

    bank = prepare_party_home(root / "bank", "bank", customers=n, seed=4, epsilon=1000.0)
    retail = prepare_party_home(root / "retailer", "retailer", customers=n, seed=4, epsilon=1000.0)
    pin_each_other(bank, retail)
    for name in ("a", "b"):  # the one-process command's two payers
        PartnerHome.create(root / f"payer-{name}", f"payer-{name}", budget=DatasetBudget(1000.0, 1e-5))


def peak_rss_kib() -> int:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux carries that over ``execve`` from
    the parent (a benchmark that built large inputs would set every child's floor); ``VmHWM`` is the
    high-water mark of this program's own address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is


def child(kind: str, root: Path, chunk: int | None = None) -> dict:
    """One run in this process (imports from ``BENCH_CODE_ROOT``): peak RSS and seconds.

    ``read``: only what a session's open reads from the bank's governed store (its ids and its
    ``defaulted`` column): the old code's whole read, the new code's batches (consumed one by one)."""
    import pandas  # noqa: F401  (imports paid before the baseline, as in every run)

    from fedcustomer.cli import main
    from fedcustomer.partner.home import PartnerHome
    from fedcustomer.psi.intersection_sum import SumParams

    if kind == "read":
        from fedcustomer.clients.data_access import PartnerDataAccess
    if kind == "session":  # only the session needs the vertical parties' app (and torch)
        from fedcustomer.psi.sum_protocol import run_sum_on_grid
        from fedcustomer.server.inprocess import LocalGrid
        from fedcustomer.vertical.parties import party_app
    else:
        import fedcustomer.cli.psi
        import fedcustomer.cli.psi_sum
        import fedcustomer.psi.stream  # noqa: F401
    fast_paillier()
    base = peak_rss_kib()
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "cli":
        argv = ["psi", "--reveal", "sum", "--a", str(root / "bank.csv"), "--b", str(root / "shop.csv")]
        argv += ["--value", "default", "--where", "top_segment", "--epsilon", "1", "--json"]
        argv += ["--a-home", str(root / "payer-a"), "--b-home", str(root / "payer-b")]
        main(argv)
        result = None
    elif kind == "read":
        access = PartnerDataAccess(PartnerHome(root / "bank"))
        if hasattr(access, "linkage_column_batches"):
            rows = sum(
                len(ids) for ids, _ in access.linkage_column_batches("bank", "defaulted", chunk or 65_536)
            )
        else:
            rows = len(access.linkage_column("bank", "defaulted")[0])
        result = {"rows": rows}
    else:
        grid = LocalGrid(party_app([str(root / "bank"), str(root / "retailer")]), 2)
        view = run_sum_on_grid(grid, 1, 2, "bank", "retailer", value="defaulted", where="loyalty_member",
                               name_a="bank", name_b="retailer", params=SumParams(1.0),
                               **({"chunk_size": chunk} if chunk else {}))  # fmt: skip
        result = {
            "noisy_count": view.noisy_count,
            "rate": view.rate,
            "chunks": [view.chunks_a, view.chunks_b],
        }
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "rss_before_mib": round(base / 1024, 1),
        "result": result,
    }


def _run(kind: str, root: Path, code: Path, chunk: int | None = None) -> dict:
    env = os.environ | {"BENCH_CODE_ROOT": str(code), "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE), kind, str(root), *([str(chunk)] if chunk else [])]
    load = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row | {"load": round(load, 2)}


def ab_runs(sizes: list[int], old: Path, repeat: int, kinds: list[str], chunk: int | None = None) -> dict:
    """Old vs new per size and kind, alternating; medians of peak RSS, its rise over the imports, time."""
    if old is None or not (Path(old) / "fedcustomer").is_dir():
        raise SystemExit("--ab needs --old ROOT, a checkout of the old code (its fedcustomer/ package)")
    doc: dict = {"runs": [], "summary": []}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="psi-sum-ab-") as tmp:
            # BENCH_AB_DIR keeps the inputs (files, governed homes) for a later run of the same size
            root = Path(os.environ.get("BENCH_AB_DIR") or tmp) / f"n{n}"
            if not (root / "ready").exists():
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
                write_files(root, n)
                t = time.perf_counter()
                make_homes(root, n)
                (root / "ready").touch()
                print(f"n={n:,}: data ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            for kind in kinds:
                rows: dict[str, list[dict]] = {"old": [], "new": []}
                for rep in range(repeat):
                    order = [("old", Path(old)), ("new", NEW_ROOT)]
                    for label, code in order if rep % 2 == 0 else order[::-1]:
                        row = _run(kind, root, code, chunk) | {
                            "n": n,
                            "kind": kind,
                            "code": label,
                            "rep": rep,
                        }
                        rows[label].append(row)
                        doc["runs"].append(row)
                        print(json.dumps(row), file=sys.stderr)
                summary = {"n": n, "kind": kind}
                for label, got in rows.items():
                    summary[label] = {
                        key: statistics.median(r[key] for r in got)
                        for key in ("peak_rss_mib", "rss_before_mib", "seconds", "cpu_s", "load")
                    }
                    summary[label]["rise_mib"] = statistics.median(
                        r["peak_rss_mib"] - r["rss_before_mib"] for r in got
                    )
                summary["rss_new_over_old"] = round(
                    summary["new"]["peak_rss_mib"] / summary["old"]["peak_rss_mib"], 3
                )
                summary["cpu_new_over_old"] = round(summary["new"]["cpu_s"] / summary["old"]["cpu_s"], 3)
                doc["summary"].append(summary)
                print(json.dumps(summary), file=sys.stderr)
    return doc


if __name__ == "__main__":  # a child: KIND ROOT
    sys.path.insert(0, os.environ.get("BENCH_CODE_ROOT") or str(NEW_ROOT))
    report = child(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    sys.stdout.flush()
    print(json.dumps(report))
