"""The deployed two-party ServerApp's PSI (:func:`run_two_party`) in many small chunks, on the in-process
grid: same alignment as one chunk, a vertical job on top of it, and a clear error for a bad chunk size."""

from __future__ import annotations

import json

import pytest

from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.errors import ConfigError
from fedcustomer.psi.state import load_alignment_result, psi_dir
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import pin_each_other
from tests.vertical.conftest import grid_for, pinned_party_homes


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=500, seed=4)


def _raw(tmp_path, name, mode="psi", chunk=None, reveal="ids", **kw):
    job = VerticalJob(**({"out": str(tmp_path / name), "rounds": 1, "batch_size": 64, "steps_per_round": 1,
                          "seed": 0, "baseline": False} | kw))  # fmt: skip
    return two_party_run_config(job, mode=mode, wait_for_partners=5, reveal=reveal, psi_chunk_size=chunk)


def test_psi_in_many_chunks_matches_one_chunk_and_reports_chunks(homes, tmp_path):
    bank, retail = homes
    one = run_two_party(grid_for([bank, retail]), _raw(tmp_path, "one"))
    grid = grid_for([bank, retail])
    many = run_two_party(grid, _raw(tmp_path, "many", chunk=60))
    assert many["status"] == "completed" and many["intersection_size"] == one["intersection_size"] > 200
    assert many["parties"] == one["parties"] and many["chunks"]["size"] == 60
    assert many["chunks"]["bank"] == -(-many["parties"]["bank"] // 60) >= 8
    sizes = {
        json.dumps(sorted(load_alignment_result(h, s["session_id"]).local_ids))
        for h in homes
        for s in (one, many)
    }
    assert len(sizes) == 2  # each party kept the same shared customers in both sessions
    n = many["chunks"]["bank"], many["chunks"]["retailer"]
    assert (tmp_path / "many" / "psi-progress.txt").read_text() == (
        f"PSI {many['session_id']}: bank {n[0]}/{n[0]} chunks reblinded by its peer, {n[0]}/{n[0]} answered; "
        f"retailer {n[1]}/{n[1]} chunks reblinded by its peer, {n[1]}/{n[1]} answered\n"
    )
    count = run_two_party(grid_for([bank, retail]), _raw(tmp_path, "count", chunk=45, reveal="count"))
    assert count["intersection_size"] == one["intersection_size"] and count["kept_by"] == {}
    for home in homes:
        assert not list(psi_dir(home).glob("*.work")) and not list(psi_dir(home).glob("*.party.json"))


def test_a_vertical_job_trains_on_a_psi_done_in_chunks(homes, tmp_path):
    bank, retail = homes
    summary = run_two_party(grid_for([bank, retail]), _raw(tmp_path, "vertical", mode="vertical", chunk=100))
    assert summary["status"] == "completed" and summary["psi_size"] > 200 and summary["rounds_completed"] == 1


def test_a_bad_chunk_size_is_a_clear_error(tmp_path):
    for bad in (0, 5_000_000, True):
        with pytest.raises(ConfigError, match="PSI chunk size"):
            _raw(tmp_path, "bad", chunk=bad)


def test_coordinator_run_shows_each_new_progress_line(tmp_path, monkeypatch):
    from fedcustomer.cli import deploy_two_party

    shown: list[str] = []
    monkeypatch.setattr(deploy_two_party, "_progress", shown.append)
    watch = deploy_two_party._psi_watch({"out": str(tmp_path)})
    watch()  # nothing yet
    (tmp_path / "psi-progress.txt").write_text("PSI s: bank 1/4 chunks reblinded by its peer, 0/4 answered\n")
    watch()
    watch()  # the same line is shown once
    (tmp_path / "psi-progress.txt").write_text("PSI s: bank 2/4 chunks reblinded by its peer, 1/4 answered\n")
    watch()
    assert shown == [
        "PSI s: bank 1/4 chunks reblinded by its peer, 0/4 answered",
        "PSI s: bank 2/4 chunks reblinded by its peer, 1/4 answered",
    ]
