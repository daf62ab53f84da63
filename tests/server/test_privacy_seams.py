"""The privacy promise at the seams around the accountant: names, re-splits, notices, baselines."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from opacus.accountants import RDPAccountant

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.placement import PlacementRegistry
from fedcustomer.data.sources import load_partitions
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import BudgetExhausted, ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.accounting import epsilon as accounting_epsilon
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import GAUSSIAN, BudgetLedger
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.job import JobConfig
from fedcustomer.server.partners import check_budgets, homes_dir, prepare_partners
from fedcustomer.server.run import run_job_on_grid
from tests.toy import toy_frame


def _file(path: Path, rows: int = 900, **extra) -> Path:
    frame = toy_frame(rows, 3, strength=1.25)
    for name, values in extra.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


def _job(tmp_path: Path, data: Path, **kw) -> JobConfig:
    base = dict(
        data=str(data),
        label="defaulted",
        partners=2,
        rounds=2,
        arch="logreg",
        batch_size=100,
        epsilon=3.0,
        homes=str(tmp_path / "homes"),
        out=str(tmp_path / f"run-{data.stem}"),
        min_partners=1,
    )
    return JobConfig(**(base | kw))


def _run(job: JobConfig) -> dict:
    notices: list[str] = []
    spec, homes = prepare_partners(job, notices)
    notices += check_budgets(homes, job)
    grid = LocalGrid(make_client_app([str(h.root) for h in homes]), len(homes))
    return run_job_on_grid(grid, job, spec, num_partners=len(homes), notices=notices)


def _true_epsilon(home: PartnerHome, delta: float) -> float:
    """Every Gaussian release in the partner's ledger file, whatever dataset it names, composed by Opacus."""
    acc = RDPAccountant()
    ledger = BudgetLedger(home.ledger_path, "-", DatasetBudget(1.0, delta))
    acc.history = [
        (c.noise_multiplier, c.sample_rate, c.steps) for c in ledger.all_charges() if c.family == GAUSSIAN
    ]
    return acc.get_epsilon(delta)


def test_a_renamed_copy_of_the_same_customers_composes_with_the_original(tmp_path: Path) -> None:
    original = _file(tmp_path / "customers.csv")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(original.read_bytes())
    job = _job(tmp_path, original, rounds=1, epsilon=3.0)
    _, homes = prepare_partners(job)
    earlier = GaussianSteps(
        noise_multiplier=2.0, sample_rate=0.1, steps=20
    )  # an earlier release on the original
    for home in homes:
        BudgetLedger(home.ledger_path, "customers", DatasetBudget(3.0, 1e-5)).charge_gaussian(
            "earlier", earlier
        )
    alone = accounting_epsilon([earlier], 1e-5)
    summary = _run(_job(tmp_path, copy, rounds=2, epsilon=3.0))
    assert summary["dataset"] == "copy" and summary["rounds_completed"] == 2
    for p in summary["partners"]:
        true = _true_epsilon(PartnerHome(tmp_path / "homes" / p["name"]), 1e-5)
        assert p["epsilon_spent"] == pytest.approx(true, rel=1e-9)  # what is reported covers both files
        assert alone < true <= 3.0
        assert any("already spent epsilon" in n and p["name"] in n for n in summary["notices"])


