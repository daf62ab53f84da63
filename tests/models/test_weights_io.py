"""Checkpoints and cached state are loaded weights-only: a planted pickle never runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcustomer.clients.node import PartnerNode
from fedcustomer.errors import IntegrityError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.models.weights_io import load_weights_only
from fedcustomer.server.job import JobConfig
from fedcustomer.server.report import RunRecorder
from fedcustomer.vertical import party as party_module
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.runner import run_vertical_on_grid
from tests.clients.test_node import _global, _home, _ins
from tests.vertical.conftest import _fresh_sessions, grid_for, retail_signal_frames, setup_parties


class _Payload:
    """Unpickling this creates ``marker``: stands in for any command an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path, blob_key: str = "state_dict") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"round": 1, blob_key: _Payload(marker)}, path)


def test_loader_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "x.pt", marker)
    with pytest.raises(IntegrityError, match="not a plain weights file"):
        load_weights_only(tmp_path / "x.pt", "test file")
    assert not marker.exists()


def test_run_resume_with_a_planted_checkpoint_stops_with_a_clear_error(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    RunDir(out).write_config(JobConfig(data="synthetic", partners=2, rounds=2, out=str(out)))
    _plant(out / "checkpoints" / "round-0001.pt", marker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fedcustomer", "run", "--resume", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 7, output
    assert "not a plain weights file" in output and "Traceback" not in output
    assert not marker.exists()


def test_genuine_run_checkpoint_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "round-0002.pt"
    path.parent.mkdir()
    torch.save(
        {"round": 2, "run_id": "r", "state_dict": {"w": torch.ones(2)}, "rounds": [{"round": 1, "x": 0.5}]},
        path,
    )
    blob = RunRecorder.latest_checkpoint(tmp_path)
    assert blob["round"] == 2 and torch.equal(blob["state_dict"]["w"], torch.ones(2))


def test_node_resume_with_a_planted_cached_update_refuses_and_runs_nothing(tmp_path: Path) -> None:
    import io

    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.privacy.dp.ledger import BudgetLedger

    home = _home(tmp_path, 3.0)
    node = PartnerNode(home)
    node.train_round(_global(), _ins(1))  # keeps the update in its charge's ledger row
    ledger = BudgetLedger(home.ledger_path, "toy", DatasetBudget(3.0, 1e-5))
    genuine = ledger.kept("run:r1:round:1")
    assert genuine is not None and load_weights_only(genuine, "kept update")["state"]  # plain data
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pt"
    _plant(planted, marker, "state")
    with ledger._transaction() as conn:  # someone who can write ledger.db swaps the kept bytes
        conn.execute("UPDATE kept_results SET data = ?", (planted.read_bytes(),))
    with pytest.raises(IntegrityError, match="not a plain weights file"):
        PartnerNode(home).train_round(_global(), _ins(1))
    assert not marker.exists()
    # an update kept as a file by an earlier version (no row in the ledger): planted there, refused too
    with ledger._transaction() as conn:
        conn.execute("DELETE FROM kept_results")
    _plant(home.state_dir / "updates" / "run_r1_round_1.pt", marker, "state")
    with pytest.raises(IntegrityError, match="not a plain weights file"):
        PartnerNode(home).train_round(_global(), _ins(1))
    assert not marker.exists()
    assert torch.load(io.BytesIO(genuine), weights_only=True)["accounting"] == {}


def test_vertical_party_state_is_plain_data_and_a_planted_one_is_refused(tmp_path: Path) -> None:
    job = VerticalJob(
        out=str(tmp_path / "run"), rounds=1, batch_size=64, lr=0.01, baseline=False, seed=0, epsilon=5.0
    )
    bank, retail, _ = setup_parties(tmp_path / "homes", job, retail_signal_frames(n=600))
    assert run_vertical_on_grid(grid_for([bank, retail]), job)["status"] == "completed"
    sessions = list(party_module._SESSIONS.values())
    active = next(s for s in sessions if s.active)
    plans = {k: [b.copy() for b in v] for k, v in active.state["plans"].items()}
    party_module.forget_sessions()
    restored = party_module.PartySession(active.home, active.cfg)  # a restarted node reads its state back
    assert plans and restored.state["plans"].keys() == plans.keys()
    for key, batches in plans.items():
        assert all(
            isinstance(b, np.ndarray) and np.array_equal(a, b)
            for a, b in zip(batches, restored.state["plans"][key])
        )
    marker = tmp_path / "pwned"
    _plant(active.state_path, marker, "model")
    party_module.forget_sessions()
    with pytest.raises(IntegrityError, match="not a plain weights file"):
        party_module.PartySession(active.home, active.cfg)
    assert not marker.exists()
