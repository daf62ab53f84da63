"""Vertical data helpers: who plays which role, the shared split, and the saved alignment."""

import json
import stat
from pathlib import Path

import numpy as np
import pytest

from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC
from fedcustomer.errors import DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.vertical.data import (
    ACTIVE,
    PASSIVE,
    UCI_BANK,
    UCI_RETAILER,
    alignment_path,
    load_party_table,
    plan_parties,
    private_intersection,
    save_pseudonym_alignment,
    split_positions,
)
from fedcustomer.vertical.job import VerticalJob


def test_the_bank_owns_the_label_for_repayment_and_the_retailer_for_clv() -> None:
    active, passive = plan_parties(VerticalJob(task="repayment"))
    assert (active.name, active.role, active.dataset, active.spec) == ("bank", ACTIVE, "bank", REPAYMENT_SPEC)
    assert (passive.name, passive.role, passive.spec) == ("retailer", PASSIVE, CLV_SPEC)
    active, passive = plan_parties(VerticalJob(task="clv"))
    assert (active.name, active.role, active.provision_task) == ("retailer", ACTIVE, "clv")
    assert (passive.name, passive.role, passive.provision_task) == ("bank", PASSIVE, "repayment")


def test_uci_columns_are_split_between_the_parties_without_overlap() -> None:
    active, passive = plan_parties(VerticalJob(data="uci-credit"))
    assert [f.name for f in active.spec.features] == UCI_BANK
    assert [f.name for f in passive.spec.features] == UCI_RETAILER
    assert not set(UCI_BANK) & set(UCI_RETAILER)
    assert active.dataset == passive.dataset == "uci_credit" and active.spec.label == "default"


@pytest.mark.parametrize("n, fraction", [(10, 0.25), (101, 0.3), (2, 0.5)])
def test_split_positions_partition_the_aligned_rows_the_same_way_every_time(n: int, fraction: float) -> None:
    train, test = split_positions(n, fraction, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert len(test) == max(1, round(n * fraction))
    assert list(train) == sorted(train) and list(test) == sorted(test)
    again = split_positions(n, fraction, seed=3)
    assert train.tolist() == again[0].tolist() and test.tolist() == again[1].tolist()


def test_split_positions_depend_on_the_seed_and_keep_a_single_row_for_training() -> None:
    assert split_positions(200, 0.25, 1)[1].tolist() != split_positions(200, 0.25, 2)[1].tolist()
    train, test = split_positions(1, 0.5, 0)
    assert train.tolist() == [0] and test.tolist() == []


def test_the_in_process_psi_gives_each_side_its_own_ids_in_one_order() -> None:
    a = ["a1", "a2", "a3", "a4"]
    b = ["a4", "b9", "a2", "a3"]
    ids_a, ids_b, size = private_intersection(a, b)
    assert size == 3 and sorted(ids_a) == ["a2", "a3", "a4"]
    assert ids_a == ids_b  # the same customers, row for row


def test_alignment_files_have_safe_names_and_only_the_owner_reads_them(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(3.0, 1e-5))
    path = alignment_path(home, "bank", "../retail er")
    assert path.parent == home.state_dir / "vertical"
    assert path.name == "alignment-bank-with-.._retail_er.json"
    saved = save_pseudonym_alignment(home, "bank", "retailer", ["p2", "p1"], seed=7)
    assert json.loads(saved.read_text()) == {
        "dataset": "bank",
        "peer": "retailer",
        "pseudonyms": ["p2", "p1"],
        "seed": 7,
    }
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert not list(saved.parent.glob("*.tmp"))


def test_reading_a_party_table_needs_a_non_empty_alignment(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(3.0, 1e-5))
    with pytest.raises(
        DataError, match="partner 'bank' has no PSI alignment with 'retailer' for dataset 'bank'"
    ):
        load_party_table(home, "bank", "bank", "retailer", REPAYMENT_SPEC, with_label=True)
    save_pseudonym_alignment(home, "bank", "retailer", [])
    with pytest.raises(DataError, match="partner 'bank' shares no customers with 'retailer'"):
        load_party_table(home, "bank", "bank", "retailer", REPAYMENT_SPEC, with_label=True)
