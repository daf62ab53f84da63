"""What earlier jobs left of each partner's budget is said up front; a job nobody can pay for never starts."""

import os
from pathlib import Path

import pytest

from fedcustomer.errors import BudgetExhausted, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import homes_dir, uses_existing_homes


def _homes(tmp_path: Path, spent: dict[str, float], job: JobConfig) -> list[PartnerHome]:
    """One home per entry, with ``spent`` epsilon already charged on the job's dataset (target 2.0)."""
    homes = []
    for name, eps in spent.items():
        home = PartnerHome.create(tmp_path / name, name, budget=DatasetBudget(2.0, 1e-5))
        if eps:
            ledger = BudgetLedger(home.ledger_path, job.dataset_name, DatasetBudget(2.0, 1e-5))
            ledger.charge_approx("earlier-job", eps, 0.0, mechanism="laplace")
        homes.append(home)
    return homes


def _check(homes, job):
    from fedcustomer.server.partners import check_budgets

    return check_budgets(homes, job)


def test_fresh_partners_give_no_notice(tmp_path: Path) -> None:
    job = JobConfig(out=str(tmp_path / "run"))
    assert _check(_homes(tmp_path, {"a": 0, "b": 0, "c": 0}, job), job) == []


def test_a_partial_spend_is_said_with_what_is_left(tmp_path: Path) -> None:
    job = JobConfig(out=str(tmp_path / "run"))
    notices = _check(_homes(tmp_path, {"a": 0.5, "b": 0, "c": 0}, job), job)
    assert notices == [
        "partner 'a' has already spent epsilon 0.500 of 2 on its customers in earlier jobs; "
        "this job can use the 1.500 left"
    ]


def test_an_exhausted_partner_is_named_when_enough_others_can_train(tmp_path: Path) -> None:
    job = JobConfig(partners=3, min_partners=2, out=str(tmp_path / "run"))
    notices = _check(_homes(tmp_path, {"a": 2.0, "b": 0.5, "c": 0}, job), job)
    assert notices[-1] == "partner a (2.000 of 2) has no budget left and will refuse every round"
    assert notices[0].startswith("partner 'b' has already spent epsilon 0.500")


def test_exhausted_means_under_one_percent_left(tmp_path: Path) -> None:
    job = JobConfig(partners=3, min_partners=3, out=str(tmp_path / "run"))
    notices = _check(_homes(tmp_path, {"a": 1.97, "b": 0, "c": 0}, job), job)  # 1.5% left: still usable
    assert notices[0].startswith("partner 'a' has already spent epsilon 1.970")
    with pytest.raises(BudgetExhausted):
        _check(_homes(tmp_path / "more", {"a": 1.99, "b": 0, "c": 0}, job), job)


def test_a_job_fewer_than_min_partners_could_pay_for_is_refused_before_running(tmp_path: Path) -> None:
    job = JobConfig(partners=3, min_partners=2, out=str(tmp_path / "run"))
    homes = _homes(tmp_path, {"a": 2.0, "b": 2.0, "c": 0}, job)
    with pytest.raises(BudgetExhausted) as err:
        _check(homes, job)
    message = str(err.value)
    assert message.startswith("the privacy budget is spent at a (2.000 of 2), b (2.000 of 2), so fewer than")
    assert "--min-partners (2)" in message and "nothing was run" in message
    assert str(homes_dir(job)) in message


def test_homes_dir_is_the_homes_option_or_the_run_directory(tmp_path: Path) -> None:
    assert homes_dir(JobConfig(out=str(tmp_path / "run"))) == tmp_path / "run" / "partners"
    assert homes_dir(JobConfig(homes=str(tmp_path / "h"))) == tmp_path / "h"


@pytest.mark.parametrize(
    "data, expected",
    [
        ("customers", True),
        ("synthetic", False),  # a built-in source
        ("uci-credit", False),
        ("customers.csv", False),  # a file name, even a missing one
        ("customers.parquet", False),
        ("dir/customers", False),  # a path
    ],
)
def test_uses_existing_homes_only_for_a_bare_dataset_name_with_homes(
    tmp_path: Path, data: str, expected: bool
) -> None:
    assert uses_existing_homes(JobConfig(data=data, homes=str(tmp_path))) is expected
    assert uses_existing_homes(JobConfig(data=data)) is False  # never without --homes


def test_an_existing_file_without_suffix_is_data_not_a_dataset_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "customers").write_text("id,x\n1,2\n", encoding="utf-8")
    assert uses_existing_homes(JobConfig(data="customers", homes=str(tmp_path))) is False


def test_provision_workers_come_from_the_environment_or_the_federation_size(monkeypatch) -> None:
    from fedcustomer.server.partners import POOL_FROM_HOMES, PROVISION_WORKERS_ENV, provision_workers

    monkeypatch.delenv(PROVISION_WORKERS_ENV, raising=False)
    assert provision_workers(3) == 1
    assert provision_workers(POOL_FROM_HOMES) == min(os.cpu_count() or 1, 8)
    monkeypatch.setenv(PROVISION_WORKERS_ENV, "4")
    assert provision_workers(3) == 3 and provision_workers(500) == 4
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(PROVISION_WORKERS_ENV, bad)
        with pytest.raises(ConfigError, match=PROVISION_WORKERS_ENV):
            provision_workers(10)


def test_homes_provisioned_by_worker_processes_equal_those_made_here(tmp_path: Path, monkeypatch) -> None:
    from fedcustomer.data.store import PartnerStore
    from fedcustomer.server.partners import PROVISION_WORKERS_ENV, prepare_partners
    from tests.toy import toy_frame

    data = tmp_path / "toy.csv"
    toy_frame(200, 3).to_csv(data, index=False)
    made = {}
    for workers in ("1", "2"):
        monkeypatch.setenv(PROVISION_WORKERS_ENV, workers)
        job = JobConfig(
            data=str(data),
            label="defaulted",
            partners=4,
            epsilon=2.0,
            homes=str(tmp_path / f"homes{workers}"),
            out=str(tmp_path / f"run{workers}"),
        )
        notices: list[str] = []
        _, homes = prepare_partners(job, notices)
        counts = []
        for home in homes:
            with PartnerStore.open(home) as store:
                counts.append((home.root.name, store.count("toy"), store.schema("toy").structure()))
        keys = {(h.keys_dir / "keyring.json").read_bytes() for h in homes}
        assert len(keys) == 4  # every home its own keyring
        made[workers] = (counts, notices)
    assert made["1"] == made["2"]


def test_a_worker_that_dies_is_a_clear_error_not_a_traceback(tmp_path: Path, monkeypatch) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from fedcustomer.server import partners

    class DeadPool:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def map(self, *args):
            raise BrokenProcessPool("a child process terminated abruptly")

        def shutdown(self, **kwargs) -> None:
            pass

    monkeypatch.setattr(partners, "ProcessPoolExecutor", DeadPool)
    monkeypatch.setenv(partners.PROVISION_WORKERS_ENV, "2")
    work = [
        partners._Home(tmp_path / f"p{i}", f"p{i}", "toy.csv", "repayment", None, None, None)
        for i in range(4)
    ]
    with pytest.raises(ConfigError, match=f"{partners.PROVISION_WORKERS_ENV}=1"):
        list(partners._provision_all(work, None, None))
