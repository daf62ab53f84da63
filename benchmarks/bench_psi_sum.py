"""Private intersection-sum (``psi --reveal sum``) beside count-only PSI, on the same ids in the same run.

Workload: ``--n`` ids per side (default 10,000), half shared; the value holder's value is a
0/1 flag, the predicate holder's flag selects half of its customers. Times:

* count-only PSI through the partners' real ``query.psi_*`` handlers (signed, state on disk),
  as in ``bench_psi_modes.py``;
* the intersection-sum with both parties in one process, charged to both ledgers
  (:func:`fedcustomer.psi.intersection_sum.run_intersection_sum_local`), whole and by phase:
  Paillier key generation, blinding, encrypting the values, re-blinding, matching and the
  homomorphic sum, decryption.

Also the message bytes on the wire and the noisy rate next to the plain one.

With ``--chunks C1 C2 ...`` it instead runs the two-party intersection-sum through the partners'
real ``query.psi_sum_*`` handlers on the in-process grid (sessions on disk, pinned link keys,
every chunk signed and checked), once per chunk size, each in a fresh process, and reports the
time and the peak RSS of that process (both partners and the relay), so one chunk and several
can be compared.

With ``--workers 1`` (the default) all the work is in this process, so the CPU seconds it
reports (``*_cpu_s``) are the protocol's whole cost, much less sensitive to a loaded machine
than wall time.

With ``--ab N ... --old ROOT`` it compares peak memory old code against new, interleaved, in fresh
processes (:mod:`psi_sum_memory`): the one-process ``fedcustomer psi --reveal sum`` on two CSV
files, and a two-party sum session whose partners read their columns through their governed stores.

Usage: ``python benchmarks/bench_psi_sum.py [--n N] [--workers W] [--no-phases] [--chunks C ...] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# BENCH_CODE_ROOT: the checkout whose fedcustomer a child imports (an A/B run's old code); this one's by default
sys.path.insert(0, os.environ.get("BENCH_CODE_ROOT") or str(Path(__file__).resolve().parents[1]))

from bench_psi_modes import federation

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.psi.intersection_sum import (
    Payer,
    PredicateHolder,
    SumParams,
    ValueHolder,
    run_intersection_sum_local,
)
from fedcustomer.psi.protocol import REVEAL_COUNT
from fedcustomer.psi.relay import run_psi_on_grid


def workload(n: int) -> tuple[list[str], list[float], list[str], list[bool], float]:
    ids_a = [f"CUST-{i:09d}" for i in range(n)]
    ids_b = [f"CUST-{i:09d}" for i in range(n // 2, n + n // 2)]
    values = [float(i % 3 == 0) for i in range(n)]
    where = [i % 2 == 0 for i in range(n // 2, n + n // 2)]
    chosen = [values[i] for i in range(n // 2, n) if i % 2 == 0]
    return ids_a, values, ids_b, where, sum(chosen) / len(chosen)


def phases(n: int, workers: int, params: SumParams) -> dict[str, float]:
    """The protocol step by step, to say where the time goes."""
    ids_a, values, ids_b, where, _ = workload(n)
    out: dict[str, float] = {}
    t = time.perf_counter()
    a = ValueHolder(ids_a, values, params, workers=workers)
    out["paillier_keygen_and_prepare_s"] = time.perf_counter() - t
    b = PredicateHolder(ids_b, where, params, workers=workers)
    t = time.perf_counter()
    a._party.blinded()
    out["blind_a_s"] = time.perf_counter() - t
    t = time.perf_counter()
    offer = a.offer()
    out["encrypt_values_s"] = time.perf_counter() - t
    t = time.perf_counter()
    padded = b.blinded()
    doubly = a.reblind(padded)
    out["blind_b_and_reblind_s"] = time.perf_counter() - t
    t = time.perf_counter()
    answer = b.answer(offer, doubly)
    out["reblind_match_and_sum_s"] = time.perf_counter() - t
    t = time.perf_counter()
    a.decrypt(answer)
    out["decrypt_s"] = time.perf_counter() - t
    out["wire_bytes"] = sum(len(v) for m in (offer, padded, doubly) for v in m.values()) + len(answer["sum"])
    return {k: round(v, 3) for k, v in out.items()}


def sum_federation(root: Path, n: int):
    """Two partner homes (pinned link keys, budgets) answering the real ``query.psi_sum_*`` handlers."""
    from flwr.clientapp import ClientApp

    from fedcustomer.psi import signing
    from fedcustomer.psi.sum_protocol import register_sum_handlers
    from fedcustomer.server.inprocess import LocalGrid

    homes = [
        PartnerHome.create(root / name, name, budget=DatasetBudget(10.0, 1e-5)) for name in ("bank", "shop")
    ]
    pubs = [signing.ensure_link_key(h) for h in homes]
    signing.pin_peer(homes[0], "shop", pubs[1])
    signing.pin_peer(homes[1], "bank", pubs[0])
    ids_a, values, ids_b, where, plain = workload(n)
    columns = {"accounts": (ids_a, values), "loyalty": (ids_b, where)}
    app = ClientApp()

    def load_column(home, dataset, column, *batch):  # batches since the batched reads; one pair before
        ids, cells = map(list, columns[dataset])
        return [(ids, cells)] if batch else (ids, cells)

    register_sum_handlers(app, lambda ctx: homes[int(ctx.node_config["partition-id"])], load_column)
    return LocalGrid(app, 2), plain


def chunk_child(n: int, chunk: int) -> dict:
    """One two-party sum over the handlers in this (fresh) process: seconds and peak RSS. On a version
    without chunks (the one-message protocol) it runs that, for a before/after comparison."""
    import inspect

    from fedcustomer.psi.sum_protocol import run_sum_on_grid

    chunked = "chunk_size" in inspect.signature(run_sum_on_grid).parameters
    with tempfile.TemporaryDirectory() as tmp:
        grid, plain = sum_federation(Path(tmp), n)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, cpu = time.perf_counter(), time.process_time()
        view = run_sum_on_grid(grid, 1, 2, "accounts", "loyalty", value="v", where="w", name_a="bank",
                               name_b="shop", params=SumParams(1.0), session_id="bench-sum",
                               **({"chunk_size": chunk} if chunked else {}))  # fmt: skip
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "n_per_side": n,
        "chunk_size": chunk if chunked else None,
        "chunks_per_side": [getattr(view, "chunks_a", 1), getattr(view, "chunks_b", 1)],
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_sum_mib": round(base / 1024, 1),
        "bytes_relayed": view.bytes_relayed,
        "rate": {"noisy": view.rate, "plain": round(plain, 4), "noisy_count": view.noisy_count},
    }


def chunk_runs(n: int, chunks: list[int]) -> dict:
    runs = []
    for chunk in chunks:
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--chunks", str(chunk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        row = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(row)
        print(
            f"chunk {chunk:>8,}: {row['chunks_per_side']} chunks/side, {row['seconds']:8.2f} s "
            f"({row['cpu_s']} CPU s), peak RSS {row['peak_rss_mib']} MiB ({row['rss_before_sum_mib']} before)",
            file=sys.stderr,
        )
    return {"load_average": os.getloadavg(), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="ids per side")
    parser.add_argument("--workers", type=int, default=1, help="processes for encryption and blinding")
    parser.add_argument("--no-phases", action="store_true", help="skip the second, phase-by-phase run")
    parser.add_argument(
        "--chunks", type=int, nargs="+", help="two-party sum over the handlers, per chunk size"
    )
    parser.add_argument("--ab", type=int, nargs="+", help="ids per side: peak RSS, old code vs new")
    parser.add_argument("--old", type=Path, help="--ab: the root of a checkout of the old code")
    parser.add_argument("--repeat", type=int, default=3, help="--ab: interleaved runs per code and size")
    parser.add_argument("--kinds", nargs="+", default=["cli", "session"], choices=["cli", "session", "read"])
    parser.add_argument(
        "--sum-chunk", type=int, help="--ab: the session's chunk (default 100,000), read batch"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ab:
        from psi_sum_memory import ab_runs

        doc = ab_runs(args.ab, args.old, args.repeat, args.kinds, args.sum_chunk)
        if args.json:
            print(json.dumps(doc, indent=2))
        return
    if args.child:
        print(json.dumps(chunk_child(args.n, args.chunks[0])))
        return
    if args.chunks:
        doc = chunk_runs(args.n, args.chunks)
        if args.json:
            print(json.dumps(doc, indent=2))
        return
    n, params = args.n, SumParams(epsilon=1.0, value_max=1.0)
    results: dict = {"n_per_side": n, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start, cpu = time.perf_counter(), time.process_time()
        view = run_psi_on_grid(
            federation(root / "count", n), 1, 2, "accounts", "loyalty", name_a="bank", name_b="shop",
            session_id="bench-count", reveal=REVEAL_COUNT,
        )  # fmt: skip
        assert view.intersection_size == n // 2
        results["count_only_s"] = round(time.perf_counter() - start, 2)
        results["count_only_cpu_s"] = round(
            time.process_time() - cpu, 2
        )  # this process only: all of it with 1 worker
        print(f"count-only PSI      {results['count_only_s']:8.2f} s", file=sys.stderr)
        payers = [
            Payer(PartnerHome.create(root / name, name, budget=DatasetBudget(10.0, 1e-5)), name)
            for name in ("bank", "shop")
        ]
        ids_a, values, ids_b, where, plain = workload(n)
        start, cpu = time.perf_counter(), time.process_time()
        res = run_intersection_sum_local(
            ids_a, values, ids_b, where, payer_a=payers[0], payer_b=payers[1], params=params,
            workers=args.workers,
        )  # fmt: skip
        results["sum_s"] = round(time.perf_counter() - start, 2)
        results["sum_cpu_s"] = round(time.process_time() - cpu, 2)
        print(f"intersection-sum    {results['sum_s']:8.2f} s", file=sys.stderr)
    results["sum_over_count"] = round(results["sum_s"] / results["count_only_s"], 2)
    results["rate"] = {"noisy": res.rate, "plain": plain, "noisy_count": res.noisy_count, "count": n // 4}
    results["phases"] = {} if args.no_phases else phases(n, args.workers, params)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results["phases"]), file=sys.stderr)
    print(
        f"sum / count-only: {results['sum_over_count']:.2f}x; rate {res.rate} (plain {plain:.4f}); "
        f"peak RSS {results['peak_rss_mib']} MiB",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
