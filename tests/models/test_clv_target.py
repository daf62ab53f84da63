"""The CLV target: a declared cap, log1p or raw, scaled to [0, 1], and back; the ranking metrics."""

import math

import numpy as np
import pytest
import torch

from fedcustomer.errors import ConfigError
from fedcustomer.models.clv import CLVTarget
from fedcustomer.models.evaluation import evaluate
from fedcustomer.models.metrics import regression_metrics, top_decile_capture
from fedcustomer.models.registry import loss_for


@pytest.mark.parametrize("transform", ["log1p", "raw"])
def test_encode_decode_round_trip_below_the_cap(transform: str) -> None:
    target = CLVTarget(transform=transform, spend_cap=500.0)
    spend = torch.tensor([0.0, 0.5, 12.0, 99.9, 499.0], dtype=torch.float64)
    encoded = target.encode(torch.log1p(spend))
    assert float(encoded.min()) >= 0.0 and float(encoded.max()) <= 1.0
    assert torch.allclose(target.decode(encoded), spend, rtol=1e-9, atol=1e-9)


def test_spend_above_the_cap_is_clipped_and_outputs_stay_in_range() -> None:
    target = CLVTarget(spend_cap=100.0)
    encoded = target.encode(torch.log1p(torch.tensor([100.0, 5000.0])))
    assert encoded.tolist() == pytest.approx([1.0, 1.0])
    decoded = target.decode(torch.tensor([-3.0, 0.0, 2.0]))
    assert decoded.tolist() == pytest.approx([0.0, 0.0, 100.0])


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"transform": "sqrt"}, "--clv-transform"),
        ({"loss": "quantile"}, "--clv-loss"),
        ({"spend_cap": 0.0}, "--clv-spend-cap must be > 0"),
        ({"spend_cap": math.inf}, "--clv-spend-cap must be a finite number"),
        ({"huber_delta": -1.0}, "--clv-huber-delta must be > 0"),
    ],
)
def test_bad_target_options_are_refused(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CLVTarget(**kw)


def test_loss_sees_the_encoded_target_and_keeps_mean_reduction() -> None:
    target = CLVTarget(transform="raw", spend_cap=10.0, loss="mse")
    loss = loss_for("clv", target)
    assert loss.reduction == "mean"
    y = torch.log1p(torch.tensor([0.0, 10.0]))  # encoded targets 0 and 1
    assert float(loss(torch.tensor([0.0, 1.0]), y)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(torch.tensor([1.0, 1.0]), y)) == pytest.approx(0.5)


def test_spearman_and_top_decile_capture_on_a_hand_made_example() -> None:
    true = np.array([100.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 50])
    # the model ranks customers 0 and 10 highest: its top decile (2 of 20) holds 150 of 200
    pred = np.array([9.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 8, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    assert top_decile_capture(true, pred) == pytest.approx(0.75)
    assert top_decile_capture(true, -pred) == pytest.approx(0.0)
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0]))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(22.5)
    assert m["rmse"] == pytest.approx(math.sqrt((81 + 324 + 729 + 1296) / 4))
    assert regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))[
        "spearman"
    ] == pytest.approx(-1)


def test_evaluate_reports_metrics_on_the_original_uncapped_scale() -> None:
    target = CLVTarget(transform="raw", spend_cap=100.0)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    model = torch.nn.Sequential(model, torch.nn.Flatten(0))
    X = np.array([[0.0], [0.5], [1.0]], dtype=np.float32)  # outputs decode to 0, 50, 100 dollars
    y = np.log1p(np.array([0.0, 50.0, 400.0])).astype(np.float32)  # the last one is above the cap
    m = evaluate(model, X, y, "clv", target)
    assert m["mae"] == pytest.approx(100.0, rel=1e-4)  # |400 - 100| / 3: truth is not clipped
    assert m["spearman"] == pytest.approx(1.0)
