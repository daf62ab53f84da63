"""The run directory: what summary.json and metrics.csv say for given rounds, checkpoints and resume."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.server.job import JobConfig
from fedcustomer.server.report import SUMMARY_SCHEMA_VERSION, RunRecorder, _round_dict, round_from_dict
from fedcustomer.server.rounds import LoopResult, PartnerRound, RoundReport

SPEC = FeatureSpec("repayment", "y", None, [NumericFeature("x1", 0, 1), NumericFeature("x2", 0, 1)])


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2,), value)})


def _trained(name: str, eps: float, auc: float) -> PartnerRound:
    return PartnerRound(
        name,
        "trained",
        metrics={"epsilon-total": eps, "epsilon-target": 3.0, "delta": 1e-5, "train-seconds": 0.25},
        accounting={"accountant": "rdp", "history": [eps]},
        eval_metrics={"auc": auc, "num-examples": 100.0},
    )


def _rounds() -> list[RoundReport]:
    r1 = RoundReport(
        1,
        [_trained("bank_b", 1.0, 0.6), _trained("bank_a", 1.1, 0.7)],
        {"train-loss": 0.5},
        {"auc": 0.65, "loss": 0.4, "num-examples": 200.0},
        1.23456,
        applied=True,
    )
    r2 = RoundReport(
        2,
        [
            _trained("bank_a", 2.0, 0.8),
            PartnerRound("bank_b", "refused", "would pass the target", metrics={"refused": 1.0}),
            PartnerRound("bank_c", "failed", "no reply before the round timed out"),
        ],
        {"train-loss": 0.3},
        {"auc": 0.8, "loss": float("nan"), "num-examples": 100.0},
        2.0,
        applied=True,
    )
    return [r1, r2]


@pytest.fixture
def recorder(tmp_path: Path) -> RunRecorder:
    job = JobConfig(partners=3, rounds=3, run_id="run-1", out=str(tmp_path / "run"))
    return RunRecorder(tmp_path / "run", job, SPEC)


def test_a_new_run_directory_holds_the_config_and_the_spec(recorder: RunRecorder) -> None:
    out = recorder.out
    assert JobConfig.from_dict(json.loads((out / "config.json").read_text())) == recorder.job
    assert FeatureSpec.from_dict(json.loads((out / "feature_spec.json").read_text())) == SPEC
    assert (out / "checkpoints").is_dir() and not (out / "summary.json").exists()


def test_each_recorded_round_rewrites_metrics_csv_and_checkpoints_applied_rounds(
    recorder: RunRecorder,
) -> None:
    r1, r2 = _rounds()
    recorder.record_round(r1, _arrays(1.0))
    skipped = RoundReport(2, [PartnerRound("bank_a", "refused", "budget")], {}, {}, 0.5, applied=False)
    recorder.record_round(skipped, _arrays(9.0))
    rows = list(csv.DictReader((recorder.out / "metrics.csv").open(encoding="utf-8")))
    assert [r["round"] for r in rows] == ["1", "2"] and [r["applied"] for r in rows] == ["1", "0"]
    assert rows[0]["partners_trained"] == "2" and rows[1]["partners_refused"] == "1"
    assert rows[0]["wall_time_s"] == "1.2346" and rows[0]["eval_auc"] == "0.65"
    assert rows[0]["epsilon_bank_a"] == "1.1" and "eval_num-examples" not in rows[0]
    assert sorted(p.name for p in (recorder.out / "checkpoints").iterdir()) == ["round-0001.pt"]
    latest = RunRecorder.latest_checkpoint(recorder.out)
    assert latest["round"] == 1 and latest["run_id"] == "run-1"
    assert latest["state_dict"]["w"].tolist() == [1.0, 1.0]


def test_resume_rebuilds_the_rounds_from_the_latest_checkpoint(recorder: RunRecorder) -> None:
    r1, r2 = _rounds()
    recorder.record_round(r1, _arrays(1.0))
    recorder.record_round(r2, _arrays(2.0))
    latest = RunRecorder.latest_checkpoint(recorder.out)
    assert latest["round"] == 2 and latest["state_dict"]["w"].tolist() == [2.0, 2.0]
    restored = [round_from_dict(d) for d in latest["rounds"]]
    assert [r.round for r in restored] == [1, 2]
    assert restored[0] == r1
    assert restored[1].partners == r2.partners and math.isnan(restored[1].eval_metrics["loss"])
    assert round_from_dict(_round_dict(r1)) == r1


def test_no_checkpoint_means_nothing_to_resume(tmp_path: Path) -> None:
    assert RunRecorder.latest_checkpoint(tmp_path) is None


def test_summary_json_says_what_happened_per_partner(recorder: RunRecorder) -> None:
    rounds = _rounds()
    for r in rounds:
        recorder.record_round(r, _arrays(float(r.round)))
    result = LoopResult(_arrays(2.0), rounds, "stopped", "round 3: only 1 partner(s) trained")
    summary = recorder.finish(result, {"notices": ["n1"]})
    assert json.loads((recorder.out / "summary.json").read_text()) == summary
    assert summary["schema_version"] == SUMMARY_SCHEMA_VERSION
    assert (summary["run_id"], summary["status"], summary["stop_reason"]) == (
        "run-1",
        "stopped",
        "round 3: only 1 partner(s) trained",
    )
    assert (summary["rounds_planned"], summary["rounds_completed"]) == (3, 2)
    assert summary["metrics"] == {"auc": 0.8, "loss": None}  # NaN is not JSON; weights are not metrics
    assert summary["metrics_by_partner"] == {"bank_a": {"auc": 0.8}, "bank_b": {"auc": 0.6}}
    assert summary["budget_requested"] == {"epsilon": 3.0, "delta": 1e-5}
    assert summary["model"] == {
        "file": "model.pt",
        "task": "repayment",
        "arch": "mlp",
        "input_dim": SPEC.input_dim,
        "feature_spec": "feature_spec.json",
    }
    assert summary["round_wall_time_s"] == [1.235, 2.0] and summary["round_local_train_s"] == [0.5, 0.25]
    assert summary["notices"] == ["n1"]
    a, b, c = summary["partners"]
    assert [p["name"] for p in (a, b, c)] == ["bank_a", "bank_b", "bank_c"]
    assert (a["rounds_trained"], a["epsilon_spent"], a["epsilon_target"], a["delta"]) == (2, 2.0, 3.0, 1e-5)
    assert a["accounting"] == {"accountant": "rdp", "history": [2.0]}
    assert (b["rounds_trained"], b["rounds_refused"], b["epsilon_spent"]) == (1, 1, 1.0)
    assert b["refusals"] == [{"round": 2, "reason": "would pass the target"}]
    assert c["failures"] == [{"round": 2, "reason": "no reply before the round timed out"}]
    assert (c["rounds_failed"], c["epsilon_spent"], c["epsilon_target"]) == (1, 0.0, None)
    assert c["accounting"] == {"dp": True}
    for name in ("model.pt", "metrics.csv", "plots/auc_vs_round.png", "plots/epsilon_vs_round.png"):
        assert (recorder.out / name).is_file(), name


def test_a_run_without_a_completed_round_has_no_model(tmp_path: Path) -> None:
    job = JobConfig(dp=False, task="clv", arch="linear", run_id="r0", out=str(tmp_path / "run"))
    recorder = RunRecorder(tmp_path / "run", job, FeatureSpec("clv", "y", None, [NumericFeature("x", 0, 1)]))
    failed = RoundReport(1, [PartnerRound("bank_a", "failed", "boom")], {}, {}, 0.1, applied=False)
    recorder.record_round(failed, _arrays(0.0))
    summary = recorder.finish(LoopResult(_arrays(0.0), [failed], "stopped", "round 1: too few"))
    assert summary["rounds_completed"] == 0 and summary["model"]["file"] is None
    assert not (recorder.out / "model.pt").exists()
    assert summary["budget_requested"] is None and summary["primary_metric"] == "spearman"
    assert summary["partners"][0]["epsilon_spent"] is None and summary["metrics"] == {}
    assert (recorder.out / "plots" / "spearman_vs_round.png").is_file()


def test_a_new_job_in_an_old_runs_directory_keeps_the_old_run_whole(
    recorder: RunRecorder, tmp_path: Path
) -> None:
    # A second `run --out` into the same directory overwrote the first run's model, summary and anchors
    # and left its later checkpoints for a --resume to pick up (found by a new-user trial).
    r1, r2 = _rounds()
    recorder.record_round(r1, _arrays(1.0))
    recorder.record_round(r2, _arrays(2.0))
    out = recorder.out
    (out / "summary.json").write_text('{"run_id": "run-1"}\n')
    (out / "partners").mkdir()  # simulated homes stay: their budgets carry over
    same = RunRecorder(out, recorder.job, SPEC)  # the same run again moves nothing
    assert same.set_aside is None and (out / "checkpoints" / "round-0002.pt").exists()
    other_id = JobConfig(partners=3, rounds=3, run_id="run-1b", out=str(out))
    assert RunRecorder(out, other_id, SPEC, resume=True).set_aside is None  # nor does a resume
    assert (out / "checkpoints" / "round-0002.pt").exists()
    (out / "config.json").write_text(json.dumps(recorder.job.to_dict()))
    new = RunRecorder(out, JobConfig(partners=3, rounds=1, run_id="run-2", out=str(out)), SPEC)
    kept = out / "previous" / "run-1"
    assert new.set_aside == kept
    assert json.loads((kept / "config.json").read_text())["run_id"] == "run-1"
    assert (kept / "summary.json").exists() and (kept / "metrics.csv").exists()
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["round-0001.pt", "round-0002.pt"]
    assert RunRecorder.latest_checkpoint(out) is None  # nothing of run-1 to resume from by mistake
    assert json.loads((out / "config.json").read_text())["run_id"] == "run-2"
    assert (out / "partners").is_dir() and not (out / "summary.json").exists()
    again = RunRecorder(out, JobConfig(partners=3, rounds=1, run_id="run-3", out=str(out)), SPEC)
    assert again.set_aside == out / "previous" / "run-2"


def test_a_repayment_summary_reports_pooled_calibration_and_plots_the_reliability_diagram(
    recorder: RunRecorder,
) -> None:
    from fedcustomer.models.metrics import reliability_sums

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 400)
    y = (rng.uniform(0, 1, 400) < p * 0.6).astype(float)  # over-confident: observed rate below predictions
    pooled = {"auc": 0.7, "brier": 0.2, "loss": 0.5, "num-examples": 400.0, **reliability_sums(y, p)}
    r1 = RoundReport(1, [_trained("bank_a", 1.0, 0.7)], {}, pooled, 1.0, applied=True)
    recorder.record_round(r1, _arrays(1.0))
    summary = recorder.finish(LoopResult(_arrays(1.0), [r1], "completed", None), {})
    calibration = summary["calibration"]
    assert calibration["ece"] == pytest.approx(summary["metrics"]["ece"]) and calibration["ece"] > 0.1
    assert calibration["brier"] == 0.2 and len(calibration["bins"]) == 10
    assert not any(k.startswith("rel-") for k in summary["metrics"])  # the sums are folded into ece
    header = (recorder.out / "metrics.csv").read_text().splitlines()[0]
    assert "eval_ece" in header and "rel-" not in header
    assert (recorder.out / "plots" / "reliability.png").is_file()


def test_a_summary_without_reliability_sums_has_no_calibration(recorder: RunRecorder) -> None:
    rounds = _rounds()
    summary = recorder.finish(LoopResult(_arrays(2.0), rounds, "completed", None), {})
    assert summary["calibration"] is None and not (recorder.out / "plots" / "reliability.png").exists()


def test_a_model_whose_scores_sit_far_from_the_observed_rate_is_called_out_in_words() -> None:
    # A 3-round DP churn model: AUC 0.82, accuracy equal to the majority share, every score near 0.05 against a
    # churn rate of 0.27; only the ECE column said so (found by a new-user trial).
    from fedcustomer.server.calibration import calibration_warning

    def calibration(*bins: tuple[float, float, float]) -> dict:
        return {"bins": [{"share": s, "mean_predicted": p, "observed_rate": y} for s, p, y in bins]}

    low = calibration_warning(calibration((0.9, 0.04, 0.22), (0.1, 0.15, 0.7)))
    assert low is not None and "too low: mean predicted 0.05 against an observed rate of 0.27" in low
    high = calibration_warning(calibration((1.0, 0.6, 0.3)))
    assert high is not None and "too high" in high
    assert calibration_warning(calibration((0.5, 0.1, 0.12), (0.5, 0.5, 0.45))) is None  # close enough
    assert calibration_warning(None) is None and calibration_warning(calibration()) is None
