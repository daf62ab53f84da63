"""The runner's pure helpers: keeping an earlier alignment's order, or refusing what would move the split."""

import json
from pathlib import Path

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.vertical.align import _saved
from fedcustomer.vertical.align import onto_earlier as _onto_earlier


def test_no_saved_alignment_is_refused_and_a_saved_one_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "alignment.json"
    with pytest.raises(ConfigError, match="does not have"):
        _saved(path)
    doc = {"dataset": "bank", "peer": "retailer", "pseudonyms": ["p1", "p2"], "seed": 0}
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert _saved(path) == doc


def test_the_same_customers_keep_the_earlier_order(tmp_path: Path) -> None:
    saved = {"pseudonyms": ["p3", "p1", "p2"], "seed": 4}
    assert _onto_earlier(["p1", "p2", "p3"], saved, tmp_path, seed=4) == ["p3", "p1", "p2"]
    assert _onto_earlier(["p2", "p3", "p1"], {"pseudonyms": ["p3", "p1", "p2"]}, tmp_path, seed=9) == [
        "p3",
        "p1",
        "p2",
    ]  # an alignment saved without a seed accepts any
    assert _onto_earlier(["p1"], {"pseudonyms": ["p1"], "seed": 4}, tmp_path, seed=None) == ["p1"]


def test_another_seed_is_refused_naming_the_saved_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _onto_earlier(["p1"], {"pseudonyms": ["p1"], "seed": 4}, tmp_path / "homes", seed=5)
    message = str(err.value)
    assert f"the homes in {tmp_path / 'homes'} drew their vertical held-out split with --seed 4" in message
    assert "Use the same --seed, or a new --homes directory" in message


@pytest.mark.parametrize(
    "new, old",
    [
        (["p1", "p2", "p4"], ["p1", "p2", "p3"]),  # a customer replaced
        (["p1", "p2"], ["p1", "p2", "p3"]),  # a customer gone (erased)
        (["p1", "p2", "p3", "p4"], ["p1", "p2", "p3"]),  # a customer more
        (["p1", "p1"], ["p1", "p1"]),  # duplicates can never be one order
        (["p1", "p2"], ["p1", None]),  # an erased pseudonym in the saved order
    ],
)
def test_a_changed_set_of_shared_customers_is_refused(tmp_path: Path, new: list, old: list) -> None:
    with pytest.raises(
        ConfigError, match="the customers the parties share changed since the first vertical job"
    ):
        _onto_earlier(new, {"pseudonyms": old, "seed": 0}, tmp_path, seed=0)
