"""Centralised reference models on the pooled partner splits.

Pooling raw records is exactly what the product avoids; these baselines exist only
to tell a data scientist what federation and DP cost, on data they may pool (public
or synthetic). Same architecture, same splits, same epochs as the federated job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.partition import PartnerDataset
from fedcustomer.models.clv import CLVTarget
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.registry import build_model, loss_for
from fedcustomer.privacy.dp.accounting import GaussianSteps, calibrate_noise, epsilon


@dataclass(frozen=True)
class BaselineResult:
    name: str
    metrics: dict[str, float]
    epsilon: float | None
    noise_multiplier: float | None
    train_rows: int
    test_rows: int


def pooled(datasets: Sequence[PartnerDataset]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        pd.concat([d.train for d in datasets], ignore_index=True),
        pd.concat([d.test for d in datasets], ignore_index=True),
    )


def train_centralised(
    spec: FeatureSpec,
    datasets: Sequence[PartnerDataset],
    *,
    arch: str = "mlp",
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 0.1,
    optimizer: str = "sgd",
    dp: bool = False,
    epsilon_target: float = 3.0,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    clipping: str = "fast",
    seed: int = 0,
    clv_target: CLVTarget | None = None,
) -> BaselineResult:
    """Train on the pooled train splits, evaluate on the pooled test splits.

    CLV learns ``clv_target`` (default: the federated jobs' default target), so the
    centralised reference and a federated job learn the same thing.
    """
    from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer

    target = (clv_target or CLVTarget()) if spec.task == "clv" else None
    train, test = pooled(datasets)
    X, y = spec.transform(train)
    Xte, yte = spec.transform(test)
    model = build_model(spec.task, arch, spec.input_dim, seed=seed)
    bs = min(batch_size, len(X))
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    sigma: float | None = None
    eps: float | None = None
    if dp:
        q = bs / len(X)
        steps = int(1 / q) * epochs
        sigma = calibrate_noise([], q, steps, epsilon_target * (1 - 1e-9), delta)
        trainer = DPTrainer(
            model,
            Xt,
            yt,
            loss_for(spec.task, target),
            batch_size=bs,
            lr=lr,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            optimizer=optimizer,
            clipping=clipping,
        )
        eps = epsilon([GaussianSteps(sigma, q, steps)], delta)
    else:
        trainer = PlainTrainer(
            model, Xt, yt, loss_for(spec.task, target), batch_size=bs, lr=lr, optimizer=optimizer, seed=seed
        )
    for _ in range(epochs):
        trainer.train_epoch()
    metrics = evaluate(trainer.model, Xte, yte, spec.task, target)
    name = f"centralised {'DP' if dp else 'non-private'} {arch}"
    return BaselineResult(name, {k: float(v) for k, v in metrics.items()}, eps, sigma, len(X), len(Xte))


def gradient_boosting(spec: FeatureSpec, datasets: Sequence[PartnerDataset], seed: int = 0) -> BaselineResult:
    """Histogram gradient boosting on the pooled data: the strong tabular reference."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from fedcustomer.models.metrics import classification_metrics, regression_metrics

    train, test = pooled(datasets)
    X, y = spec.transform(train)
    Xte, yte = spec.transform(test)
    if spec.task == "repayment":
        clf = HistGradientBoostingClassifier(random_state=seed).fit(X, y)
        metrics = classification_metrics(yte, clf.predict_proba(Xte)[:, 1])
    else:
        reg = HistGradientBoostingRegressor(random_state=seed).fit(X, y)
        metrics = regression_metrics(np.expm1(yte), np.expm1(np.clip(reg.predict(Xte), 0, None)))
    return BaselineResult("centralised gradient boosting", metrics, None, None, len(X), len(Xte))
