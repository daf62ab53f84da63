"""Provisioning simulated homes: one schema for a federation cut from one source, each home its own keys."""

from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.data.provision import provision_partner, schema_for, shared_schema
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.datasets import HOLDOUT
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.toy import SPEC, toy_frame

BUDGET = DatasetBudget(3.0, 1e-5)


def _parts(n: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    parts = []
    for i in range(n):
        train, test = toy_frame(12, i), toy_frame(4, 100 + i)
        train["customer_id"] = f"p{i}-" + train["customer_id"]
        test["customer_id"] = f"p{i}-t" + test["customer_id"]
        parts.append((train, test))
    return parts


def _provision(root: Path, name: str, train, test, **kw):
    return provision_partner(
        root / name,
        name,
        source="toy.csv",
        task="repayment",
        spec=SPEC,
        train=train,
        test=test,
        budget=BUDGET,
        **kw,
    )


def test_the_shared_schema_is_drafted_from_every_partners_rows(tmp_path: Path) -> None:
    parts = _parts(3)
    # partner 0's x1 holds whole numbers only: drafted alone it would be an integer field, and
    # the other partners' rows (decimals) would then be quarantined against its schema
    parts[0][0]["x1"] = parts[0][0]["x1"].round().astype(int)
    parts[0][1]["x1"] = parts[0][1]["x1"].round().astype(int)
    alone = schema_for("toy.csv", "repayment", SPEC, pd.concat(parts[0]).assign(**{HOLDOUT: 0}), tmp_path)
    shared = shared_schema("toy.csv", "repayment", SPEC, parts, tmp_path)
    assert shared is not None
    assert alone.field("x1").type == "integer" and shared.field("x1").type == "float"
    assert shared.names[-1] == HOLDOUT and shared.id_field.name == "customer_id"


def test_partners_with_other_columns_draft_their_own(tmp_path: Path) -> None:
    parts = _parts(2)
    parts[1] = (parts[1][0].assign(extra=1), parts[1][1].assign(extra=1))
    assert shared_schema("toy.csv", "repayment", SPEC, parts, tmp_path) is None
    assert shared_schema("toy.csv", "repayment", SPEC, [], tmp_path) is None


def test_homes_given_one_schema_store_it_and_keep_their_own_keys(tmp_path: Path) -> None:
    parts = _parts(3)
    schema = shared_schema("toy.csv", "repayment", SPEC, parts, tmp_path)
    homes = []
    for i, (train, test) in enumerate(parts):
        home, report = _provision(tmp_path, f"p{i}", train, test, schema=schema)
        assert report is not None and report.invalid == 0 and report.inserted == len(train) + len(test)
        homes.append(home)
    keys = {(h.keys_dir / name).read_bytes() for h in homes for name in ("keyring.json", "pseudonym.key")}
    assert len(keys) == 6  # no home shares a key with another
    for home in homes:
        with PartnerStore.open(home) as store:
            assert store.schema("toy").structure() == schema.structure()
            assert store.count("toy") == 16


def test_an_existing_store_keeps_drafting_from_its_own_rows(tmp_path: Path) -> None:
    (train, test), other = _parts(2)
    train["x1"], test["x1"] = train["x1"].round().astype(int), test["x1"].round().astype(int)
    _provision(tmp_path, "p0", train, test)
    with PartnerStore.open(tmp_path / "p0") as store:
        assert store.schema("toy").field("x1").type == "integer"
    # a later job with a shared schema (x1 float) must not change the stored layout: no SchemaError
    shared = shared_schema("toy.csv", "repayment", SPEC, [(train, test), other], tmp_path)
    assert shared is not None and shared.field("x1").type == "float"
    more = toy_frame(3, 7).assign(customer_id=["n1", "n2", "n3"])
    more["x1"] = more["x1"].round().astype(int)
    _, report = _provision(tmp_path, "p0", pd.concat([train, more], ignore_index=True), test, schema=shared)
    assert report is not None and report.inserted == 3
    with PartnerStore.open(tmp_path / "p0") as store:
        assert store.schema("toy").field("x1").type == "integer"


def _datasets():
    from fedcustomer.data.partition import PartnerDataset

    return [PartnerDataset(f"p{i}", "partner", tr, te) for i, (tr, te) in enumerate(_parts(4))]


def test_the_split_check_encodes_good_partners_together() -> None:
    from fedcustomer.data.sources import _check_partners

    _check_partners(SPEC, _datasets())  # nothing raised


def test_a_partner_that_does_not_encode_is_still_named() -> None:
    from fedcustomer.data.sources import _check_partners
    from fedcustomer.errors import DataError

    parts = _datasets()
    parts[2].test.loc[1, "defaulted"] = 7
    with pytest.raises(
        DataError,
        match=r"partner 'p2' \(test split; its row numbers count that split's rows, not the file's\): "
        r"label column 'defaulted' must be a 0/1",
    ):
        _check_partners(SPEC, parts)
