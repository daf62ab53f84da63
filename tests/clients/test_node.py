"""The partner node: DP rounds paid from its own ledger, refusals, idempotent restarts."""

import io
from pathlib import Path

import pytest
import torch

from fedcustomer.clients.node import PartnerNode
from fedcustomer.data.provision import provision_partner
from fedcustomer.errors import DataError
from fedcustomer.jobs.train_message import TrainInstructions
from fedcustomer.models.registry import build_model
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from tests.toy import SPEC, toy_frame

DATASET = "toy"


def _home(
    tmp_path: Path, epsilon: float, rename: dict[str, str] | None = None, train_rows: int = 1000
) -> PartnerHome:
    test = toy_frame(300, 2)
    test["customer_id"] = "t" + test["customer_id"]
    home, report = provision_partner(
        tmp_path / "bank_a",
        "bank_a",
        source="toy.csv",
        task="repayment",
        spec=SPEC,
        train=toy_frame(train_rows, 1).rename(columns=rename or {}),
        test=test.rename(columns=rename or {}),
        budget=DatasetBudget(epsilon, 1e-5),
    )
    return home


def _ins(rnd: int, planned: int = 3, run: str = "r1", **kw) -> TrainInstructions:
    return TrainInstructions(
        run_id=run,
        round=rnd,
        planned_rounds=planned,
        task="repayment",
        arch="logreg",
        dataset=DATASET,
        spec=SPEC,
        batch_size=100,
        lr=0.5,
        **kw,
    )


def _global() -> dict[str, torch.Tensor]:
    return build_model("repayment", "logreg", SPEC.input_dim, seed=0).state_dict()


def test_rounds_spend_exactly_what_the_ledger_records_and_stay_within_target(tmp_path: Path) -> None:
    node = PartnerNode(_home(tmp_path, 2.0))
    state = _global()
    for rnd in (1, 2, 3):
        out = node.train_round(state, _ins(rnd))
        assert not out.refused
        state = out.state_dict
    ledger = BudgetLedger(node.home.ledger_path, DATASET, DatasetBudget(2.0, 1e-5))
    assert len(ledger.charges()) == 3
    assert out.metrics["epsilon-total"] == pytest.approx(ledger.spent().epsilon)
    assert 0.9 * 2.0 < ledger.spent().epsilon <= 2.0
    assert out.accounting["steps_per_round"] == 10  # int(1 / (100/1000))
    metrics = node.evaluate(state, _ins(3))
    assert metrics["auc"] > 0.75


def test_round_past_the_plan_is_refused_with_reason_and_no_charge(tmp_path: Path) -> None:
    node = PartnerNode(_home(tmp_path, 1.0))
    state = _global()
    for rnd in (1, 2):
        state = node.train_round(state, _ins(rnd, planned=2)).state_dict
    out = node.train_round(state, _ins(3, planned=2))
    assert out.refused and out.state_dict is None
    assert "past this partner's target 1" in out.refused_reason
    ledger = BudgetLedger(node.home.ledger_path, DATASET, DatasetBudget(1.0, 1e-5))
    assert len(ledger.charges()) == 2 and ledger.spent().epsilon <= 1.0


def test_restarted_node_resends_paid_update_without_paying_again(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    first = PartnerNode(home).train_round(_global(), _ins(1))
    again = PartnerNode(home).train_round(_global(), _ins(1))  # a new process after a crash
    for k in first.state_dict:
        assert torch.equal(first.state_dict[k], again.state_dict[k])
    assert len(BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5)).charges()) == 1


def test_budget_persists_across_jobs_on_the_same_dataset(tmp_path: Path) -> None:
    home = _home(tmp_path, 2.0)
    state = _global()
    for rnd in (1, 2):
        state = PartnerNode(home).train_round(state, _ins(rnd, planned=2, run="job-1")).state_dict
    out = PartnerNode(home).train_round(_global(), _ins(1, planned=2, run="job-2"))
    assert out.refused  # job-1 already spent the whole target for this dataset


def test_a_run_keeps_its_first_rounds_noise_without_a_file_of_its_own(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    state = PartnerNode(home).train_round(_global(), _ins(1, planned=3)).state_dict
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    first = ledger.charges()[0].noise_multiplier
    ledger.charge_approx("meanwhile", 0.2, 0.0, mechanism="laplace")  # spent elsewhere between rounds
    PartnerNode(home).train_round(state, _ins(2, planned=3))  # a restarted node, too
    assert [c.noise_multiplier for c in ledger.charges() if c.mechanism == "dpsgd"] == [first, first]
    assert list(home.state_dir.glob("noise-*.json")) == []


def test_a_run_begun_by_an_earlier_version_keeps_the_noise_in_its_file(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    (home.state_dir / "noise-r1-toy.json").write_text('{"noise_multiplier": 4.5, "sample_rate": 0.1}')
    PartnerNode(home).train_round(_global(), _ins(1, planned=3))
    (charge,) = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5)).charges()
    assert charge.noise_multiplier == 4.5


