"""VerticalJob: what a split-learning job may ask for, refused with the option's name."""

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.vertical.job import DEFAULTS, VerticalJob


def test_defaults_are_valid_and_are_what_the_cli_reads() -> None:
    job = VerticalJob()
    assert DEFAULTS["epsilon"] == job.epsilon == 3.0 and DEFAULTS["lr"] == job.lr == 0.05
    assert "run_id" not in DEFAULTS  # a fresh one per job, not a default


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"task": "churn"}, "--task must be one of repayment, clv, got 'churn'"),
        ({"data": "cdnow"}, "--data must be one of synthetic, uci-credit, own for vertical runs"),
        ({"data": "uci-credit", "task": "clv"}, "the UCI credit data has no spend label"),
        ({"optimizer": "lbfgs"}, "--optimizer must be sgd or adam"),
        ({"epsilon": 0}, "--epsilon must be > 0"),
        ({"lr": float("nan")}, "--lr must be > 0"),
        ({"label_bound": -1}, "--label-bound must be > 0"),
        ({"embedding_clip": 0}, "--embedding-clip must be > 0"),
        (
            {"label_epsilon": 3.0, "baseline": False},
            "--label-epsilon \\(3\\) must be below --epsilon \\(3\\)",
        ),
        ({"baseline_epsilon": 2.0}, "--baseline-epsilon \\(2\\) plus --label-epsilon \\(1\\) must be below"),
        ({"baseline_epsilon": 0}, "--baseline-epsilon must be > 0"),
        ({"delta": 1.0}, "--delta must be in \\(0, 1\\)"),
        ({"embedding_noise": -0.1}, "--embedding-noise must be >= 0"),
        ({"embedding_noise": float("inf")}, "--embedding-noise must be >= 0"),
        ({"rounds": 0}, "--rounds must be >= 1"),
        ({"embed_dim": 0}, "--embed-dim must be >= 1"),
        ({"steps_per_round": 0}, "--steps-per-round must be >= 1"),
        ({"test_fraction": 1.0}, "--test-fraction must be in \\(0, 1\\)"),
        ({"retail_signal": 6}, "--retail-signal must be in \\[0, 5\\]"),
        ({"shared_fraction": 0}, "--shared-fraction must be in \\(0, 1\\]"),
    ],
)
def test_bad_options_are_refused_by_name(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VerticalJob(**kw)


def test_budget_splits_are_only_checked_where_they_are_spent() -> None:
    # without DP nothing is paid, so nothing needs to fit under epsilon
    assert VerticalJob(dp=False, label_epsilon=5.0, baseline_epsilon=5.0).label_epsilon == 5.0
    # without label DP the baseline alone must fit
    assert VerticalJob(label_dp=False, baseline_epsilon=2.5).baseline_epsilon == 2.5
    with pytest.raises(ConfigError, match="--baseline-epsilon \\(3\\) must be below --epsilon"):
        VerticalJob(label_dp=False, baseline_epsilon=3.0)
    assert VerticalJob(baseline=False, label_epsilon=2.9).label_epsilon == 2.9


def test_dict_round_trip_and_unknown_options(tmp_path) -> None:
    import json

    job = VerticalJob(task="clv", rounds=3, steps_per_round=4, homes="h", seed=5)
    assert VerticalJob.from_dict(job.to_dict()) == job
    assert VerticalJob.from_dict({"steps-per-round": 2, "label-dp": False}).steps_per_round == 2
    with pytest.raises(ConfigError, match="unknown vertical job option 'strategy'"):
        VerticalJob.from_dict({"strategy": "fedavg"})
    RunDir(tmp_path).write_config(job)
    assert VerticalJob.from_dict(json.loads((tmp_path / "config.json").read_text())) == job