def test_a_job_on_spent_homes_is_refused_up_front(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv")
    _run(_job(tmp_path, data, rounds=1))
    renamed = tmp_path / "renamed.csv"
    renamed.write_bytes(data.read_bytes())
    with pytest.raises(BudgetExhausted, match="nothing was run"):
        _run(_job(tmp_path, renamed, rounds=1))


def test_a_partner_budget_other_than_epsilon_is_said_and_recorded(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv")
    job = _job(tmp_path, data, rounds=1, epsilon=3.0)
    prepare_partners(job)
    summary = _run(_job(tmp_path, data, rounds=1, epsilon=8.0))
    assert summary["budget_requested"] == {"epsilon": 8.0, "delta": 1e-5}
    assert any(
        "keeps its own budget epsilon 3" in n and "requested epsilon 8" in n for n in summary["notices"]
    )
    assert all(p["epsilon_target"] == 3.0 for p in summary["partners"])
    saved = json.loads((tmp_path / "run-customers" / "summary.json").read_text())
    assert saved["notices"] == summary["notices"]


def _store_rows(home: PartnerHome, dataset: str) -> int:
    with PartnerStore.open(home) as store:
        return store.count(dataset)


def test_a_new_seed_on_the_same_homes_keeps_every_customer_where_it_was(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv", rows=600)
    first_notices: list[str] = []
    prepare_partners(_job(tmp_path, data, seed=0), first_notices)
    homes = [PartnerHome(p) for p in sorted((tmp_path / "homes").glob("partner_*"))]
    before = [_store_rows(h, "customers") for h in homes]
    notices: list[str] = []
    prepare_partners(_job(tmp_path, data, seed=1), notices)
    after = [_store_rows(h, "customers") for h in homes]
    assert after == before and sum(after) == 600  # nobody joined a second partner
    assert any("keep the split fixed" in n and "seed '0' -> '1'" in n for n in notices), notices
    assert not any("keep the split fixed" in n for n in first_notices)
    # the registry places every customer exactly where the first provisioning did, held-out part included
    registry = PlacementRegistry(tmp_path / "homes")
    layout = {"partners": "2", "split": "iid", "seed": "0", "data": str(data)}
    _, seed0 = load_partitions("repayment", str(data), 2, seed=0, label="defaulted")
    _, seed1 = load_partitions("repayment", str(data), 2, seed=1, label="defaulted")
    placed = registry.apply(seed1, "customer_id", layout | {"seed": "1"})
    assert placed.moved > 0 and placed.new == 0
    for a, b in zip(seed0, placed.datasets):
        assert set(a.train["customer_id"]) == set(b.train["customer_id"])
        assert set(a.test["customer_id"]) == set(b.test["customer_id"])


def test_other_partner_counts_on_the_same_homes_are_refused(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv", rows=600)
    prepare_partners(_job(tmp_path, data, partners=2))
    with pytest.raises(ConfigError, match="same --partners"):
        prepare_partners(_job(tmp_path, data, partners=3))


def test_homes_the_job_did_not_make_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv", rows=300)
    homes = tmp_path / "homes"
    PartnerHome.create(homes / "acme-bank", "acme-bank")  # a partner set up by hand (init / node prepare)
    before = sorted(p.name for p in homes.iterdir())
    with pytest.raises(ConfigError, match=r"homes this job did not make \(acme-bank\).*--feature-spec"):
        prepare_partners(_job(tmp_path, data, partners=2))
    assert sorted(p.name for p in homes.iterdir()) == before  # no placements, no partner_1, partner_2
    # the job's own homes, made by an earlier job, are what a later job reuses
    other = tmp_path / "other"
    prepare_partners(_job(tmp_path, data, partners=2, homes=str(other)))
    _, again = prepare_partners(_job(tmp_path, data, partners=2, homes=str(other)))
    assert len(again) == 2


def test_the_registry_keeps_no_raw_id(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv", rows=300, customer_id=[f"CUST-{i:06d}" for i in range(300)])
    prepare_partners(_job(tmp_path, data))
    raw = (tmp_path / "homes" / "placements.db").read_bytes()
    assert raw.count(b"partner_") >= 300 and b"CUST-" not in raw  # one row per customer, no raw id
    assert oct((tmp_path / "homes" / "placements.key").stat().st_mode & 0o777) == "0o600"


def test_a_column_named_like_the_usual_label_is_not_taken_when_another_looks_like_the_target(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    data = _file(
        tmp_path / "marketing.csv", rows=300, default=rng.integers(0, 2, 300), y=rng.integers(0, 2, 300)
    )
    pd.read_csv(data).drop(columns=["defaulted"]).to_csv(data, index=False)
    with pytest.raises(ConfigError, match="--label"):
        load_partitions("repayment", str(data), 2)
    spec, _ = load_partitions("repayment", str(data), 2, label="y")
    assert spec.label == "y" and "default" in spec.columns()


def test_a_guessed_label_is_announced(tmp_path: Path) -> None:
    data = _file(tmp_path / "customers.csv", rows=300)
    notices: list[str] = []
    load_partitions("repayment", str(data), 2, notices=notices)
    assert notices and "label column guessed: 'defaulted'" in notices[0]
    notices.clear()
    load_partitions("repayment", str(data), 2, label="defaulted", notices=notices)
    assert not any("label column guessed" in n for n in notices)


def test_homes_from_older_versions_compose_their_per_dataset_budgets_as_one(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "p", "p")
    home.config_path.write_text(
        'name = "p"\n\n[budgets.loans]\nepsilon = 3.0\ndelta = 1e-05\n\n'
        "[budgets.loans_copy]\nepsilon = 5.0\ndelta = 1e-06\n"
    )
    config = home.config()
    assert config.budget_for("anything") == DatasetBudget(3.0, 1e-6)  # the most restrictive of them
    budget, notice = home.ensure_budget(DatasetBudget(3.0, 1e-6))
    assert notice is None and "[budget]" in home.config_path.read_text()
    assert "[budgets." not in home.config_path.read_text()


def test_a_home_without_budget_says_how_to_set_one(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "p", "p")
    with pytest.raises(ConfigError, match="fedcustomer budget set"):
        home.config().budget_for("loans")


def test_homes_dir_default_is_inside_the_run(tmp_path: Path) -> None:
    job = JobConfig(out=str(tmp_path / "r"))
    assert homes_dir(job) == tmp_path / "r" / "partners"


def test_sources_that_hold_one_person_at_several_partners_keep_them_there(tmp_path: Path) -> None:
    """The generated federation, like real banks, can hold a customer at two partners: that is the data, not a split."""
    job = JobConfig(data="synthetic", partners=3, out=str(tmp_path / "r"), homes=str(tmp_path / "homes"))
    _, homes = prepare_partners(job)
    before = [_store_rows(h, "bank") for h in homes]
    notices: list[str] = []
    prepare_partners(
        JobConfig(
            data="synthetic", partners=3, out=str(tmp_path / "r"), homes=str(tmp_path / "homes"), seed=0
        ),
        notices,
    )
    assert [_store_rows(h, "bank") for h in homes] == before and not notices