def test_dataset_without_the_spec_columns_is_a_clear_data_error(tmp_path: Path) -> None:
    home = _home(tmp_path, 2.0, rename={"x2": "x3"})
    with pytest.raises(DataError, match="has no field\\(s\\) x2 that the feature spec reads"):
        PartnerNode(home).train_round(_global(), _ins(1))
    assert not (home.state_dir / "updates").exists()  # nothing trained, nothing cached


def test_training_reads_go_through_the_store_and_are_audited(tmp_path: Path) -> None:
    from fedcustomer.privacy.audit.writer import AuditLog

    home = _home(tmp_path, 2.0)
    PartnerNode(home).train_round(_global(), _ins(1))
    reads = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir).query(
        action="read", role="training_pipeline"
    )
    assert reads and reads[-1].purpose == "training" and reads[-1].decision == "allowed"
    assert set(reads[-1].fields) == {"x1", "x2", "defaulted"}
    assert reads[-1].row_count == 1000  # the training customers alone, not the 300 held out too


_KILLED_AFTER_THE_CHARGE = """
import os, signal, sys
from fedcustomer.clients.node import PartnerNode
from fedcustomer.partner.home import PartnerHome
from tests.clients.test_node import _global, _ins

def die(*args, **kwargs):  # the charge is committed and the update kept; the reply never leaves
    os.kill(os.getpid(), signal.SIGKILL)

PartnerNode._settle = die
PartnerNode(PartnerHome(sys.argv[1])).train_round(_global(), _ins(1))
"""


def test_a_node_killed_between_its_charge_and_its_reply_resends_the_kept_update(tmp_path: Path) -> None:
    """The update is committed with its charge; a SIGKILL after the charge re-sends exactly those bytes."""
    import subprocess
    import sys

    home = _home(tmp_path, 3.0)
    root = Path(__file__).resolve().parents[2]
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_THE_CHARGE, str(home.root)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert died.returncode == -9, died.stderr[-2000:]
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    (charge,) = ledger.charges()
    assert not (home.state_dir / "updates").exists()  # no file of its own: it is in the charge's row
    before = ledger.kept(charge.charge_key)
    assert before is not None
    blob = torch.load(io.BytesIO(before), weights_only=True)
    assert blob["accounting"] == {}  # kept without accounting; the ledger row is what pays it

    again = PartnerNode(home).train_round(_global(), _ins(1))
    assert not again.refused
    for k, v in blob["state"].items():
        assert torch.equal(again.state_dict[k], v)  # the same draw, not a new one
    assert len(ledger.charges()) == 1  # paid once
    assert again.metrics["epsilon-total"] == pytest.approx(charge.epsilon_total)
    assert [tuple(h) for h in again.accounting["history"]] == [
        (charge.noise_multiplier, charge.sample_rate, charge.steps)
    ]
    assert ledger.kept(charge.charge_key) == before  # never rewritten


def test_a_resent_round_reports_the_spend_as_it_stood_when_it_was_paid(tmp_path: Path) -> None:
    home = _home(tmp_path, 3.0)
    first = PartnerNode(home).train_round(_global(), _ins(1))
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    before = ledger.kept("run:r1:round:1")
    PartnerNode(home).train_round(first.state_dict, _ins(2))
    again = PartnerNode(home).train_round(_global(), _ins(1))  # round 1 again, after round 2 was paid
    assert again.accounting == first.accounting and again.metrics == first.metrics
    assert len(again.accounting["history"]) == 1
    assert before is not None and ledger.kept("run:r1:round:1") == before


def test_an_update_kept_as_a_file_by_an_earlier_version_is_resent_for_the_round_it_paid(
    tmp_path: Path,
) -> None:
    """Before updates were committed with their charge, they were kept in ``state/updates/``."""
    from fedcustomer.clients.node import _UpdateCodec
    from fedcustomer.privacy.dp.release import PaidResults, Step

    home = _home(tmp_path, 3.0)
    first = PartnerNode(home).train_round(_global(), _ins(1))
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    with ledger._transaction() as conn:  # as an earlier version left it: the charge, and a file
        conn.execute("DELETE FROM kept_results")
    step = Step("run:r1:round:1", "round 1", "r1", 1)
    PaidResults(home.state_dir / "updates", _UpdateCodec(), rewrite_paid=False).keep(step, first, paid=False)
    again = PartnerNode(home).train_round(_global(), _ins(1))
    assert again.metrics == first.metrics and again.accounting == first.accounting
    for k, v in first.state_dict.items():
        assert torch.equal(again.state_dict[k], v)
    assert len(ledger.charges()) == 1


