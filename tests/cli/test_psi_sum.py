"""``fedcustomer psi --reveal sum``: a DP rate printed and written with no id in it; bad input exits with
a clear error and leaves both partners' ledgers as they were."""

from __future__ import annotations

import json
import secrets

import pandas as pd
import pytest

from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from tests.cli.cli_runner import run


@pytest.fixture
def setup(tmp_path):
    """A bank file (default flag) and a retailer file (top segment flag) sharing 60 customers."""
    shared = [f"CN{secrets.token_hex(5)}" for _ in range(60)]
    bank_only = [f"CN{secrets.token_hex(5)}" for _ in range(40)]
    shop_only = [f"CN{secrets.token_hex(5)}" for _ in range(30)]
    bank = pd.DataFrame(
        {"customer_id": shared + bank_only, "default": [1] * 30 + [0] * 30 + [1] * 40, "note": "x"}
    )
    shop = pd.DataFrame({"customer_id": shared + shop_only, "top_segment": ["yes"] * 60 + ["no"] * 30})
    pa, pb = tmp_path / "bank.csv", tmp_path / "shop.parquet"
    bank.to_csv(pa, index=False)
    shop.to_parquet(pb, index=False)
    homes = [
        PartnerHome.create(tmp_path / "hb", "bank", budget=DatasetBudget(10.0, 1e-5)),
        PartnerHome.create(tmp_path / "hs", "shop", budget=DatasetBudget(10.0, 1e-5)),
    ]
    base = ["psi", "--a", str(pa), "--b", str(pb), "--reveal", "sum", "--a-home", str(homes[0].root)]
    base += ["--b-home", str(homes[1].root)]
    return base, homes, shared + bank_only + shop_only, pa


def _ledgers(homes) -> list[list[str]]:
    return [
        [c.charge_key for c in h.ledger(d).charges()] for h, d in zip(homes, ("bank", "shop"), strict=True)
    ]


def test_rate_is_printed_written_and_paid_by_both(setup, tmp_path, capsys):
    base, homes, ids, _ = setup
    out = tmp_path / "out"
    args = [*base, "--value", "default", "--where", "top_segment", "--epsilon", "4", "--out", str(out)]
    code, printed, err = run([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(printed)
    assert result == json.loads((out / "psi.json").read_text())
    assert result["reveal"] == "sum" and result["epsilon"] == {"total": 4.0, "count": 2.0, "sum": 2.0}
    assert abs(result["noisy_count"] - 60) <= 12 / 2 and abs(result["rate"] - 0.5) < 0.3
    assert (result["a"]["dataset"], result["b"]["dataset"]) == ("bank", "shop")
    assert "intersection_size" not in result
    for text in (printed, err):
        assert not any(i in text or i.upper() in text for i in ids)
    assert [len(keys) for keys in _ledgers(homes)] == [1, 1]
    # the result names the charge both ledgers paid and the audit entries that logged it
    assert [keys[0] for keys in _ledgers(homes)] == [result["charge_key"]] * 2
    assert result["charge_key"] == f"psi-sum:{result['run_id']}:{result['session']}"
    for home in homes:
        with home.open_audit_log() as log:
            (entry,) = log.query(action="psi_release")
        assert entry.details["charge_key"] == result["charge_key"]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--value", "balance", "--where", "top_segment"], 4, "no column 'balance' for --value"),
        (["--value", "default", "--where", "segment"], 4, "no column 'segment' for --where"),
        (["--value", "note", "--where", "top_segment"], 4, "row 0: not a number"),
        (["--value", "default", "--where", "top_segment", "--epsilon", "0"], 3, "epsilon must be"),
        (["--value", "default"], 3, "needs --value COLUMN"),
        (
            ["--value", "default", "--where", "top_segment", "--max-ids", "95"],
            4,
            "100 ids, more than --max-ids 95",
        ),
        (
            ["--value", "default", "--where", "customer_id"],
            4,
            "--where column 'customer_id', row 0: not a boolean",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_charges_nobody(setup, capsys, extra, code, message):
    base, homes, _, _ = setup
    got, out, err = run([*base, *extra], capsys)
    err = " ".join(err.split())  # the console wraps long lines
    assert got == code and message in err and "Traceback" not in err
    assert _ledgers(homes) == [[], []]


def test_exhausted_budget_exits_6_and_leaves_both_ledgers(setup, capsys):
    base, homes, _, _ = setup
    args = [*base, "--value", "default", "--where", "top_segment", "--epsilon", "6"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)  # 6 + 6 > 10 on both sides
    err = " ".join(err.split())
    assert code == 6 and "would bring epsilon" in err
    assert [len(keys) for keys in _ledgers(homes)] == [1, 1]


def test_sum_options_need_reveal_sum_and_homes(setup, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    base, _, _, pa = setup
    code, _, err = run(["psi", "--a", str(pa), "--b", str(pa), "--value", "default"], capsys)
    assert code == 3 and "go with --reveal sum" in err
    code, _, err = run(
        ["psi", "--a", str(pa), "--b", str(pa), "--reveal", "sum", "--value", "d", "--where", "w"], capsys
    )
    assert code == 3 and "--a-home" in err
    code, _, err = run(["psi", "--a", str(pa), "--b", str(pa), "--reveal", "all"], capsys)
    assert code == 3 and "--reveal must be ids or sum" in err


def test_an_exhausted_budget_names_the_party_that_refused(setup, capsys):
    """Found by a new-user trial: the refusal said "this partner's target" without saying which of the two."""
    base, homes, _, _ = setup
    args = [*base, "--value", "default", "--where", "top_segment", "--epsilon", "6"]
    assert run(args, capsys)[0] == 0
    code, _, err = run(args, capsys)
    err = " ".join(err.split())
    name = homes[0].config().name
    assert code == 6 and f"party a (partner {name!r})" in err
