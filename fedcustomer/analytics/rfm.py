"""RFM scoring and named segments, computed inside each partner.

Scores 1..5 come from *declared* cut points (four edges per dimension), published with
the query like a marketing standard. Because the edges do not depend on anyone's data,
each customer's segment depends on that customer alone, so segment sizes and spends
have sensitivity 1 per customer and the DP guarantee holds as stated. Cut points taken
from a partner's own quintiles would let one customer move the edges and with them
many others' segments: the release would no longer be DP at the stated epsilon. That
option is therefore not offered; to adapt edges to the data, release a DP quantiles
query first (it is charged) and declare its answer as the edges.

Segments (a partition, so each customer is in exactly one):
    champions   R >= 4 and F >= 4          loyal        R >= 3 and F >= 3 (otherwise)
    new         R >= 4 and F <= 2          promising    R == 3 and F <= 2
    at_risk     R <= 2 and F >= 3          hibernating  R <= 2 and F <= 2
Monetary is scored too (reported per customer) and is the spend averaged per segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.errors import ConfigError

SEGMENTS: tuple[str, ...] = ("champions", "loyal", "new", "promising", "at_risk", "hibernating")
SEGMENT_FIELD = "segment"


@dataclass(frozen=True)
class RFMConfig:
    """Which fields hold recency (smaller = more recent), frequency and monetary, and their edges."""

    recency: str
    frequency: str
    monetary: str
    recency_edges: tuple[float, float, float, float]
    frequency_edges: tuple[float, float, float, float]
    monetary_edges: tuple[float, float, float, float]
    monetary_upper: float  # clamp for spend sums (declared, public)

    def __post_init__(self) -> None:
        for name in ("recency_edges", "frequency_edges", "monetary_edges"):
            edges = getattr(self, name)
            if len(edges) != 4 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ConfigError(f"rfm {name} must be 4 strictly increasing numbers, got {list(edges)}")
        if not self.monetary_upper > 0:
            raise ConfigError(f"rfm monetary_upper must be > 0, got {self.monetary_upper}")

    @property
    def fields(self) -> list[str]:
        return [self.recency, self.frequency, self.monetary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recency": self.recency,
            "frequency": self.frequency,
            "monetary": self.monetary,
            "recency_edges": list(self.recency_edges),
            "frequency_edges": list(self.frequency_edges),
            "monetary_edges": list(self.monetary_edges),
            "monetary_upper": self.monetary_upper,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "rfm") -> RFMConfig:
        if isinstance(raw, str):
            if raw not in PRESETS:
                raise ConfigError(f"{where}: unknown RFM preset {raw!r}; presets: {', '.join(PRESETS)}")
            return PRESETS[raw]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a preset name or a mapping")
        need = (
            "recency",
            "frequency",
            "monetary",
            "recency_edges",
            "frequency_edges",
            "monetary_edges",
            "monetary_upper",
        )
        missing = [k for k in need if k not in raw]
        unknown = [k for k in raw if k not in need]
        if missing or unknown:
            raise ConfigError(f"{where}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}")
        try:
            return cls(
                str(raw["recency"]),
                str(raw["frequency"]),
                str(raw["monetary"]),
                tuple(float(v) for v in raw["recency_edges"]),  # type: ignore[arg-type]
                tuple(float(v) for v in raw["frequency_edges"]),  # type: ignore[arg-type]
                tuple(float(v) for v in raw["monetary_edges"]),  # type: ignore[arg-type]
                float(raw["monetary_upper"]),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: edges and monetary_upper must be numbers ({exc})") from None


# Declared edges for the bundled data: round numbers near published retail RFM practice.
SYNTHETIC_RETAILER = RFMConfig(
    "recency_days",
    "frequency_12m",
    "monetary_12m",
    (15, 40, 80, 180),
    (1, 3, 4, 6),
    (35, 80, 150, 300),
    1000.0,
)
# CDNOW (39-week calibration): days since last purchase, repeat purchase days, dollars.
CDNOW = RFMConfig(
    "days_since_last",
    "frequency",
    "monetary",
    (30, 90, 150, 210),
    (1, 2, 3, 5),
    (20, 40, 80, 160),
    1000.0,
)
PRESETS: dict[str, RFMConfig] = {"synthetic": SYNTHETIC_RETAILER, "cdnow": CDNOW}


def scores(frame: pd.DataFrame, config: RFMConfig) -> pd.DataFrame:
    """R, F, M scores 1..5 per row (NaN where the input is missing)."""
    missing = [c for c in config.fields if c not in frame.columns]
    if missing:
        raise ConfigError(f"RFM needs column(s) {', '.join(missing)} in the partner's data")
    out = {}
    for key, col, edges, invert in (
        ("R", config.recency, config.recency_edges, True),
        ("F", config.frequency, config.frequency_edges, False),
        ("M", config.monetary, config.monetary_edges, False),
    ):
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        s = 1 + np.searchsorted(np.asarray(edges, dtype=float), values, side="right").astype(float)
        s = 6 - s if invert else s
        s[np.isnan(values)] = np.nan
        out[key] = s
    return pd.DataFrame(out, index=frame.index)


def segment(frame: pd.DataFrame, config: RFMConfig) -> pd.Series:
    """Named segment per row (None where recency or frequency is missing)."""
    sc = scores(frame, config)
    r, f = sc["R"].to_numpy(), sc["F"].to_numpy()
    labels = np.select(
        [
            (r >= 4) & (f >= 4),
            (r >= 3) & (f >= 3),
            (r >= 4) & (f <= 2),
            (r == 3) & (f <= 2),
            (r <= 2) & (f >= 3),
            (r <= 2) & (f <= 2),
        ],
        list(SEGMENTS),
        default="",
    )
    result = pd.Series(labels, index=frame.index, dtype=object)
    result[result == ""] = None
    return result