def test_a_failed_charge_commits_neither_the_charge_nor_the_update(tmp_path: Path, monkeypatch) -> None:
    home = _home(tmp_path, 3.0)

    def broken(*_args, **_kwargs):
        raise OSError("disk full mid-charge")

    with monkeypatch.context() as m:
        m.setattr(BudgetLedger, "_spend_of", broken)
        with pytest.raises(OSError, match="mid-charge"):
            PartnerNode(home).train_round(_global(), _ins(1))
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    assert ledger.charges() == [] and ledger.kept("run:r1:round:1") is None
    assert not (home.state_dir / "updates").exists()
    again = PartnerNode(home).train_round(_global(), _ins(1))  # trained afresh and paid once
    assert not again.refused and len(ledger.charges()) == 1
    assert ledger.kept("run:r1:round:1") is not None


def test_a_job_holds_its_ledgers_log_until_its_last_round(tmp_path: Path) -> None:
    from fedcustomer.clients.ledger_holds import HOLDS

    home = _home(tmp_path, 3.0)
    wal = home.ledger_path.with_name("ledger.db-wal")
    job, other = (str(home.root.resolve()), "r1"), (str(home.root.resolve()), "r2")
    state = _global()
    state = PartnerNode(home).train_round(state, _ins(1, planned=2)).state_dict
    assert wal.exists() and job in HOLDS  # charges of the job commit without a checkpoint each
    PartnerNode(home).train_round(state, _ins(2, planned=2))
    assert not wal.exists() and job not in HOLDS  # released after the last planned round: at rest as before
    refused = PartnerNode(home).train_round(_global(), _ins(1, planned=2, run="r2"))
    assert refused.refused and other not in HOLDS  # a refusal releases it too


def test_a_non_private_round_is_trained_only_where_partner_toml_allows_it(tmp_path: Path) -> None:
    # A coordinator asking for --no-dp got a non-private update from a real partner's home, whose admin
    # never agreed to a release without an epsilon bound (found by a new-user trial).
    from dataclasses import replace

    home = _home(tmp_path, 2.0)
    assert home.config().allow_non_private  # a simulated home serves non-private baselines
    assert not PartnerNode(home).train_round(_global(), _ins(1, dp=False)).refused
    home.write_config(replace(home.config(), allow_non_private=False))
    assert "[training]" not in home.config_path.read_text()
    reads = len(home_audit_reads(home))
    out = PartnerNode(home).train_round(_global(), _ins(2, dp=False))
    assert out.refused and out.state_dict is None
    assert "does not train without differential privacy" in out.refused_reason
    assert "allow_non_private = true" in out.refused_reason
    assert len(home_audit_reads(home)) == reads  # refused before any customer row is read
    home.write_config(replace(home.config(), allow_non_private=True))
    assert "allow_non_private = true" in home.config_path.read_text() and home.config().allow_non_private


def home_audit_reads(home: PartnerHome) -> list:
    from fedcustomer.privacy.audit.writer import AuditLog

    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    try:
        return log.query(action="read")
    finally:
        log.close()


def test_a_malformed_training_section_is_a_clear_config_error(tmp_path: Path) -> None:
    from fedcustomer.errors import ConfigError

    home = PartnerHome.create(tmp_path / "p", "p")
    assert not home.config().allow_non_private  # a home made for real data does not allow it
    home.config_path.write_text(home.config_path.read_text() + '\n[training]\nallow_non_private = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[training\] allow_non_private must be true or false"):
        home.config()


def test_the_sample_rate_that_leaves_with_an_update_shows_the_rows_only_rounded(tmp_path: Path) -> None:
    # batch / rows in the released accounting gave the coordinator the exact training-row count (found
    # trying a new dataset: 128 / 0.06801275 = 1882), which the docs say leaves only rounded to 100.
    home = _home(tmp_path, 3.0, train_rows=1037)
    out = PartnerNode(home).train_round(_global(), _ins(1))
    ((_, rate, steps),) = [tuple(h) for h in out.accounting["history"]]
    assert rate == pytest.approx(100 / 1000) and steps == 10  # not 100 / 1037
    assert out.metrics["num-examples"] == 1000
    ledger = BudgetLedger(home.ledger_path, DATASET, DatasetBudget(3.0, 1e-5))
    assert [c.sample_rate for c in ledger.charges()] == [pytest.approx(0.1)]  # charged as trained
