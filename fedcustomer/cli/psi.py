"""``fedcustomer psi``: private set intersection between two partner files, run standalone.

Both parties run in this process with the same protocol the partners run over Flower
(fresh secrets, shuffled blinded values); useful to size an overlap before a joint model.

Exit codes: 0 on success; 3 (ConfigError) for a bad option; 4 (DataError) for a missing
file, an unreadable file, a missing id column, an empty file or an empty id.

JSON (``--json`` prints it; ``--out DIR`` writes it to ``DIR/psi.json``), schema version 1::

    {"schema": 1, "intersection_size": int,
     "a": {"file": str, "ids": int, "distinct": int, "duplicates_removed": int},
     "b": {... same ...},
     "digest": str,            # SHA-256 of the sorted doubly-blinded shared values (equal on both sides)
     "seconds": float, "workers": int,
     "alignment": {"a": str, "b": str} | null}   # alignment CSVs when --out is given

Each alignment CSV (mode 0600) has columns ``row`` (position in the agreed order: row k in
``alignment_a.csv`` and row k in ``alignment_b.csv`` are the same customer) and ``source_row``,
that side's own handle for the customer: its 0-based data row in that side's input file (the
first row when an id repeats; line ``source_row + 2`` of a CSV). No output file holds an id,
raw, normalised or hashed, and each side's file is meaningful only next to its own input.

``--reveal sum --value COLUMN --where COLUMN`` releases instead a DP rate over the shared
customers and nothing about which they are (:mod:`fedcustomer.cli.psi_sum`).

Released without any epsilon (exact): the intersection size, each side's row, distinct and
duplicate counts, and to each side which of its own rows are shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from fedcustomer.cli.terminal import terminal
from fedcustomer.data.export import write_private_csv, write_private_text
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.psi.core import DEFAULT_MAX_SET_SIZE, run_psi_local

console = terminal()
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def register(app: typer.Typer) -> None:
    """Attach the ``psi`` command to the root app."""
    app.command("psi")(psi)


def read_ids(path: Path, column: str) -> list[str]:
    """The id column of a CSV or Parquet file, as strings; errors name the file and row, never a value."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: file is empty; it needs a header row with {column!r} and at least one row"
        ) from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as {kind} ({type(exc).__name__}); check the file") from None
    if column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:12]))
        raise DataError(f"{path}: no id column {column!r} (columns: {shown}); pass --id-column NAME")
    if frame.empty:
        raise DataError(f"{path}: no rows; the file has a header but no customers")
    values = frame[column]
    missing = values.isna()
    if missing.any():
        line = int(missing.to_numpy().nonzero()[0][0])
        where = f"line {line + 2}" if kind == "csv" else f"row {line}"
        raise DataError(f"{path}, {where}: column {column!r} is empty; every row needs a customer id")
    return values.astype(str).tolist()


def _write_alignment(path: Path, source_rows: list[str]) -> None:
    """One side's alignment: agreed row -> that side's own source row (never an id)."""
    write_private_csv(path, ["row", "source_row"], enumerate(source_rows))


def psi(
    a: Path = typer.Option(..., "--a", help="first partner's file (CSV or Parquet)"),
    b: Path = typer.Option(..., "--b", help="second partner's file (CSV or Parquet)"),
    id_column: str = typer.Option(
        "customer_id", "--id-column", help="column holding the customer id in both files"
    ),
    workers: int = typer.Option(1, "--workers", help="processes for the group operations"),
    out: Path | None = typer.Option(None, "--out", help="write psi.json and per-side alignment CSVs here"),
    max_ids: int = typer.Option(
        DEFAULT_MAX_SET_SIZE, "--max-ids", help="refuse a file with more ids than this"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result instead of a sentence"),
    reveal: str = typer.Option(
        "ids", "--reveal", help="ids (the shared customers) or sum (a DP rate over them, see psi_sum)"
    ),
    value: str | None = typer.Option(None, "--value", help="--reveal sum: numeric column of --a"),
    where: str | None = typer.Option(None, "--where", help="--reveal sum: boolean column of --b"),
    a_home: Path | None = typer.Option(None, "--a-home", help="--reveal sum: partner home of --a (pays)"),
    b_home: Path | None = typer.Option(None, "--b-home", help="--reveal sum: partner home of --b (pays)"),
    epsilon: float = typer.Option(
        1.0, "--epsilon", help="--reveal sum: charged to each party, half for the count, half for the sum"
    ),
    value_max: float = typer.Option(1.0, "--value-max", help="--reveal sum: values clipped to [0, this]"),
    run_id: str | None = typer.Option(None, "--run-id", help="--reveal sum: run the charges are filed under"),
) -> None:
    """Private set intersection of two partner files: prints how many customers they share."""
    if reveal not in ("ids", "sum"):
        raise ConfigError(f"--reveal must be ids or sum, got {reveal!r}")
    if reveal == "sum":
        from fedcustomer.cli.psi_sum import run_sum

        return run_sum(
            a, b, id_column=id_column, value=value, where=where, a_home=a_home, b_home=b_home,
            epsilon=epsilon, value_max=value_max, run_id=run_id, workers=workers, max_ids=max_ids,
            out=out, as_json=as_json,
        )  # fmt: skip
    if value or where or a_home or b_home:
        raise ConfigError("--value, --where, --a-home and --b-home go with --reveal sum")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if max_ids < 1:
        raise ConfigError(f"--max-ids must be >= 1, got {max_ids}")
    from fedcustomer.cli.progress import Progress

    progress = Progress()
    ids_a, ids_b = read_ids(a, id_column), read_ids(b, id_column)
    for path, ids in ((a, ids_a), (b, ids_b)):
        if len(ids) > max_ids:
            raise DataError(f"{path}: {len(ids)} ids, more than --max-ids {max_ids}")
    start = time.perf_counter()
    with progress.phase(
        f"private set intersection of {len(ids_a):,} and {len(ids_b):,} ids ({workers} worker(s))"
    ):
        ra, rb = run_psi_local(
            ids_a,
            ids_b,
            workers=workers,
            labels_a=[str(k) for k in range(len(ids_a))],
            labels_b=[str(k) for k in range(len(ids_b))],
            max_set_size=max_ids,
        )
    seconds = time.perf_counter() - start
    alignment = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        alignment = {"a": str(out / "alignment_a.csv"), "b": str(out / "alignment_b.csv")}
        _write_alignment(out / "alignment_a.csv", ra.local_ids)
        _write_alignment(out / "alignment_b.csv", rb.local_ids)
    result = {
        "schema": 1,
        "intersection_size": ra.size,
        "a": {
            "file": str(a),
            "ids": len(ids_a),
            "distinct": ra.set_size,
            "duplicates_removed": ra.duplicates_removed,
        },
        "b": {
            "file": str(b),
            "ids": len(ids_b),
            "distinct": rb.set_size,
            "duplicates_removed": rb.duplicates_removed,
        },
        "digest": ra.digest,
        "seconds": round(seconds, 3),
        "workers": workers,
        "alignment": alignment,
    }
    if out is not None:
        write_private_text(out / "psi.json", json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"{ra.size} shared customers  (a: {ra.set_size} distinct, {ra.duplicates_removed} duplicates removed; "
        f"b: {rb.set_size} distinct, {rb.duplicates_removed} duplicates removed; {seconds:.2f} s)",
        highlight=False,
    )
    if alignment:
        console.print(f"alignment: {alignment['a']}  {alignment['b']}", highlight=False)
