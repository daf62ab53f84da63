"""UCI credit and CDNOW loaders on small generated files, and the load_partitions entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcustomer.data.cdnow import CDNOW_SPEC, cdnow_path, load_cdnow, read_cdnow_transactions
from fedcustomer.data.sources import DATA_DIR_ENV, load_partitions
from fedcustomer.data.uci_credit import UCI_COLUMNS, UCI_SPEC, load_uci_credit, uci_path
from fedcustomer.errors import ConfigError, DataError


# ------------------------------------------------------------------ small files in the real formats
def uci_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pay = rng.integers(-2, 4, (n, 6))
    data = {
        "ID": np.arange(1, n + 1),
        "LIMIT_BAL": rng.integers(1, 50, n) * 10000,
        "SEX": rng.integers(1, 3, n),
        "EDUCATION": rng.choice([1, 2, 3, 4], n, p=[0.35, 0.45, 0.15, 0.05]),
        "MARRIAGE": rng.integers(1, 4, n),
        "AGE": rng.integers(21, 70, n),
    }
    for i, c in enumerate(["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]):
        data[c] = pay[:, i]
    for i in range(1, 7):
        data[f"BILL_AMT{i}"] = rng.integers(-2000, 200000, n)
    for i in range(1, 7):
        data[f"PAY_AMT{i}"] = rng.integers(0, 20000, n)
    p = 1 / (1 + np.exp(-(-1.6 + 0.8 * pay[:, 0])))
    data["default payment next month"] = (rng.random(n) < p).astype(int)
    return pd.DataFrame(data)[UCI_COLUMNS]


def write_uci(root: Path, frame: pd.DataFrame | None = None) -> Path:
    path = uci_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    (uci_frame() if frame is None else frame).to_csv(path, index=False)
    return path


CDNOW_LINES = [
    " customer_id  date number_of_cds  dollar_value",
    " 00001 19970101  1   11.77",  # one purchase, nothing later
    " 00002 19970112  1   12.00",
    " 00002 19970112  5   77.00",  # same day: one transaction of 6 CDs, 89.00
    " 00002 19970301  2   20.00",
    " 00002 19971015  1   15.50",  # holdout
    " 00003 19970220  3   30.00",
    " 00003 19980101  2   25.00",  # holdout
    " 00003 19980705  1   10.00",  # after the 39-week holdout (ends 1998-06-30): ignored
    " 00004 19970301  1   10.00",
]


def write_cdnow(root: Path, lines: list[str] = CDNOW_LINES) -> Path:
    path = cdnow_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ UCI
def test_uci_loader_renames_to_snake_case_with_default_label(tmp_path):
    path = write_uci(tmp_path)
    df = load_uci_credit(path)
    assert len(df) == 400
    assert "default" in df.columns and "limit_bal" in df.columns and "pay_0" in df.columns
    assert df["default"].isin([0, 1]).all()
    assert load_uci_credit(tmp_path).equals(df)  # the data dir works as well as the file
    x, y = UCI_SPEC.transform(df)
    assert x.shape == (400, UCI_SPEC.input_dim) and np.all((x >= 0) & (x <= 1))
    np.testing.assert_array_equal(y, df["default"].to_numpy())


def test_uci_loader_accepts_spreadsheet_export_with_extra_header_row(tmp_path):
    df = uci_frame(20)
    path = tmp_path / "export.csv"
    x_header = ",".join([""] + [f"X{i}" for i in range(1, 24)] + ["Y"])
    path.write_text(x_header + "\n" + df.to_csv(index=False))
    assert len(load_uci_credit(path)) == 20


def test_uci_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_uci_credit(tmp_path / "nowhere.csv")
    message = str(info.value)
    assert "UCI Machine Learning Repository" in message and "350" in message
    assert "FEDCUSTOMER_DATA_DIR" in message and "--data-dir" in message


def test_uci_non_numeric_cell_reports_line_number(tmp_path):
    df = uci_frame(10).astype(object)
    df.loc[4, "AGE"] = "forty"
    path = write_uci(tmp_path, df)
    with pytest.raises(DataError, match=r"'AGE'.*line 6"):  # header is line 1, row index 4 is line 6
        load_uci_credit(path)


def test_uci_bad_label_and_missing_column_and_duplicate_id(tmp_path):
    df = uci_frame(10)
    df.loc[2, "default payment next month"] = 2
    with pytest.raises(DataError, match="must be 0 or 1.*line 4"):
        load_uci_credit(write_uci(tmp_path / "a", df))
    with pytest.raises(DataError, match="PAY_AMT6"):
        load_uci_credit(write_uci(tmp_path / "b", uci_frame(10).drop(columns="PAY_AMT6")))
    dup = uci_frame(10)
    dup.loc[3, "ID"] = 1
    with pytest.raises(DataError, match="line 5.*unique"):
        load_uci_credit(write_uci(tmp_path / "c", dup))


# ------------------------------------------------------------------ CDNOW
def test_cdnow_features_match_hand_computation(tmp_path):
    df = load_cdnow(write_cdnow(tmp_path)).set_index("customer_id")
    assert list(df.index) == ["00001", "00002", "00003", "00004"]
    # calibration = 1997-01-01 .. 1997-09-30; holdout = 1997-10-01 .. 1998-06-30
    c2 = df.loc["00002"]
    assert c2.frequency == 1  # two purchase days: Jan 12 (two lines) and Mar 1
    assert c2.recency == pytest.approx(48 / 7, abs=1e-3)
    assert c2["tenure_weeks"] == pytest.approx(261 / 7, abs=1e-3)  # Jan 12 -> Sep 30
    assert c2.monetary == pytest.approx(109.0) and c2.avg_basket == pytest.approx(54.5) and c2.cds == 8
    assert c2.days_since_last == 213 and c2.future_spend == pytest.approx(15.5)
    assert df.loc["00003", "future_spend"] == pytest.approx(25.0)
    assert df.loc["00001", "future_spend"] == 0.0 and df.loc["00001", "frequency"] == 0
    assert df.loc["00001", "tenure_weeks"] == pytest.approx(272 / 7, abs=1e-3)
    assert list(df.cohort) == ["1997-01", "1997-01", "1997-02", "1997-03"]
    x, y = CDNOW_SPEC.transform(df.reset_index())
    assert x.shape == (4, CDNOW_SPEC.input_dim) and np.all((x >= 0) & (x <= 1))
    np.testing.assert_allclose(y, np.log1p(df.future_spend.to_numpy()), rtol=1e-6)


def test_cdnow_holdout_window_is_exclusive_of_later_purchases(tmp_path):
    df = load_cdnow(write_cdnow(tmp_path), calibration_weeks=39, holdout_weeks=12).set_index("customer_id")
    assert df.loc["00003", "future_spend"] == 0.0  # 1998-01-01 falls after a 12-week holdout (to 1997-12-23)
    assert df.loc["00002", "future_spend"] == pytest.approx(15.5)


def test_cdnow_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_cdnow(tmp_path)
    message = str(info.value)
    assert "Bruce Hardie" in message and "lifetimes" in message and "FEDCUSTOMER_DATA_DIR" in message


@pytest.mark.parametrize(
    "bad_line, match",
    [
        (" 00005 19970101  1", "line 4: expected 4 fields"),
        (" 00005 19971301  1  3.00", "line 4: date"),
        (" 00005 19970101  x  3.00", "line 4: number_of_cds"),
        (" 00005 19970101  1  -3.00", "line 4: .*non-negative"),
        (" ab005 19970101  1  3.00", "line 4: customer_id"),
    ],
)
def test_cdnow_malformed_line_is_reported_by_number(tmp_path, bad_line, match):
    lines = CDNOW_LINES[:3] + [bad_line] + CDNOW_LINES[3:]
    with pytest.raises(DataError, match=match):
        read_cdnow_transactions(write_cdnow(tmp_path, lines))


def test_cdnow_log_too_short_for_holdout_is_rejected(tmp_path):
    with pytest.raises(DataError, match="holdout"):
        load_cdnow(write_cdnow(tmp_path, CDNOW_LINES[:5]))  # ends 1997-03-01: no holdout at all
    with pytest.raises(DataError, match="holdout"):
        load_cdnow(write_cdnow(tmp_path), holdout_weeks=60)
    with pytest.raises(ConfigError):
        load_cdnow(write_cdnow(tmp_path), calibration_weeks=0)


# ------------------------------------------------------------------ load_partitions
def test_synthetic_repayment_gives_banks_and_clv_gives_retailers():
    spec, banks = load_partitions("repayment", "synthetic", 3, seed=1)
    assert spec.label == "defaulted" and [p.kind for p in banks] == ["bank"] * 3
    spec, shops = load_partitions("clv", "synthetic", 2, seed=1)
    assert spec.label == "future_spend" and [p.kind for p in shops] == ["retailer"] * 2


def test_uci_source_reads_data_dir_or_environment(tmp_path, monkeypatch):
    write_uci(tmp_path)
    spec, partners = load_partitions("repayment", "uci-credit", 3, data_dir=tmp_path)
    assert spec is UCI_SPEC and sum(p.size for p in partners) == 400
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    _, again = load_partitions("repayment", "uci-credit", 3)
    pd.testing.assert_frame_equal(again[0].train, partners[0].train)
    monkeypatch.delenv(DATA_DIR_ENV)
    import fedcustomer.data.sources as sources

    monkeypatch.setattr(sources, "default_data_dir", lambda: tmp_path / "no-shipped-folder")
    with pytest.raises(DataError, match=DATA_DIR_ENV):
        load_partitions("repayment", "uci-credit", 3)


def test_uci_non_iid_split_differs_by_education(tmp_path):
    write_uci(tmp_path)
    _, partners = load_partitions("repayment", "uci-credit", 2, split="non-iid", data_dir=tmp_path, seed=0)
    shares = [(pd.concat([p.train, p.test]).education == 2).mean() for p in partners]
    assert abs(shares[0] - shares[1]) > 0.5


def test_cdnow_source_partitions_customers(tmp_path):
    write_cdnow(tmp_path)
    spec, partners = load_partitions("clv", "cdnow", 2, data_dir=tmp_path, test_fraction=0.0)
    assert spec is CDNOW_SPEC and sum(p.size for p in partners) == 4
    _, by_cohort = load_partitions("clv", "cdnow", 2, split="non-iid", data_dir=tmp_path, test_fraction=0.0)
    cohorts = [set(p.train.cohort) for p in by_cohort]
    assert cohorts[0].isdisjoint(cohorts[1])


@pytest.mark.parametrize(
    "args, match",
    [
        (("churn", "synthetic", 2), "unknown task"),
        (("clv", "uci-credit", 2), "repayment task only"),
        (("repayment", "cdnow", 2), "clv task only"),
        (("repayment", "synthetic", 0), "at least 1 partner"),
        (("repayment", "kaggle", 2), "unknown data source"),
    ],
)
def test_bad_source_task_combinations_are_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        load_partitions(*args)


def test_unknown_split_and_wrong_label_are_config_errors():
    with pytest.raises(ConfigError, match="unknown split"):
        load_partitions("repayment", "synthetic", 2, split="by-region")
    with pytest.raises(ConfigError, match="defaulted"):
        load_partitions("repayment", "synthetic", 2, label="target")


def user_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    return pd.DataFrame(
        {
            "customer_id": [f"u{i}" for i in range(n)],
            "a": a,
            "b": rng.normal(size=n),
            "target": (rng.random(n) < 1 / (1 + np.exp(-2 * a))).astype(int),
        }
    )


def test_user_csv_and_parquet_are_split_into_partners(tmp_path):
    table = user_table()
    table.to_csv(tmp_path / "mine.csv", index=False)
    table.to_parquet(tmp_path / "mine.parquet")
    for name in ("mine.csv", "mine.parquet"):
        with pytest.warns(UserWarning, match="declared public bounds"):
            spec, partners = load_partitions("repayment", str(tmp_path / name), 3, label="target")
        assert [f.name for f in spec.features] == ["a", "b"] and spec.id_column == "customer_id"
        assert sum(p.size for p in partners) == 300


def test_user_file_non_iid_is_label_skewed(tmp_path):
    user_table(2000).to_csv(tmp_path / "mine.csv", index=False)
    with pytest.warns(UserWarning):
        _, partners = load_partitions(
            "repayment", str(tmp_path / "mine.csv"), 3, split="non-iid", label="target"
        )
    rates = [pd.concat([p.train, p.test]).target.mean() for p in partners]
    assert max(rates) - min(rates) > 0.1


def test_directory_holds_one_file_per_partner(tmp_path):
    folder = tmp_path / "partners"
    folder.mkdir()
    user_table(120, 1).to_csv(folder / "bank_a.csv", index=False)
    user_table(80, 2).to_parquet(folder / "bank_b.parquet")
    with pytest.warns(UserWarning):
        _, partners = load_partitions("repayment", str(folder), 2, label="target")
    assert [(p.name, p.size) for p in partners] == [("bank_a", 120), ("bank_b", 80)]
    with pytest.raises(ConfigError, match="holds 2 partner file"):
        load_partitions("repayment", str(folder), 3, label="target")


def test_empty_partner_file_is_named(tmp_path):
    folder = tmp_path / "partners"
    folder.mkdir()
    user_table(50).to_csv(folder / "bank_a.csv", index=False)
    user_table(0).to_csv(folder / "bank_b.csv", index=False)
    with pytest.raises(DataError, match="'bank_b'"):
        load_partitions("repayment", str(folder), 2, label="target")


def test_bad_values_in_a_partner_are_reported_with_the_partner(tmp_path):
    table = user_table(60)
    table.to_csv(tmp_path / "mine.csv", index=False)
    table.rename(columns={"target": "outcome"}).to_csv(tmp_path / "unnamed.csv", index=False)
    with pytest.raises(ConfigError, match="--label"):
        load_partitions("clv", str(tmp_path / "unnamed.csv"), 2)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="partner_.*0/1"):
        table.assign(target=table.target * 3).to_csv(tmp_path / "bad.csv", index=False)
        load_partitions("repayment", str(tmp_path / "bad.csv"), 2, label="target")


def test_missing_user_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_partitions("repayment", str(tmp_path / "absent.csv"), 2)


def test_the_dp_encoding_of_uci_credit_is_declared_and_replaces_the_default_on_request(tmp_path):
    from fedcustomer.data.features import NumericFeature
    from fedcustomer.data.sources import load_partitions
    from fedcustomer.data.uci_credit import UCI_SPEC_DP
    from fedcustomer.errors import ConfigError

    write_uci(tmp_path)
    df = load_uci_credit(tmp_path)
    x, _ = UCI_SPEC_DP.transform(df)
    assert x.shape == (400, UCI_SPEC_DP.input_dim) and np.all((x >= 0) & (x <= 1))
    assert "pay_0=1" in UCI_SPEC_DP.encoded_names() and UCI_SPEC_DP.input_dim != UCI_SPEC.input_dim
    spec, partners = load_partitions("repayment", "uci-credit", 2, data_dir=tmp_path, spec=UCI_SPEC_DP)
    assert spec is UCI_SPEC_DP and len(partners) == 2
    default, _ = load_partitions("repayment", "uci-credit", 2, data_dir=tmp_path)
    assert default is UCI_SPEC  # nothing declared: the source's own encoding
    wrong = UCI_SPEC_DP.__class__(
        task="repayment", label="default", id_column="id", features=[NumericFeature("income", 0.0, 1.0)]
    )
    with pytest.raises(ConfigError, match="does not have: \\['income'\\]"):
        load_partitions("repayment", "uci-credit", 2, data_dir=tmp_path, spec=wrong)
