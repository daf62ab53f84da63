"""Data-key unwrap throughput of the PKCS#11 keyring (SoftHSM2) against the file keyring, same run.

Every read of a governed store unwraps one data key per customer, so the keyring's unwrap
rate bounds how fast a store can be read. With ``backend = "pkcs11"`` each unwrap is an
AES-GCM decryption inside the token (a library call, a session lock, the token's own
checks) instead of an in-process one; this measures what that costs.

Workload: ``--keys`` random 256-bit data keys (default 20,000), each wrapped under its own
context by both keyrings; reported per second, best of ``--repeat`` runs, on one CPU core:
unwrap and wrap for each keyring, and the PKCS#11 / file ratio. The token is a fresh
SoftHSM2 token in a temporary directory (software, so a hardware HSM's figures differ:
a network HSM adds a round trip per call). Nothing outside the temporary directory is
written. Needs SoftHSM2 (``make setup`` installs it).

Usage: ``python benchmarks/bench_pkcs11.py [--keys N] [--repeat R] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcustomer.privacy.crypto.keyring import FileKeyRing, KeyRing, data_key_context
from fedcustomer.privacy.crypto.keyring_factory import create_keyring
from fedcustomer.privacy.crypto.material import new_data_key
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV, KeyringConfig

MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def _pin_one_core() -> str:
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


def _softhsm_token(tmp: Path, module: str) -> KeyringConfig:
    """A fresh SoftHSM2 token in ``tmp``; its PIN goes to the environment, as in production."""
    tokens = tmp / "tokens"
    tokens.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = os.urandom(8).hex()
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", pin, "--so-pin", pin + "so"],
        check=True,
        capture_output=True,
    )
    os.environ[DEFAULT_PIN_ENV] = pin
    return KeyringConfig(backend="pkcs11", module=module, token_label="bench")


def _measure(ring: KeyRing, keys: list[bytes], contexts: list[bytes], repeat: int) -> dict[str, float]:
    wrapped = [ring.wrap(k, c) for k, c in zip(keys, contexts)]
    assert all(ring.unwrap(w, c) == k for w, c, k in zip(wrapped, contexts, keys))  # correct before timed
    return {
        "unwrap": _best_rate(
            len(keys), lambda: [ring.unwrap(w, c) for w, c in zip(wrapped, contexts)], repeat
        ),
        "wrap": _best_rate(len(keys), lambda: [ring.wrap(k, c) for k, c in zip(keys, contexts)], repeat),
    }


def run(n_keys: int, repeat: int) -> dict[str, object]:
    module = next((m for m in MODULES if Path(m).is_file()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        raise SystemExit("SoftHSM2 is not installed (make setup installs the softhsm2 package)")
    pinned = _pin_one_core()
    keys = [new_data_key() for _ in range(n_keys)]
    contexts = [data_key_context("bench", f"{i:064x}") for i in range(n_keys)]
    with tempfile.TemporaryDirectory() as tmp:
        file_rates = _measure(FileKeyRing.create(Path(tmp) / "keys"), keys, contexts, repeat)
        config = _softhsm_token(Path(tmp), module)
        token_ring = create_keyring(config, Path(tmp), "bench")
        try:
            token_rates = _measure(token_ring, keys, contexts, repeat)
        finally:
            if isinstance(token_ring, Pkcs11KeyRing):
                token_ring.close()
    return {
        "keys": n_keys,
        "repeat": repeat,
        "cpu": pinned,
        "module": module,
        "per_second": {
            "file_unwrap": round(file_rates["unwrap"]),
            "pkcs11_unwrap": round(token_rates["unwrap"]),
            "file_wrap": round(file_rates["wrap"]),
            "pkcs11_wrap": round(token_rates["wrap"]),
        },
        "pkcs11_over_file": {
            "unwrap": round(token_rates["unwrap"] / file_rates["unwrap"], 4),
            "wrap": round(token_rates["wrap"] / file_rates["wrap"], 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keys", type=int, default=20_000, help="data keys to wrap and unwrap (default 20000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; best is kept")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.repeat < 1:
        parser.error("--keys and --repeat must be >= 1")
    result = run(args.keys, args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rates, ratio = result["per_second"], result["pkcs11_over_file"]
    assert isinstance(rates, dict) and isinstance(ratio, dict)
    print(
        f"fedcustomer keyring throughput, {result['keys']:,} data keys, {result['cpu']}, best of {result['repeat']}"
    )
    print(f"  {'keyring':<10}{'unwrap/s':>12}{'wrap/s':>12}")
    for name in ("file", "pkcs11"):
        print(f"  {name:<10}{rates[name + '_unwrap']:>12,}{rates[name + '_wrap']:>12,}")
    print(f"  PKCS#11 (SoftHSM2) / file: unwrap {ratio['unwrap']:.3f}x, wrap {ratio['wrap']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
