"""``fedcustomer run --mode vertical``: the acceptance run, end to end through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def fedcustomer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "fedcustomer", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_vertical_repayment_on_synthetic_beats_the_bank_alone_within_both_budgets(tmp_path):
    res = fedcustomer(
        "run",
        "--mode",
        "vertical",
        "--task",
        "repayment",
        "--data",
        "synthetic",
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bank-only" in res.stdout and "vertical" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["psi_size"] > 0
    for party in summary["partners"]:
        assert 0 < party["epsilon_spent"] <= party["epsilon_target"] == 3.0
    bank = next(p for p in summary["partners"] if p["role"] == "active")
    assert bank["name"] == "bank" and bank["accounting"]["label_dp"]["mechanism"] == "randomized_response"
    assert summary["baseline"]["partners"][0]["epsilon_spent"] <= 3.0
    vertical, alone = summary["comparison"]["vertical_auc"], summary["comparison"]["bank_only_auc"]
    assert vertical > alone, (vertical, alone)


def test_run_vertical_prints_each_round_line_once_on_stderr(tmp_path):
    """Through the real entry point, where opacus's import puts a handler on the root logger."""
    res = fedcustomer("run-vertical", "--data", "synthetic", "--rounds", "2", "--customers", "300",
                      "--no-baseline", "--json", "--out", str(tmp_path / "run"), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    for k in (1, 2):
        lines = [line for line in res.stderr.splitlines() if f"vertical round {k}/2:" in line]
        assert len(lines) == 1, res.stderr[-3000:]
    # the PSI relay's summary lines go through the progress printer only, not also a root handler
    relay = [line for line in res.stderr.splitlines() if "chunks reblinded by its peer" in line]
    assert relay and all(line.startswith("[") for line in relay), res.stderr[-3000:]
    json.loads(res.stdout)  # stdout keeps only the result


def test_label_epsilon_must_leave_room_for_training(tmp_path):
    res = fedcustomer(
        "run-vertical", "--epsilon", "1", "--label-epsilon", "1", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert res.returncode != 0
    assert "--label-epsilon" in res.stderr + res.stdout and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
