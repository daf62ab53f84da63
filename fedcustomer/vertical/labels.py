"""The label owner's protected labels: the one release that lets its labels reach the passive party.

Once per job, before anything leaves, every aligned training customer's label is
privatised. Repayment (0/1): randomised response, the label kept with probability
``e^eps_L / (1 + e^eps_L)``, pure ``eps_L``-DP per customer. CLV (log1p spend): clipped to
``[0, label_bound]`` plus Gaussian noise calibrated so the release alone costs ``eps_L`` at
the party's delta (charged in RDP). The label head is trained on these labels and the
passive party's embeddings only, so every gradient returned to the passive party is
post-processing of the protected labels: it carries no more about a customer of the label
owner (label or features) than ``eps_L``, whatever the passive party and the coordinator know
about the batches. Without ``label_dp`` the head trains on the true labels and the returned
gradients carry them unprotected (a comparison setting, never a default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.optimizers.optimizer import _generate_noise

from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.release import Mechanism

LABEL_MECHANISM = "vertical_label_release"


@dataclass(frozen=True)
class LabelRelease:
    """How the label owner protects the labels behind the gradients it returns."""

    mechanism: str  # "randomized_response" | "gaussian"
    epsilon: float
    keep_probability: float | None = None  # randomised response
    noise_std: float | None = None  # Gaussian, in log1p-spend units
    bound: float | None = None

    def cost(self, details: Mapping[str, Any]) -> Mechanism:
        """The ledger charge: one full-batch Gaussian step, or pure ``eps_L`` for randomised response."""
        if self.mechanism == "gaussian":
            assert self.noise_std is not None and self.bound is not None
            steps = GaussianSteps(self.noise_std / self.bound, 1.0, 1)
            return Mechanism(LABEL_MECHANISM, gaussian=steps, details=details)
        return Mechanism(LABEL_MECHANISM, epsilon_delta=(self.epsilon, 0.0), details=details)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def label_release_for(task: str, epsilon: float, delta: float, bound: float) -> LabelRelease:
    """Randomised response for 0/1 labels; Gaussian noise of matching cost for log1p spend."""
    if task == "repayment":
        return LabelRelease(
            "randomized_response", epsilon, keep_probability=math.exp(epsilon) / (1 + math.exp(epsilon))
        )
    sigma = accounting.calibrate_noise(
        [], 1.0, 1, epsilon, delta, sigma_min=0.05, sigma_max=1e4, tolerance=1e-4
    )
    return LabelRelease("gaussian", epsilon, noise_std=sigma * bound, bound=bound)


def protect_labels(
    release: LabelRelease | None, y: torch.Tensor | None, generator: torch.Generator
) -> np.ndarray:
    """The labels the label head learns from: privatised once per job (drawn after they were paid for)."""
    assert y is not None
    y = y.clone()
    if release is None:  # no DP, or labels deliberately unprotected
        return y.numpy()
    if release.mechanism == "randomized_response":
        assert release.keep_probability is not None
        keep = torch.rand(len(y), generator=generator, dtype=torch.float64) < release.keep_probability
        return torch.where(keep, y, 1 - y).numpy()
    assert release.bound is not None and release.noise_std is not None
    clipped = y.clamp(0.0, release.bound)
    return (clipped + _generate_noise(release.noise_std, clipped, generator, True)).numpy()
