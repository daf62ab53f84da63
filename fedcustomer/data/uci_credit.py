"""Loader for the UCI "default of credit card clients" data set (Taiwan, 2005).

A public, real repayment benchmark (30,000 card holders, 22.1% defaults) lets the
federated repayment model be compared with published centralised results. The data is
not shipped; the user downloads it and points ``--data-dir`` or ``FEDCUSTOMER_DATA_DIR`` at it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedcustomer.data.features import CategoricalFeature, FeatureSpec, NumericFeature
from fedcustomer.errors import DataError

UCI_SUBDIR = "uci_credit_default"
UCI_FILENAME = "default_of_credit_card_clients.csv"
_PAY = ["PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6"]
_BILL = [f"BILL_AMT{i}" for i in range(1, 7)]
_PAID = [f"PAY_AMT{i}" for i in range(1, 7)]
UCI_COLUMNS = [
    "ID",
    "LIMIT_BAL",
    "SEX",
    "EDUCATION",
    "MARRIAGE",
    "AGE",
    *_PAY,
    *_BILL,
    *_PAID,
    "default payment next month",
]
_RENAME = {c: c.lower() for c in UCI_COLUMNS} | {"default payment next month": "default"}

UCI_SPEC = FeatureSpec(
    task="repayment",
    label="default",
    id_column="id",
    features=[
        NumericFeature("limit_bal", 9.0, 14.0, log=True),  # NT$ 8,000 .. 1,200,000
        CategoricalFeature("sex", ("1", "2")),
        CategoricalFeature("education", ("1", "2", "3", "4")),  # 0, 5, 6 = unknown -> all zeros
        CategoricalFeature("marriage", ("1", "2", "3")),
        NumericFeature("age", 18.0, 80.0),
        *[NumericFeature(c.lower(), -2.0, 9.0) for c in _PAY],  # months of delay; -2/-1 = no use / paid duly
        *[NumericFeature(c.lower(), -13.0, 14.5, log=True) for c in _BILL],  # signed: credits are negative
        *[NumericFeature(c.lower(), 0.0, 14.5, log=True) for c in _PAID],
    ],
)

_STATUS = tuple(str(v) for v in range(-2, 9))  # -2 no use, -1 paid duly, 0 revolving, 1..8 months late

# The encoding chosen for DP training (built-in name ``uci-credit-dp``; benchmarks/RESULTS.md,
# "Features for DP": picked on validation rows, 5 seeds). The latest repayment status one-hot (its
# effect is far from linear), older statuses as 0..3 months late (no use / paid duly / revolving = 0),
# amounts over NT$ 1..1,000,000 in log space with credits as 0, age 20..70. Every bound and category
# comes from the data set's documentation, never from rows, so the DP guarantee is unchanged.
UCI_SPEC_DP = FeatureSpec(
    task="repayment",
    label="default",
    id_column="id",
    features=[
        NumericFeature("limit_bal", 9.0, 14.0, log=True),
        CategoricalFeature("sex", ("1", "2")),
        CategoricalFeature("education", ("1", "2", "3", "4")),
        CategoricalFeature("marriage", ("1", "2", "3")),
        NumericFeature("age", 20.0, 70.0),
        CategoricalFeature("pay_0", _STATUS),
        *[NumericFeature(c.lower(), 0.0, 3.0) for c in _PAY[1:]],
        *[NumericFeature(c.lower(), 0.0, 13.8, log=True) for c in _BILL],
        *[NumericFeature(c.lower(), 0.0, 13.8, log=True) for c in _PAID],
    ],
)

_WHERE_TO_GET = (
    "download dataset 350 'default of credit card clients' from the UCI Machine Learning Repository "
    f"(archive.ics.uci.edu), save it as CSV at <data dir>/{UCI_SUBDIR}/{UCI_FILENAME}, and pass that data dir "
    "with --data-dir or the FEDCUSTOMER_DATA_DIR environment variable"
)


def uci_path(data_dir: Path) -> Path:
    """Where the loader expects the file under a data directory."""
    return Path(data_dir) / UCI_SUBDIR / UCI_FILENAME


def load_uci_credit(path: Path) -> pd.DataFrame:
    """Read the CSV, check every column, and rename to snake_case with the label as ``default``.

    ``path`` may be the CSV itself or a data directory holding ``uci_credit_default/``.
    A copy exported from the original spreadsheet with its extra ``X1..X23, Y`` header
    row is accepted too.
    """
    path = Path(path)
    if path.is_dir():
        path = uci_path(path)
    if not path.is_file():
        raise DataError(f"UCI credit data not found at {path}; {_WHERE_TO_GET}")
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
        header_line = 1
        if "ID" not in frame.columns and len(frame) and "ID" in frame.iloc[0].tolist():
            frame = pd.read_csv(path, dtype=str, skipinitialspace=True, skiprows=1)
            header_line = 2
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in UCI_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: header line {header_line} lacks column(s) {', '.join(missing)}; expected the UCI layout "
            f"{', '.join(UCI_COLUMNS[:6])}, ... , 'default payment next month'"
        )
    if frame.empty:
        raise DataError(f"{path} has a header but no rows")
    out = pd.DataFrame(index=frame.index)
    for col in UCI_COLUMNS:
        values = pd.to_numeric(frame[col].str.strip(), errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            raise DataError(
                f"{path}: column {col!r} has {bad.size} empty or non-numeric value(s), first on line "
                f"{bad[0] + header_line + 1}; the UCI file holds numbers only"
            )
        out[_RENAME[col]] = values.astype("int64") if (values == values.round()).all() else values
    label = out["default"]
    bad = np.flatnonzero(~label.isin([0, 1]).to_numpy())
    if bad.size:
        raise DataError(
            f"{path}: 'default payment next month' must be 0 or 1, but line {bad[0] + header_line + 1} "
            f"(and {bad.size - 1} more) differ"
        )
    dup = out["id"].duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(
            f"{path}: ID on line {first + header_line + 1} repeats an earlier ID; IDs must be unique"
        )
    return out.reset_index(drop=True)
