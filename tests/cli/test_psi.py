"""``fedcustomer psi``: planted overlap comes out exactly, bad input exits 4 without a traceback."""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.privacy.crypto.pseudonym import normalize_id
from tests.cli.cli_runner import run as run_cli


def fedcustomer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "fedcustomer", *args], cwd=cwd, env=env, capture_output=True, text=True
    )  # no wall-clock limit of its own: pytest-timeout is the one limit


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``fedcustomer ARGS`` through the command's own main() in this process (its error handling and exit
    codes included), run from ``tmp_path``: for refusals that need no process of their own."""
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> subprocess.CompletedProcess:
        code, stdout, stderr = run_cli(list(args), capsys)
        return subprocess.CompletedProcess(["fedcustomer", *args], code, stdout, stderr)

    return call


def _partner_files(
    tmp_path: Path, n_a: int, n_b: int, k: int, suffix: str = ".csv"
) -> tuple[Path, Path, set[str]]:
    """Two partner files sharing exactly ``k`` customers (random ids, shuffled rows, other columns)."""
    shared = [f"CN{secrets.token_hex(6)}" for _ in range(k)]
    only_a = [f"CN{secrets.token_hex(6)}" for _ in range(n_a - k)]
    only_b = [f"CN{secrets.token_hex(6)}" for _ in range(n_b - k)]
    a = pd.DataFrame({"customer_id": shared + only_a, "balance": range(n_a)}).sample(frac=1, random_state=1)
    b = pd.DataFrame({"customer_id": [s.lower() for s in shared] + only_b, "spend": range(n_b)}).sample(
        frac=1, random_state=2
    )
    pa, pb = tmp_path / f"bank{suffix}", tmp_path / f"shop{suffix}"
    for frame, path in ((a, pa), (b, pb)):
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return pa, pb, set(shared)


def test_planted_overlap_is_printed_exactly(tmp_path):
    a, b, shared = _partner_files(tmp_path, 120, 90, k=37)
    res = fedcustomer("psi", "--a", str(a), "--b", str(b), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "37"


def test_json_and_alignment_files_are_written(tmp_path):
    a, b, shared = _partner_files(tmp_path, 60, 80, k=23, suffix=".parquet")
    out = tmp_path / "out"
    res = fedcustomer("psi", "--a", str(a), "--b", str(b), "--out", str(out), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed == json.loads((out / "psi.json").read_text())
    assert printed["intersection_size"] == 23
    assert (printed["a"]["distinct"], printed["b"]["distinct"]) == (60, 80)
    rows_a = list(csv.DictReader((out / "alignment_a.csv").open()))
    rows_b = list(csv.DictReader((out / "alignment_b.csv").open()))
    assert [r["row"] for r in rows_a] == [r["row"] for r in rows_b] == [str(i) for i in range(23)]
    # each side maps the agreed rows back to its own file, and the rows are the same customers
    ids_a = pd.read_parquet(a)["customer_id"].tolist()
    ids_b = pd.read_parquet(b)["customer_id"].tolist()
    side_a = [ids_a[int(r["source_row"])] for r in rows_a]
    side_b = [ids_b[int(r["source_row"])] for r in rows_b]
    assert [normalize_id(i) for i in side_a] == [normalize_id(i) for i in side_b]
    assert set(side_a) == shared and set(side_b) == {s.lower() for s in shared}


def test_psi_outputs_hold_no_raw_id_and_each_side_gets_its_own_file(tmp_path):
    a, b, shared = _partner_files(tmp_path, 50, 70, k=20)
    out = tmp_path / "out"
    res = fedcustomer("psi", "--a", str(a), "--b", str(b), "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ids = pd.read_csv(a)["customer_id"].tolist() + pd.read_csv(b)["customer_id"].tolist()
    forms = {f for i in ids for f in (i, normalize_id(i), i.lower())}
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["alignment_a.csv", "alignment_b.csv", "psi.json"]
    for path in files:
        text = path.read_text()
        assert [f for f in forms if f in text] == [], path.name
        assert oct(path.stat().st_mode & 0o777) == oct(0o600), path.name
    assert (out / "alignment_a.csv").read_bytes() != (out / "alignment_b.csv").read_bytes()
    assert not any(f in res.stdout + res.stderr for f in forms)


def test_oversize_file_is_refused_with_max_ids(tmp_path, in_process):
    a, b, _ = _partner_files(tmp_path, 12, 8, k=3)
    res = in_process("psi", "--a", str(a), "--b", str(b), "--max-ids", "10")
    _assert_clean_failure(res, 4, "12 ids, more than --max-ids 10")


def test_workers_and_custom_id_column(tmp_path):
    pd.DataFrame({"cid": ["x1", "x2", "x2", "x3"]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"cid": ["X2", "X3 ", "x4"]}).to_csv(tmp_path / "b.csv", index=False)
    res = fedcustomer(
        "psi", "--a", "a.csv", "--b", "b.csv", "--id-column", "cid", "--workers", "2", "--json", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["intersection_size"] == 2
    assert data["a"]["duplicates_removed"] == 1 and data["workers"] == 2


def _assert_clean_failure(res: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_missing_id_column_exits_4(tmp_path, in_process):
    pd.DataFrame({"client": ["A1"]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"customer_id": ["A1"]}).to_csv(tmp_path / "b.csv", index=False)
    res = in_process("psi", "--a", "a.csv", "--b", "b.csv")
    _assert_clean_failure(res, 4, "a.csv", "no id column 'customer_id'", "client", "--id-column")


@pytest.mark.parametrize(("content", "needle"), [("", "file is empty"), ("customer_id\n", "no rows")])
def test_empty_file_exits_4(tmp_path, in_process, content, needle):
    (tmp_path / "a.csv").write_text(content)
    pd.DataFrame({"customer_id": ["A1"]}).to_csv(tmp_path / "b.csv", index=False)
    res = in_process("psi", "--a", "a.csv", "--b", "b.csv")
    _assert_clean_failure(res, 4, needle)


def test_blank_id_and_missing_file_exit_4_without_leaking_ids(tmp_path, in_process):
    (tmp_path / "a.csv").write_text("customer_id,x\nSECRET-ID-1,1\n,2\n")
    pd.DataFrame({"customer_id": ["A1"]}).to_csv(tmp_path / "b.csv", index=False)
    res = in_process("psi", "--a", "a.csv", "--b", "b.csv")
    _assert_clean_failure(res, 4, "line 3", "every row needs a customer id")
    assert "SECRET-ID-1" not in res.stderr + res.stdout
    res = in_process("psi", "--a", "nope.csv", "--b", "b.csv")
    _assert_clean_failure(res, 4, "nope.csv: file not found")


def test_bad_workers_exits_3(tmp_path, in_process):
    pd.DataFrame({"customer_id": ["A1"]}).to_csv(tmp_path / "a.csv", index=False)
    res = in_process("psi", "--a", "a.csv", "--b", "a.csv", "--workers", "0")
    _assert_clean_failure(res, 3, "--workers must be >= 1")


def test_streams_with_progress_for_both_sides_and_leaves_no_work_files(tmp_path):
    a, b, shared = _partner_files(tmp_path, 400, 300, k=120)
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out"
    res = fedcustomer(
        "psi", "--a", str(a), "--b", str(b), "--work-dir", str(work), "--buckets", "4", "--out", str(out),
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["intersection_size"] == 120
    for side in ("a", "b"):
        assert f"{side}: hashing and blinding its ids" in res.stderr
        assert f"{side}: matching buckets 4/4 [####################] 100%" in res.stderr
    assert list(work.iterdir()) == []
    assert len(list(csv.DictReader((out / "alignment_a.csv").open()))) == 120
    assert sorted(p.name for p in out.iterdir()) == ["alignment_a.csv", "alignment_b.csv", "psi.json"]


def test_malformed_file_exits_4_and_leaves_no_work_files_or_partial_output(tmp_path, in_process):
    a, _, _ = _partner_files(tmp_path, 50, 40, k=10)
    bad = tmp_path / "bad.csv"
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    for rows, needle in (
        ("SECRET-ID-9,1\nSECRET-ID-8,1,2,3\n", "bad.csv, line 3: 4 fields but the header has 2"),
        ("SECRET-ID-9,1\nSECRET-ID-8\nSECRET-ID-7,1\n", "bad.csv, line 3: 1 fields but the header has 2"),
    ):
        bad.write_text("customer_id,x\n" + rows)
        res = in_process("psi", "--a", str(a), "--b", str(bad), "--work-dir", str(work), "--out", str(out))
        _assert_clean_failure(res, 4, needle)
        assert "SECRET-ID" not in res.stderr + res.stdout
        assert list(work.iterdir()) == [] and list(out.iterdir()) == []
    pd.DataFrame({"client": ["A1"]}).to_parquet(tmp_path / "nocol.parquet")
    res = in_process("psi", "--a", str(a), "--b", "nocol.parquet")
    _assert_clean_failure(res, 4, "no id column 'customer_id' (columns: client)")
