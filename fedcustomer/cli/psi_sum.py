"""``fedcustomer psi --reveal sum``: a DP rate over the shared customers, membership never revealed.

Party a (``--a``, its partner home ``--a-home``) holds the numeric ``--value`` column and the
Paillier key; party b (``--b``, ``--b-home``) holds the boolean ``--where`` column. Both run in
this process with the same messages the partners would exchange (see
:mod:`fedcustomer.psi.intersection_sum`); each pays ``--epsilon`` from its own ledger.

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
from fedcustomer.psi.intersection_sum import (
    Payer,
    SumParams,
    parse_flags,
    parse_values,
    run_intersection_sum_local,
)

console = terminal()


def read_pairs(path: Path, id_column: str, column: str, option: str) -> tuple[list[str], list[object]]:
    """The id column and one other column of a partner file; errors name the file, row and column, never a value."""
    import pandas as pd

    from fedcustomer.psi.source import file_kind

    kind = file_kind(path)
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; it needs a header row and at least one row") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as {kind} ({type(exc).__name__}); check the file") from None
    shown = ", ".join(map(str, list(frame.columns)[:12]))
    if id_column not in frame.columns:
        raise DataError(f"{path}: no id column {id_column!r} (columns: {shown}); pass --id-column NAME")
    if column not in frame.columns:
        raise DataError(f"{path}: no column {column!r} for {option} (columns: {shown})")
    if frame.empty:
        raise DataError(f"{path}: no rows; the file has a header but no customers")
    ids = frame[id_column]
    missing = ids.isna()
    if missing.any():
        line = int(missing.to_numpy().nonzero()[0][0])
        where = f"line {line + 2}" if kind == "csv" else f"row {line}"
        raise DataError(f"{path}, {where}: column {id_column!r} is empty; every row needs a customer id")
    cells = [None if pd.isna(v) else v for v in frame[column].tolist()]
    return ids.astype(str).tolist(), cells


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
    ids_a, cells_a = read_pairs(a, id_column, value, "--value")
    ids_b, cells_b = read_pairs(b, id_column, where, "--where")
    values = parse_values(cells_a, f"{a}, --value column {value!r}")
    flags = parse_flags(cells_b, f"{b}, --where column {where!r}")
    for path, ids in ((a, ids_a), (b, ids_b)):
        if len(ids) > max_ids:
            raise DataError(f"{path}: {len(ids)} ids, more than --max-ids {max_ids}")
    payers = [Payer(h, dataset_name(str(f), "psi")) for h, f in zip(homes, (a, b), strict=True)]
    start = time.perf_counter()
    from fedcustomer.cli.progress import Progress

    with Progress().phase(f"private intersection-sum of {len(ids_a):,} and {len(ids_b):,} ids"):
        res = run_intersection_sum_local(
            ids_a,
            values,
            ids_b,
            flags,
            payer_a=payers[0],
            payer_b=payers[1],
            params=params,
            run_id=run_id,
            workers=workers,
            max_set_size=max_ids,
        )
    seconds = time.perf_counter() - start
    sides = {}
    for key, path, ids, distinct, dups, payer in (
        ("a", a, ids_a, res.set_size_a, res.duplicates_a, payers[0]),
        ("b", b, ids_b, res.set_size_b, res.duplicates_b, payers[1]),
    ):
        sides[key] = {
            "file": str(path),
            "ids": len(ids),
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
