"""The one run-directory writer: whole files, the formats readers already parse."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.vertical.job import VerticalJob


def test_config_is_sorted_json_that_reads_back_as_the_job(tmp_path: Path) -> None:
    job = VerticalJob(rounds=2, out=str(tmp_path))
    path = RunDir(tmp_path / "run").write_config(job)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and list(json.loads(text)) == sorted(job.to_dict())
    assert VerticalJob.from_dict(json.loads(text)) == job


def test_summary_keeps_its_order_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    files = RunDir(tmp_path)
    files.write_summary({"schema_version": 1, "b": 2, "a": 1})
    assert list(json.loads((tmp_path / "summary.json").read_text())) == ["schema_version", "b", "a"]
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_csv_has_every_column_in_first_seen_order(tmp_path: Path) -> None:
    RunDir(tmp_path).write_metrics_csv([{"round": 1, "x": 0.5}, {"round": 2, "y": 1}])
    raw = (tmp_path / "metrics.csv").read_bytes()
    assert raw.startswith(b"round,x,y\r\n")
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open(newline="")))
    assert rows == [{"round": "1", "x": "0.5", "y": ""}, {"round": "2", "x": "", "y": "1"}]
    RunDir(tmp_path).write_metrics_csv([])
    assert (tmp_path / "metrics.csv").read_bytes() == b"round\r\n"


def test_model_and_checkpoints_load_back(tmp_path: Path) -> None:
    files = RunDir(tmp_path)
    files.write_model({"w": torch.ones(2)})
    files.save_torch("checkpoints/round-0001.pt", {"round": 1})
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(2))
    assert torch.load(tmp_path / "checkpoints" / "round-0001.pt", weights_only=True) == {"round": 1}


def test_setting_aside_an_unreadable_or_unnamed_earlier_run_never_overwrites_one(tmp_path: Path) -> None:
    files = RunDir(tmp_path)
    assert files.set_aside_previous("new") is None  # an empty directory has nothing to keep
    for _ in range(2):
        (tmp_path / "config.json").write_text('{"run_id": "../../etc"}')
        (tmp_path / "model.pt").write_bytes(b"weights")
        (tmp_path / "notes.txt").write_text("the user's own file stays")
        kept = files.set_aside_previous("new")
        assert kept is not None and kept.parent == tmp_path / "previous"
    assert sorted(p.name for p in (tmp_path / "previous").iterdir()) == ["unnamed-run", "unnamed-run-2"]
    assert (tmp_path / "previous" / "unnamed-run-2" / "model.pt").read_bytes() == b"weights"
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "config.json").exists()
