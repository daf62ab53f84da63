"""``fedcustomer psi``: private set intersection between two partner files, run standalone.

Both parties run in this process with the same protocol the partners run over Flower
(fresh secrets, blinded values only); useful to size an overlap before a joint model. It
streams (:mod:`fedcustomer.psi.stream`): ids are read in batches and the blinded values kept
in hash buckets in a private folder (``--work-dir``) removed afterwards, so memory stays
about the same from thousands to tens of millions of ids; progress lines for both sides go
to stderr.

Exit codes: 0 on success; 3 (ConfigError) for a bad option; 4 (DataError) for a missing
file, an unreadable file, a missing id column, an empty file, an empty id or a CSV row with
more or fewer fields than the header (the message gives its line, never its values).

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
import os
import tempfile
import time
from pathlib import Path

import typer

from fedcustomer.cli.terminal import terminal
from fedcustomer.common.files import fsync_dir
from fedcustomer.data.export import write_private_text
from fedcustomer.errors import ConfigError
from fedcustomer.psi.core import DEFAULT_MAX_SET_SIZE
from fedcustomer.psi.stream import DEFAULT_BUCKETS

console = terminal()


def register(app: typer.Typer) -> None:
    """Attach the ``psi`` command to the root app."""
    app.command("psi")(psi)


class _AlignmentWriter:
    """One side's alignment CSV (agreed row -> that side's own source row, never an id), written as
    the shared rows stream in: a 0600 temporary file next to the destination, renamed into place
    by :meth:`commit`, removed by :meth:`discard` when the run fails."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o600)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "w")
        self._file.write("row,source_row\n")
        self._next = 0

    def write(self, source_rows) -> None:
        count = len(source_rows)
        agreed = range(self._next, self._next + count)
        self._file.write("".join(f"{k},{r}\n" for k, r in zip(agreed, source_rows.tolist(), strict=True)))
        self._next += count

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


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
    work_dir: Path | None = typer.Option(
        None,
        "--work-dir",
        help="where the blinded values are kept on disk during the run (a private folder made "
        "there and removed after; default: the system temp directory)",
    ),
    buckets: int = typer.Option(DEFAULT_BUCKETS, "--buckets", help="on-disk hash buckets for the matching"),
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
    run_id: str | None = typer.Option(
        None,
        "--run-id",
        help="--reveal sum: run id the charge is filed under (each run of the command is a new session, charged anew)",
    ),
) -> None:
    """Private set intersection of two partner files: prints how many customers they share.

    Streams: ids are read in batches and the blinded values kept in hash buckets on disk, so
    memory stays about the same from thousands to tens of millions of ids."""
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
    if not 1 <= buckets <= 65536:
        raise ConfigError(f"--buckets must be from 1 to 65536, got {buckets}")
    from fedcustomer.cli.progress import Progress
    from fedcustomer.psi.source import file_kind, id_batches
    from fedcustomer.psi.stream import run_psi_stream

    progress = Progress()
    for path in (a, b):
        file_kind(path)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    align_a = _AlignmentWriter(out / "alignment_a.csv") if out is not None else None
    align_b = _AlignmentWriter(out / "alignment_b.csv") if out is not None else None
    start = time.perf_counter()
    try:
        with progress.phase(f"private set intersection of {a.name} and {b.name} ({workers} worker(s))"):
            ra, rb = run_psi_stream(
                id_batches(a, id_column, max_ids=max_ids),
                id_batches(b, id_column, max_ids=max_ids),
                workers=workers,
                buckets=buckets,
                max_set_size=max_ids,
                workdir=work_dir,
                sink_a=align_a.write if align_a else None,
                sink_b=align_b.write if align_b else None,
                progress=progress.count,
            )
        alignment = None
        if align_a is not None and align_b is not None and out is not None:
            align_a.commit()
            align_b.commit()
            alignment = {"a": str(out / "alignment_a.csv"), "b": str(out / "alignment_b.csv")}
    finally:
        for writer in (align_a, align_b):
            if writer is not None:
                writer.discard()
    seconds = time.perf_counter() - start
    result = {
        "schema": 1,
        "intersection_size": ra.size,
        "a": {
            "file": str(a),
            "ids": ra.rows,
            "distinct": ra.set_size,
            "duplicates_removed": ra.duplicates_removed,
        },
        "b": {
            "file": str(b),
            "ids": rb.rows,
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
