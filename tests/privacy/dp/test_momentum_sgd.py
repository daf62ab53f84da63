"""MomentumSGD: torch's SGD with momentum, operation for operation, without importing the compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fedcustomer.privacy.dp.momentum_sgd import MomentumSGD


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_weights_are_bit_identical_to_torch_sgd(momentum: float) -> None:
    ours, ref = _model(0), _model(0)
    opt, ref_opt = (
        MomentumSGD(ours.parameters(), lr=0.3, momentum=momentum),
        torch.optim.SGD(ref.parameters(), lr=0.3, momentum=momentum),
    )
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        X, y = torch.randn(16, 6, generator=gen), torch.randn(16, 1, generator=gen)
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=step % 2 == 0)
            nn.functional.mse_loss(model(X), y).backward()
            if step == 3:  # a parameter without a gradient is skipped, as torch does
                model[0].bias.grad = None
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        MomentumSGD([], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError):
        MomentumSGD(_model(0).parameters(), lr=-1.0, momentum=0.9)


def test_a_dp_sgd_epoch_does_not_import_torch_dynamo() -> None:
    """The import it avoids costs about a second in a partner's first round: check it stays out."""
    code = textwrap.dedent(
        """
        import sys, torch
        from torch import nn
        from fedcustomer.privacy.dp.dpsgd import DPTrainer, PlainTrainer
        X = torch.randn(64, 4); y = (torch.rand(64, 1) > 0.5).float()
        for make in (
            lambda m: DPTrainer(m, X, y, nn.BCEWithLogitsLoss(), batch_size=16, lr=0.5,
                                noise_multiplier=1.0, max_grad_norm=1.0, proximal_mu=0.1),
            lambda m: PlainTrainer(m, X, y, nn.BCEWithLogitsLoss(), batch_size=16, lr=0.5),
        ):
            make(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))).train_epoch()
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True
    )
    assert out.stdout.strip() == "False", out.stderr
