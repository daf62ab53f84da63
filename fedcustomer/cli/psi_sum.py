"""``fedcustomer psi --reveal sum``: a DP rate over the shared customers, membership never revealed.

Party a (``--a``, its partner home ``--a-home``) holds the numeric ``--value`` column and the
Paillier key; party b (``--b``, ``--b-home``) holds the boolean ``--where`` column. Both run in
this process through the chunked engine two partner nodes use (:mod:`fedcustomer.psi.sum_local`:
files read in batches, values and ciphertexts on disk, bounded memory); each pays ``--epsilon``
from its own ledger. Both files are read once first to check them, before anyone spends.

JSON (``--json`` prints it; ``--out DIR`` writes ``DIR/psi.json``), schema version 1::

    {"schema": 1, "reveal": "sum", "value": str, "where": str,
     "noisy_count": int, "noisy_sum": float, "rate": float | null,
     "epsilon": {"total": float, "count": float, "sum": float}, "value_max": float,
     "a": {"file": str, "ids": int, "distinct": int, "duplicates_removed": int, "home": str, "dataset": str},
     "b": {... same ...}, "seconds": float, "workers": int}

No id, no per-customer value and no exact intersection size is in it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedcustomer.cli.terminal import terminal
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.datasets import dataset_name
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.intersection_sum import Payer, SumParams, parse_flags, parse_values

console = terminal()


def check_file(path: Path, id_column: str, column: str, option: str, max_ids: int) -> int:
    """Read ``path`` once in batches, as the run will, and check everything in it before any party
    spends or hashes: its columns, ids and cells (errors name the file, row and column, never a
    value) and its size. Returns its number of rows."""
    from fedcustomer.psi.source import column_batches

    rows = 0
    what = f"{path}, {option} column {column!r}"
    for ids, cells in column_batches(path, id_column, column, option):
        if rows <= max_ids:
            (parse_values if option == "--value" else parse_flags)(cells, what, rows)
        rows += len(ids)
    if rows > max_ids:
        raise DataError(f"{path}: {rows} ids, more than --max-ids {max_ids}")
    return rows


def _home(path: Path | None, option: str) -> PartnerHome:
    if path is None:
        raise ConfigError(f"--reveal sum charges both parties' budgets: give {option} HOME (a partner home)")
    home = PartnerHome(path)
    if not home.config_path.exists():
        raise ConfigError(f"{option} {path}: not a partner home (no {PartnerHome.CONFIG_NAME})")
    return home


def run_sum(
    a: Path,
    b: Path,
    *,
    id_column: str,
    value: str | None,
    where: str | None,
    a_home: Path | None,
    b_home: Path | None,
    epsilon: float,
    value_max: float,
    run_id: str | None,
    workers: int,
    max_ids: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """Check everything that can be wrong before any party spends, then run and print the release."""
    if not value or not where:
        raise ConfigError(
            "--reveal sum needs --value COLUMN (numeric, in --a) and --where COLUMN (boolean, in --b)"
        )
    params = SumParams(epsilon=epsilon, value_max=value_max)
    homes = _home(a_home, "--a-home"), _home(b_home, "--b-home")
    rows_a = check_file(a, id_column, value, "--value", max_ids)
    rows_b = check_file(b, id_column, where, "--where", max_ids)
    payers = [Payer(h, dataset_name(str(f), "psi")) for h, f in zip(homes, (a, b), strict=True)]
    start = time.perf_counter()
    from fedcustomer.cli.progress import Progress
    from fedcustomer.psi.source import column_batches
    from fedcustomer.psi.sum_local import run_intersection_sum_stream

    with Progress().phase(f"private intersection-sum of {rows_a:,} and {rows_b:,} ids"):
        res = run_intersection_sum_stream(
            column_batches(a, id_column, value, "--value"),
            column_batches(b, id_column, where, "--where"),
            payer_a=payers[0],
            payer_b=payers[1],
            params=params,
            run_id=run_id,
            workers=workers,
            max_set_size=max_ids,
            what=(f"{a}, --value column {value!r}", f"{b}, --where column {where!r}"),
        )
    seconds = time.perf_counter() - start
    sides = {}
    for key, path, rows, distinct, dups, payer in (
        ("a", a, rows_a, res.set_size_a, res.duplicates_a, payers[0]),
        ("b", b, rows_b, res.set_size_b, res.duplicates_b, payers[1]),
    ):
        sides[key] = {
            "file": str(path),
            "ids": rows,
            "distinct": distinct,
            "duplicates_removed": dups,
            "home": str(payer.home.root),
            "dataset": payer.dataset,
        }
    result = {"schema": 1, "reveal": "sum", "value": value, "where": where, **res.to_dict(), **sides}
    result |= {"seconds": round(seconds, 3), "workers": workers}
    if out is not None:
        from fedcustomer.data.export import write_private_text

        out.mkdir(parents=True, exist_ok=True)
        write_private_text(out / "psi.json", json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    rate = "undefined (noisy count not positive)" if res.rate is None else f"{res.rate:.4f}"
    console.print(
        f"rate of {value!r} over shared customers where {where!r}: {rate}  (noisy count {res.noisy_count}, "
        f"noisy sum {res.noisy_sum:.2f}; epsilon {params.epsilon:g} charged to each party: "
        f"{params.count_epsilon:g} count + {params.sum_epsilon:g} sum; {seconds:.2f} s)",
        highlight=False,
    )
