"""The train message: what the coordinator encodes is what the node decodes."""

from __future__ import annotations

import pytest

from fedcustomer.data.synthetic import REPAYMENT_SPEC
from fedcustomer.errors import ConfigError
from fedcustomer.jobs.train_message import TrainInstructions, encode_train_config
from fedcustomer.server.job import JobConfig


def test_encode_then_decode_gives_the_job_back() -> None:
    job = JobConfig(rounds=4, lr=0.3, max_grad_norm=0.7, clipping="ghost", strategy="fedprox", seed=5)
    cfg = encode_train_config(job, REPAYMENT_SPEC)
    ins = TrainInstructions.from_config({**cfg, "server-round": 2})
    assert (ins.run_id, ins.round, ins.planned_rounds) == (job.run_id, 2, 4)
    assert (ins.dataset, ins.lr, ins.max_grad_norm, ins.clipping, ins.seed) == (
        job.dataset_name,
        0.3,
        0.7,
        "ghost",
        5,
    )
    assert ins.proximal_mu == job.proximal_mu
    assert ins.spec.to_dict() == REPAYMENT_SPEC.to_dict()


def test_the_proximal_term_goes_only_to_fedprox_jobs() -> None:
    cfg = encode_train_config(JobConfig(strategy="fedavg", proximal_mu=0.3), REPAYMENT_SPEC)
    assert cfg["proximal-mu"] == 0.0


def test_the_message_is_flat_and_config_record_safe() -> None:
    cfg = encode_train_config(JobConfig(), REPAYMENT_SPEC)
    assert all(isinstance(v, (str, int, float, bool)) for v in cfg.values())


def test_a_message_without_a_required_key_is_refused_by_name() -> None:
    cfg = encode_train_config(JobConfig(), REPAYMENT_SPEC)
    del cfg["planned-rounds"]
    with pytest.raises(ConfigError, match="'planned-rounds'"):
        TrainInstructions.from_config(cfg)
