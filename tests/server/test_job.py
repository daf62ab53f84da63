"""JobConfig: validation with the option name the user typed, and a lossless dict round trip."""

import json
import math
import re
from pathlib import Path

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.jobs.config import new_run_id, require_positive
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.server.job import JobConfig


def test_defaults_are_valid_and_documented_values() -> None:
    job = JobConfig()
    assert (job.task, job.strategy, job.epsilon, job.delta, job.lr, job.max_grad_norm) == (
        "repayment",
        "fedavg",
        3.0,
        1e-5,
        0.5,
        0.5,
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"task": "churn"}, "--task must be one of repayment, clv, got 'churn'"),
        ({"arch": "transformer"}, "--arch for repayment must be one of"),
        ({"split": "random"}, "--split must be one of iid, non-iid, got 'random'"),
        ({"clipping": "slow"}, "--clipping must be one of fast, ghost, hooks"),
        ({"federated_eval": "sometimes"}, "--federated-eval must be one of every, final, none"),
        ({"optimizer": "rmsprop"}, "--optimizer must be sgd or adam, got 'rmsprop'"),
        ({"epsilon": float("nan")}, "--epsilon must be > 0, got nan"),
        ({"epsilon": float("inf")}, "--epsilon must be > 0, got inf"),
        ({"epsilon": True}, "--epsilon must be > 0"),
        ({"epsilon": "3"}, "--epsilon must be > 0"),
        ({"delta": 0}, "--delta must be in \\(0, 1\\), got 0"),
        ({"lr": 0}, "--lr must be > 0"),
        ({"max_grad_norm": -1}, "--max-grad-norm must be > 0"),
        ({"max_noise_multiplier": 0}, "--max-noise-multiplier must be > 0"),
        ({"rounds": 0}, "--rounds must be >= 1, got 0"),
        ({"local_epochs": 0}, "--local-epochs must be >= 1"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"min_partners": 0}, "--min-partners must be >= 1"),
        ({"partners": 2, "min_partners": 3}, "--min-partners \\(3\\) cannot exceed --partners \\(2\\)"),
        ({"strategy": "krum", "partners": 2}, "krum needs at least 3 partners"),
        ({"trimmed_beta": 0.5}, "trimmed beta must be in \\[0, 0.5\\)"),
        ({"central_dp": True, "central_noise_multiplier": 0}, "--central-noise-multiplier must be > 0"),
        ({"central_dp": True, "central_clipping_norm": -2}, "--central-clipping-norm must be > 0"),
    ],
)
def test_bad_values_are_refused_naming_the_option(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobConfig(**kw)


def test_central_dp_options_are_only_checked_when_central_dp_is_on() -> None:
    assert JobConfig(central_noise_multiplier=0).central_noise_multiplier == 0


def test_clv_has_its_own_architectures() -> None:
    with pytest.raises(ConfigError, match="--arch for clv must be one of"):
        JobConfig(task="clv", arch="no-such-arch")


def test_to_dict_from_dict_round_trip_is_lossless(tmp_path: Path) -> None:
    job = JobConfig(task="clv", strategy="fedprox", partners=4, rounds=7, epsilon=1.5, homes="h", seed=9)
    again = JobConfig.from_dict(job.to_dict())
    assert again == job and again.run_id == job.run_id
    RunDir(tmp_path).write_config(job)
    on_disk = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert on_disk == job.to_dict() and list(on_disk) == sorted(on_disk)
    assert JobConfig.from_dict(on_disk) == job


def test_from_dict_reads_cli_style_keys_and_the_flower_rounds_key() -> None:
    job = JobConfig.from_dict({"min-partners": 1, "num-server-rounds": 4, "max-grad-norm": 0.9})
    assert (job.min_partners, job.rounds, job.max_grad_norm) == (1, 4, 0.9)


def test_from_dict_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown job option 'epsilonn'"):
        JobConfig.from_dict({"epsilonn": 1.0})
    with pytest.raises(ConfigError, match="--epsilon must be > 0"):
        JobConfig.from_dict({"epsilon": -2})


def test_dataset_name_depends_on_data_and_task() -> None:
    from fedcustomer.partner.datasets import dataset_name

    assert JobConfig(data="synthetic").dataset_name == dataset_name("synthetic", "repayment")
    assert JobConfig(data="x.csv", task="clv").dataset_name == dataset_name("x.csv", "clv")


def test_run_ids_sort_by_time_and_do_not_collide() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", i) for i in ids)
    assert JobConfig().run_id != JobConfig().run_id


@pytest.mark.parametrize("value", [0, -0.1, math.nan, math.inf, -math.inf, True, None, "1"])
def test_require_positive_refuses_everything_but_a_finite_positive_number(value) -> None:
    with pytest.raises(ConfigError, match="^--some-option must be > 0, got "):
        require_positive("some_option", value)


@pytest.mark.parametrize("value", [1, 0.001, 1e9])
def test_require_positive_accepts_finite_positive_numbers(value) -> None:
    assert require_positive("x", value) is None
