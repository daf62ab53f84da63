"""How a partner node reaches its own customer data for federated work.

Training reads only the columns its feature spec names; nothing else of the
partner's data is loaded into the training process.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedcustomer.clients.home import PartnerHome
from fedcustomer.errors import DataError
from fedcustomer.models.features import FeatureSpec


class PartnerDataAccess:
    """Reads a partner dataset's train or test split as a DataFrame of the spec's columns."""

    def __init__(self, home: PartnerHome) -> None:
        self.home = home

    def split_path(self, dataset: str, split: str) -> Path:
        return self.home.root / "data" / f"{_slug(dataset)}-{split}.parquet"

    def write_split(self, dataset: str, split: str, frame: pd.DataFrame) -> Path:
        """Place a partner's split in its home (used when setting up a simulated partner)."""
        path = self.split_path(dataset, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        return path

    def training_frame(self, dataset: str, spec: FeatureSpec, split: str) -> pd.DataFrame:
        path = self.split_path(dataset, split)
        if not path.exists():
            raise DataError(f"partner home {self.home.root} holds no {split} data for dataset {dataset!r}")
        frame = pd.read_parquet(path)
        missing = [c for c in spec.columns() if c not in frame.columns]
        if missing:
            raise DataError(f"dataset {dataset!r} at this partner lacks column(s) {', '.join(missing)}")
        return frame[spec.columns()]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
