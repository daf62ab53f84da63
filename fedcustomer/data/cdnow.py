"""Loader for the CDNOW transaction log, the classic customer-lifetime-value benchmark.

The raw log (one line per purchase) is turned into one row per customer: RFM features
over a calibration period and the spend in the following holdout period as the CLV
label, the set-up used in the BG/NBD literature. Recency, frequency and T follow that
literature's conventions (weeks; frequency counts repeat purchase days), so results can
be compared with published fits.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd

from fedcustomer.data.features import FeatureSpec, NumericFeature
from fedcustomer.errors import ConfigError, DataError

CDNOW_SUBDIR = "cdnow"
CDNOW_FILENAME = "CDNOW_master.txt"
CDNOW_FEATURES = ("frequency", "recency", "tenure_weeks", "monetary", "avg_basket", "cds", "days_since_last")

_WHERE_TO_GET = (
    "get CDNOW_master.txt (the CDNOW data set distributed by Bruce Hardie, also bundled with the Python "
    f"`lifetimes` package under lifetimes/datasets), place it at <data dir>/{CDNOW_SUBDIR}/{CDNOW_FILENAME}, and "
    "pass that data dir with --data-dir or the FEDCUSTOMER_DATA_DIR environment variable"
)


def cdnow_spec(calibration_weeks: int = 39) -> FeatureSpec:
    """Declared bounds follow from the calibration length, not from the data."""
    weeks = float(calibration_weeks)
    return FeatureSpec(
        task="clv",
        label="future_spend",
        id_column="customer_id",
        features=[
            NumericFeature("frequency", 0.0, 4.5, log=True),  # repeat purchase days, up to ~90
            NumericFeature("recency", 0.0, weeks),
            NumericFeature("tenure_weeks", 0.0, weeks),
            NumericFeature("monetary", 0.0, 9.0, log=True),  # calibration spend, up to ~8,000 dollars
            NumericFeature("avg_basket", 0.0, 7.0, log=True),
            NumericFeature("cds", 0.0, 6.0, log=True),
            NumericFeature("days_since_last", 0.0, 7.0 * weeks),
        ],
    )


CDNOW_SPEC = cdnow_spec(39)


def cdnow_path(data_dir: Path) -> Path:
    """Where the loader expects the file under a data directory."""
    return Path(data_dir) / CDNOW_SUBDIR / CDNOW_FILENAME


def read_cdnow_transactions(path: Path) -> pd.DataFrame:
    """Parse the whitespace-separated log; DataError naming the first bad line."""
    path = Path(path)
    if path.is_dir():
        path = cdnow_path(path)
    if not path.is_file():
        raise DataError(f"CDNOW transaction log not found at {path}; {_WHERE_TO_GET}")
    ids: list[str] = []
    days: list[date] = []
    cds: list[int] = []
    dollars: list[float] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file; expected the CDNOW_master.txt transaction log") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if lineno == 1 and fields[0].lower() == "customer_id":
            continue
        if len(fields) != 4:
            raise DataError(
                f"{path}, line {lineno}: expected 4 fields (customer_id date number_of_cds dollar_value), "
                f"found {len(fields)}"
            )
        cid, day, n, value = fields
        if not cid.isdigit():
            raise DataError(f"{path}, line {lineno}: customer_id must be digits")
        try:
            parsed = datetime.strptime(day, "%Y%m%d").date()
        except ValueError:
            raise DataError(f"{path}, line {lineno}: date must be a valid YYYYMMDD date") from None
        try:
            count = int(n)
            amount = float(value)
        except ValueError:
            raise DataError(
                f"{path}, line {lineno}: number_of_cds must be an integer and dollar_value a number"
            ) from None
        if count < 0 or not amount >= 0 or amount == float("inf"):
            raise DataError(f"{path}, line {lineno}: number_of_cds and dollar_value must be non-negative")
        ids.append(cid)
        days.append(parsed)
        cds.append(count)
        dollars.append(amount)
    if not ids:
        raise DataError(f"{path} holds no transactions")
    return pd.DataFrame(
        {"customer_id": ids, "date": pd.to_datetime(days), "number_of_cds": cds, "dollar_value": dollars}
    )


def load_cdnow(path: Path, *, calibration_weeks: int = 39, holdout_weeks: int = 39) -> pd.DataFrame:
    """One row per customer who bought in the calibration period, with ``future_spend`` as label.

    The calibration period starts on the log's first date and lasts ``calibration_weeks``;
    the holdout follows for ``holdout_weeks``. Features (calibration only): ``frequency``
    (repeat purchase days), ``recency`` (weeks from first to last purchase), ``tenure_weeks`` (BG/NBD T: weeks
    from first purchase to the period's last day), ``monetary`` (total dollars),
    ``avg_basket`` (dollars per purchase day), ``cds`` (CDs bought), ``days_since_last``;
    plus ``cohort`` (month of first purchase) for non-IID splits.
    """
    if calibration_weeks < 1 or holdout_weeks < 1:
        raise ConfigError(
            f"calibration and holdout periods must each be at least 1 week, got {calibration_weeks} and {holdout_weeks}"
        )
    tx = read_cdnow_transactions(path)
    start = tx["date"].min()
    cal_end = start + timedelta(weeks=calibration_weeks)  # exclusive
    hold_end = cal_end + timedelta(weeks=holdout_weeks)
    last_cal_day = cal_end - timedelta(days=1)
    last = tx["date"].max()
    if last < cal_end or last + timedelta(weeks=4) < hold_end - timedelta(days=1):
        raise DataError(
            f"the log ends on {last.date()}, well before the end of the {holdout_weeks}-week holdout "
            f"({(hold_end - timedelta(days=1)).date()}); shorten --holdout-weeks or --calibration-weeks"
        )
    cal = tx[tx["date"] < cal_end]
    hold = tx[(tx["date"] >= cal_end) & (tx["date"] < hold_end)]
    # One purchase "day" per customer and date: several log lines the same day are one transaction.
    daily = cal.groupby(["customer_id", "date"], sort=True).agg(
        dollars=("dollar_value", "sum"), cds=("number_of_cds", "sum")
    )
    daily = daily.reset_index()
    per = daily.groupby("customer_id").agg(
        first=("date", "min"),
        last=("date", "max"),
        purchase_days=("date", "size"),
        monetary=("dollars", "sum"),
        cds=("cds", "sum"),
    )
    future = hold.groupby("customer_id")["dollar_value"].sum()
    out = pd.DataFrame(
        {
            "customer_id": per.index.astype(str),
            "cohort": per["first"].dt.strftime("%Y-%m").to_numpy(),
            "frequency": (per["purchase_days"] - 1).to_numpy(),
            "recency": ((per["last"] - per["first"]).dt.days / 7.0).round(4).to_numpy(),
            "tenure_weeks": ((last_cal_day - per["first"]).dt.days / 7.0).round(4).to_numpy(),
            "monetary": per["monetary"].round(2).to_numpy(),
            "avg_basket": (per["monetary"] / per["purchase_days"]).round(2).to_numpy(),
            "cds": per["cds"].to_numpy(),
            "days_since_last": (last_cal_day - per["last"]).dt.days.to_numpy(),
            "future_spend": future.reindex(per.index, fill_value=0.0).round(2).to_numpy(),
        }
    )
    if out.empty:
        raise DataError("no customer bought anything in the calibration period; check the log's dates")
    return out.reset_index(drop=True)
