"""The shared job base: one set of defaults and checks for horizontal and vertical jobs."""

from __future__ import annotations

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.jobs import config as C
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.server.job import DEFAULTS, JobConfig
from fedcustomer.vertical.job import VerticalJob


def test_both_jobs_take_the_shared_defaults_from_one_place() -> None:
    job, vjob = JobConfig(), VerticalJob()
    assert job.epsilon == vjob.epsilon == C.DEFAULT_EPSILON == 3.0
    assert job.delta == vjob.delta == C.DEFAULT_DELTA
    assert (job.lr, job.max_grad_norm) == (C.DEFAULT_LR, C.DEFAULT_MAX_GRAD_NORM) == (0.5, 0.5)
    assert DEFAULTS["rounds"] == C.DEFAULT_ROUNDS and DEFAULTS["partners"] == C.DEFAULT_PARTNERS


def test_the_node_reads_a_message_with_the_defaults_a_job_uses() -> None:
    fields = TrainInstructions.__dataclass_fields__
    assert fields["lr"].default == JobConfig().lr
    assert fields["max_grad_norm"].default == JobConfig().max_grad_norm
    assert fields["batch_size"].default == JobConfig().batch_size


@pytest.mark.parametrize("cls", [JobConfig, VerticalJob])
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("epsilon", 0.0, "--epsilon must be > 0"),
        ("delta", 1.0, "--delta must be in (0, 1)"),
        ("lr", float("nan"), "--lr must be > 0"),
        ("max_grad_norm", -1.0, "--max-grad-norm must be > 0"),
        ("optimizer", "rmsprop", "--optimizer must be sgd or adam"),
        ("rounds", 0, "--rounds must be >= 1"),
        ("batch_size", 0, "--batch-size must be >= 1"),
    ],
)
def test_shared_checks_refuse_with_the_option_the_user_typed(cls, option, value, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(**{option: value})


def test_from_dict_accepts_dashes_and_aliases_and_names_unknown_options() -> None:
    job = JobConfig.from_dict({"num-server-rounds": 2, "local-epochs": 3})
    assert (job.rounds, job.local_epochs) == (2, 3)
    with pytest.raises(ConfigError, match="unknown job option 'nope'"):
        JobConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="unknown vertical job option 'num-server-rounds'"):
        VerticalJob.from_dict({"num-server-rounds": 2})


def test_a_job_round_trips_through_its_dict() -> None:
    job = VerticalJob(rounds=3, epsilon=4.0)
    assert VerticalJob.from_dict(job.to_dict()) == job


def test_the_config_module_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fedcustomer.jobs.config; print(sorted({'torch', 'flwr', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
