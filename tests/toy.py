"""A tiny learnable repayment problem shared by the training tests (two features, known signal)."""

import numpy as np
import pandas as pd

from fedcustomer.data.features import FeatureSpec, NumericFeature

SPEC = FeatureSpec(
    task="repayment",
    label="defaulted",
    id_column="customer_id",
    features=[NumericFeature("x1", -4, 4), NumericFeature("x2", -4, 4)],
)


def toy_frame(n: int, seed: int, *, strength: float = 1.0) -> pd.DataFrame:
    """Customers whose default probability is a logistic function of x1 and x2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    p = 1 / (1 + np.exp(-strength * (2.0 * x[:, 0] - 1.5 * x[:, 1])))
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "x1": x[:, 0],
            "x2": x[:, 1],
            "defaulted": (rng.random(n) < p).astype(int),
        }
    )
