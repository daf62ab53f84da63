"""Split-learning models: shapes, the passive score as a second input, and refused sizes."""

import pytest
import torch

from fedcustomer.errors import ConfigError
from fedcustomer.vertical.models import ActiveModel, BottomMLP, LabelHead, TopModel


def test_bottom_model_maps_columns_to_an_embedding() -> None:
    bottom = BottomMLP(5, embed_dim=3, hidden=4)
    assert (bottom.input_dim, bottom.embed_dim) == (5, 3)
    assert bottom(torch.zeros(7, 5)).shape == (7, 3)
    assert sum(p.numel() for p in bottom.parameters()) == 5 * 4 + 4 + 4 * 3 + 3


@pytest.mark.parametrize("sizes", [(0, 8, 16), (4, 0, 16), (4, 8, 0)])
def test_bottom_model_refuses_empty_sizes(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError, match="bottom model sizes must be >= 1"):
        BottomMLP(*sizes)


def test_top_and_head_give_one_output_per_customer() -> None:
    assert TopModel(6, hidden=4)(torch.zeros(3, 6)).shape == (3,)
    assert LabelHead(8)(torch.zeros(2, 8)).shape == (2,)


def test_active_model_combines_its_embedding_with_the_passive_score() -> None:
    torch.manual_seed(0)
    model = ActiveModel(4, passive_dim=1, embed_dim=3, hidden=5)
    x = torch.randn(6, 4)
    a, b = model(x, torch.zeros(6, 1)), model(x, torch.ones(6, 1))
    assert a.shape == (6,) and not torch.allclose(a, b)  # the score reaches the output
    assert model.top.net[0].in_features == 3 + 1
    with pytest.raises(ConfigError, match="needs the passive party's score"):
        model(x)


def test_active_model_alone_ignores_any_passive_input() -> None:
    torch.manual_seed(0)
    alone = ActiveModel(4, passive_dim=0, embed_dim=3)
    x = torch.randn(5, 4)
    assert torch.equal(alone(x), alone(x, torch.ones(5, 2)))
    assert alone.top.net[0].in_features == 3
