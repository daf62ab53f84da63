"""A partner reads and decrypts its training rows once per job, and again whenever the store changed."""

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import torch

from fedcustomer.clients import job_matrices
from fedcustomer.clients.job_matrices import JobMatrices
from fedcustomer.clients.node import PartnerNode
from fedcustomer.clients.round_audit import record_evaluation, record_round
from fedcustomer.common.sqlite_wal import backup_database
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.provision import provision_partner
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.privacy.access.policy import Actor, bundled_policy_text
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.clients.test_node import _global, _home, _ins
from tests.toy import SPEC, toy_frame


def _reads(home):
    return AuditLog.open(home.audit_dir, keys_dir=home.keys_dir).query(
        action="read", role="training_pipeline"
    )


def _rounds(home):
    return AuditLog.open(home.audit_dir, keys_dir=home.keys_dir).query(action="fl_round")


def test_a_job_reads_once_and_every_round_cites_that_read(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    state = _global()
    for rnd in (1, 2, 3):
        node = PartnerNode(home)  # a fresh node per message, as the ClientApp makes one
        out = node.train_round(state, _ins(rnd, planned=3, run="once"))
        record_round(home, out, _ins(rnd, planned=3, run="once"))
        state = out.state_dict
    reads = _reads(home)
    assert len(reads) == 1
    rounds = _rounds(home)
    assert [r.details["data_cached"] for r in rounds] == [False, True, True]
    assert {r.details["data_read"]["audit_seq"] for r in rounds} == {reads[0].seq}
    assert rounds[0].details["data_read"]["audit_hash"] == reads[0].hash
    key_home = str(home.root.resolve())
    assert not [k for k in job_matrices.CACHE._entries if k[0] == key_home]  # dropped after the last round


def test_an_erased_customer_is_never_trained_on_after_the_erasure(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    state = _global()
    node = PartnerNode(home)
    state = node.train_round(state, _ins(1, planned=4, run="erase")).state_dict
    state = node.train_round(state, _ins(2, planned=4, run="erase")).state_dict
    assert len(_reads(home)) == 1
    with PartnerStore.open(home) as store:
        erase_customer(store, Actor("alice", "partner_admin"), "c5")  # a training customer
    node.train_round(state, _ins(3, planned=4, run="erase"))
    reads = _reads(home)
    assert len(reads) == 2 and reads[1].row_count == reads[0].row_count - 1
    use = job_matrices.take_use(str(home.root.resolve()), "erase", 3)
    assert use is not None and not use.cached and use.read["audit_seq"] == reads[1].seq
    job_matrices.CACHE.drop_run("erase")


def test_a_changed_access_policy_means_a_fresh_governed_read(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    node = PartnerNode(home)
    state = node.train_round(_global(), _ins(1, planned=3, run="policy")).state_dict
    policy = tmp_path / "policy.csv"
    policy.write_text(bundled_policy_text(), encoding="utf-8")  # same grants, but another policy in force
    config = home.config()
    config.policy_file = str(policy)
    home.write_config(config)
    PartnerNode(home).train_round(state, _ins(2, planned=3, run="policy"))
    assert len(_reads(home)) == 2
    job_matrices.CACHE.drop_run("policy")


def test_new_rows_and_a_store_replaced_by_an_older_copy_each_mean_a_fresh_read(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    node = PartnerNode(home)
    state = node.train_round(_global(), _ins(1, planned=4, run="replaced")).state_dict
    backup = tmp_path / "store-before.db"
    backup_database(home.store_path, backup)  # with what store.db-wal holds
    more = toy_frame(50, 3)
    more["customer_id"] = "n" + more["customer_id"]
    provision_partner(  # 50 new customers ingested between rounds
        home.root,
        "bank_a",
        source="toy.csv",
        task="repayment",
        spec=SPEC,
        train=more,
        test=more.iloc[:0],
        budget=DatasetBudget(3.0, 1e-5),
    )
    state = node.train_round(state, _ins(2, planned=4, run="replaced")).state_dict
    with closing(sqlite3.connect(backup)) as older, closing(sqlite3.connect(home.store_path)) as live:
        older.backup(live)  # the store as it was before that ingest, restored through SQLite (WAL-safe)
    node.train_round(state, _ins(3, planned=4, run="replaced"))
    reads = _reads(home)
    assert len(reads) == 3
    assert reads[1].row_count == reads[0].row_count + 50 and reads[2].row_count == reads[0].row_count
    job_matrices.CACHE.drop_run("replaced")


def _tensors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, 4), torch.zeros(n)


def test_the_cache_holds_nothing_without_a_stamp_and_evicts_by_size_and_idleness() -> None:
    cache = JobMatrices(max_bytes=2 * (100 * 4 * 4 + 100 * 4), idle_seconds=3600)
    loads = []

    def loader(n: int):
        def load():
            loads.append(n)
            return (*_tensors(n), {"audit_seq": n, "audit_hash": "h"})

        return load

    def get(name: str, stamp=(1,), n: int = 100, last: bool = False):
        return cache.get(("home", "run", name, "train", "{}"), stamp, loader(n), round_=1, last=last)

    get("a", stamp=None)
    get("a", stamp=None)
    assert loads == [100, 100] and len(cache) == 0  # a store that cannot say whether it changed
    get("a"), get("b"), get("c")  # room for two: "a" goes first
    assert len(cache) == 2 and ("home", "run", "a", "train", "{}") not in cache._entries
    get("b")
    assert loads.count(100) == 5  # "b" was served from memory
    get("b", stamp=(2,))
    assert loads.count(100) == 6  # the store changed: read again
    get("b", stamp=(2,), last=True)  # served from memory, then dropped
    assert ("home", "run", "b", "train", "{}") not in cache._entries
    cache.idle_seconds = 0.0
    get("c")
    assert loads.count(100) == 7  # idle past the limit: dropped, read again


@pytest.mark.parametrize("split", ["test"])
def test_evaluation_reuses_its_own_read_and_does_not_claim_a_round(tmp_path: Path, split: str) -> None:
    home = _home(tmp_path, 3.0)
    node = PartnerNode(home)
    a = node.evaluate(_global(), _ins(1, planned=3, run="eval"))
    b = node.evaluate(_global(), _ins(2, planned=3, run="eval"))
    assert a == b and len(_reads(home)) == 1
    assert job_matrices.take_use(str(home.root.resolve()), "eval", 1) is None  # no training use
    assert job_matrices.take_use(str(home.root.resolve()), "eval", 1, split) is not None
    job_matrices.CACHE.drop_run("eval")


def test_evaluation_reads_are_audited_as_evaluation_and_every_evaluated_round_cites_its_read(
    tmp_path: Path,
) -> None:
    home = _home(tmp_path, 3.0)
    state = _global()
    for rnd in (1, 2):
        node = PartnerNode(home)
        out = node.train_round(state, _ins(rnd, planned=2, run="job7"))
        record_round(home, out, _ins(rnd, planned=2, run="job7"))
        state = out.state_dict
        metrics = PartnerNode(home).evaluate(state, _ins(rnd, planned=2, run="job7"))
        record_evaluation(home, node.name, _ins(rnd, planned=2, run="job7"), metrics)
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    training = log.query(action="read", purpose="training")
    evaluation = log.query(action="read", purpose="evaluation")
    assert len(training) == 1 and len(evaluation) == 1  # each read once per job
    assert training[0].details["run_id"] == "job7" and training[0].details["split"] == "train"
    assert evaluation[0].details["run_id"] == "job7" and evaluation[0].details["split"] == "test"
    evals = log.query(action="fl_evaluate")
    assert [e.details["round"] for e in evals] == [1, 2]
    assert {e.purpose for e in evals} == {"evaluation"}
    assert [e.details["data_cached"] for e in evals] == [False, True]
    assert {e.details["data_read"]["audit_seq"] for e in evals} == {evaluation[0].seq}
    assert evals[0].details["data_read"]["audit_hash"] == evaluation[0].hash
    assert "auc" in evals[0].details["metrics"] and "num-examples" not in evals[0].details["metrics"]
    assert evals[0].details["reliability_bins"] == 10  # the calibration sums sent, counted, not listed
    assert not any(m.startswith("rel-") for m in evals[0].details["metrics"])
    assert not any("auc" in str(v) and isinstance(v, float) for v in evals[0].details.values())  # names only
    rounds = log.query(action="fl_round")
    assert {r.details["data_read"]["audit_seq"] for r in rounds} == {training[0].seq}  # not the eval read
    served = log.query(run="JOB7")  # the run filter ignores case, like every text filter
    assert {e.action for e in served} == {"read", "fl_round", "fl_evaluate"}
    assert log.query(run="job8") == []


def test_an_evaluation_read_is_refused_by_a_policy_that_grants_only_training(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "\n".join(
            line
            for line in bundled_policy_text().splitlines()
            if not line.startswith("p, training_pipeline, evaluation,")
        ),
        encoding="utf-8",
    )
    config = home.config()
    config.policy_file = str(policy)
    home.write_config(config)
    with pytest.raises(AccessDenied, match="purpose 'evaluation' not granted to role 'training_pipeline'"):
        PartnerNode(home).evaluate(_global(), _ins(1, planned=2, run="nogrant"))
    denied = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir).query(
        decision="denied", purpose="evaluation"
    )
    assert len(denied) == 1 and denied[0].details["run_id"] == "nogrant"
    job_matrices.CACHE.drop_run("nogrant")


def test_a_read_context_naming_anything_but_the_job_is_refused(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    with PartnerStore.open(home) as store:
        with pytest.raises(ConfigError, match="context may name only"):
            store.read(Actor("node:bank_a", "training_pipeline"), "training", context={"income": 5})
        with pytest.raises(ConfigError, match="text or whole numbers"):
            store.read(Actor("node:bank_a", "training_pipeline"), "training", context={"run_id": ["x"]})


def test_rounds_on_the_kept_matrix_release_the_same_weights_as_rounds_that_read_afresh(
    tmp_path: Path, monkeypatch
) -> None:
    import itertools

    import fedcustomer.privacy.dp.dpsgd as dpsgd

    template = _home(tmp_path / "template", 3.0)

    def job(name: str, cache: JobMatrices) -> tuple[list[torch.Tensor], int]:
        seeds = itertools.count(1)

        def seeded() -> torch.Generator:  # the same noise and sampling in both jobs
            generator = torch.Generator()
            generator.manual_seed(1000 + next(seeds))
            return generator

        monkeypatch.setattr(dpsgd, "secure_generator", seeded)
        monkeypatch.setattr(job_matrices, "CACHE", cache)
        shutil.copytree(template.root, tmp_path / name / "bank_a")
        home = type(template)(tmp_path / name / "bank_a")
        state = _global()
        for rnd in (1, 2, 3):
            state = PartnerNode(home).train_round(state, _ins(rnd, planned=3, run="same")).state_dict
        return list(state.values()), len(_reads(home))

    kept, kept_reads = job("kept", JobMatrices())
    fresh, fresh_reads = job("fresh", JobMatrices(max_bytes=0))  # no cache: every round a governed read
    assert (kept_reads, fresh_reads) == (1, 3)
    assert all(torch.equal(a, b) for a, b in zip(kept, fresh, strict=True))
