"""Split-learning messages: types, array decoding, decisions on the wire, errors as error replies."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.errors import DataError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.protocol import (
    ACTIONS,
    PARTNER_ERROR_CODE,
    TRAIN_ACTIONS,
    _arrays,
    _decision,
    _positions,
    message_type,
    register_vertical_handlers,
)


def test_training_actions_are_train_messages_the_rest_queries() -> None:
    assert set(TRAIN_ACTIONS) < set(ACTIONS) and len(set(ACTIONS)) == len(ACTIONS) == 11
    assert message_type("vertical_step") == "train.vertical_step"
    assert message_type("vertical_hello") == "query.vertical_hello"
    assert message_type("vertical_embed") == "query.vertical_embed"
    assert [message_type(a).split(".")[0] for a in ACTIONS].count("train") == len(TRAIN_ACTIONS)


def test_arrays_returns_the_named_tensors_and_names_what_is_missing() -> None:
    content = RecordDict({"arrays": ArrayRecord({"positions": torch.arange(3), "extra": torch.zeros(1)})})
    got = _arrays(content, "positions")
    assert list(got) == ["positions"] and got["positions"].tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="^message lacks array\\(s\\) gradients$"):
        _arrays(content, "positions", "gradients")
    with pytest.raises(DataError, match="^message carries no arrays; expected embeddings$"):
        _arrays(RecordDict({}), "embeddings")


def test_positions_are_int64_indices() -> None:
    pos = _positions(torch.tensor([2.0, 0.0, 5.0]))
    assert pos.dtype == np.int64 and pos.tolist() == [2, 0, 5]


def test_a_decision_carries_its_batches_as_flat_positions_and_sizes() -> None:
    batches = [np.array([3, 1]), np.array([], dtype=np.int64), np.array([7])]
    out = _decision(SimpleNamespace(ok=True, reason=None, metrics={"epsilon": 1}, batches=batches))
    assert dict(out["decision"]) == {"ok": True, "reason": ""}
    assert dict(out["metrics"]) == {"epsilon": 1.0}
    arrays = out["arrays"].to_torch_state_dict()
    assert arrays["batch-positions"].tolist() == [3, 1, 7] and arrays["batch-sizes"].tolist() == [2, 0, 1]
    sizes = arrays["batch-sizes"].tolist()
    split = np.split(arrays["batch-positions"].numpy(), np.cumsum(sizes)[:-1])
    assert [s.tolist() for s in split] == [b.tolist() for b in batches]  # what the passive side rebuilds


def test_a_refusal_carries_its_reason_and_no_batches() -> None:
    out = _decision(SimpleNamespace(ok=False, reason="budget spent", metrics={}, batches=None))
    assert dict(out["decision"]) == {"ok": False, "reason": "budget spent"} and "arrays" not in out
    empty = _decision(SimpleNamespace(ok=True, reason=None, metrics={}, batches=[]))
    assert empty["arrays"].to_torch_state_dict()["batch-positions"].numel() == 0


def _ask(app: ClientApp, action: str, content: RecordDict) -> Message:
    grid = LocalGrid(app, 1)
    msg = Message(content=content, dst_node_id=1, message_type=message_type(action))
    (reply,) = grid.send_and_receive([msg])
    return reply


def test_hello_answers_with_the_partner_name(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "bank", "bank_x", budget=DatasetBudget(3.0, 1e-5))
    app = register_vertical_handlers(ClientApp(), lambda context: home)
    reply = _ask(app, "vertical_hello", RecordDict({}))
    assert not reply.has_error() and dict(reply.content["partner"]) == {"name": "bank_x"}


def test_a_partner_error_becomes_an_error_reply_naming_its_kind(tmp_path: Path) -> None:
    def no_home(context: Context) -> PartnerHome:
        raise DataError("this node has no partner home")

    app = register_vertical_handlers(ClientApp(), no_home)
    reply = _ask(app, "vertical_setup", RecordDict({"config": ConfigRecord({"role": "active"})}))
    assert reply.has_error()
    assert reply.error.code == PARTNER_ERROR_CODE
    assert reply.error.reason == "DataError: this node has no partner home"
