"""The ClientApp mod: handlers see ordinary records; a packed request is answered packed."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.common import packed_content as pc
from fedcustomer.common.packed_content import is_packed, pack, unpack


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a SuperLink sets


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _request(content: RecordDict) -> Message:
    msg = Message(content, dst_node_id=1, message_type="query.vertical_step")
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _handler(seen: list[RecordDict]):
    def handle(msg: Message, context: Context) -> Message:
        seen.append(msg.content)
        rows = np.full((3, 2), float(msg.content["config"]["step"]), dtype=np.float32)
        reply = RecordDict(
            {"embeddings": ArrayRecord({"rows": Array(rows)}), "party": ConfigRecord({"ok": True})}
        )
        return Message(reply, reply_to=msg)

    return handle


def test_a_packed_request_reaches_the_handler_unpacked_and_its_reply_leaves_packed():
    seen: list[RecordDict] = []
    packed = pack(RecordDict({"config": ConfigRecord({"step": 2})}))
    assert packed is not None
    request = _request(packed)
    reply = packed_mod(request, _context(), _handler(seen))
    assert list(seen[0].keys()) == ["config"] and seen[0]["config"]["step"] == 2
    assert is_packed(reply.content)
    assert reply.metadata.reply_to_message_id == request.metadata.message_id
    np.testing.assert_array_equal(unpack(reply.content)["embeddings"]["rows"].numpy(), np.full((3, 2), 2.0))


def test_an_ordinary_request_and_its_reply_pass_unchanged():
    seen: list[RecordDict] = []
    reply = packed_mod(
        _request(RecordDict({"config": ConfigRecord({"step": 1})})), _context(), _handler(seen)
    )
    assert not is_packed(reply.content) and set(reply.content.keys()) == {"embeddings", "party"}


def test_an_error_reply_to_a_packed_request_stays_an_error():
    packed = pack(RecordDict({"config": ConfigRecord({"step": 2})}))
    assert packed is not None

    def fails(msg: Message, context: Context) -> Message:
        return Message(Error(code=0, reason="refused"), reply_to=msg)

    reply = packed_mod(_request(packed), _context(), fails)
    assert reply.has_error() and reply.error.reason == "refused"


def test_a_question_on_packing_is_answered_beside_the_handlers_records_and_hidden_from_them():
    seen: list[RecordDict] = []
    content = RecordDict({"config": ConfigRecord({"step": 1})})
    pc.add_formats(content)  # the coordinator's first message asks
    reply = packed_mod(_request(content), _context(), _handler(seen))
    assert list(seen[0].keys()) == ["config"]
    assert not is_packed(reply.content)
    assert set(reply.content.keys()) == {"embeddings", "party", pc.FORMATS_RECORD}
    assert pc.take_formats(reply.content) == (pc.FORMAT,)


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (
            {pc.FORMAT_KEY: 99, pc.RECORDS_KEY: b""},
            "format 99; this node reads format 1: update fedcustomer on this node",
        ),
        ({pc.FORMAT_KEY: 0, pc.RECORDS_KEY: b""}, "update fedcustomer on the coordinator"),
        ({pc.FORMAT_KEY: pc.FORMAT, pc.RECORDS_KEY: b"customer-4711\xff"}, "could not be decoded"),
    ],
)
def test_a_packed_message_this_node_cannot_read_gets_an_error_reply_naming_what_to_update(record, says):
    seen: list[RecordDict] = []
    reply = packed_mod(
        _request(RecordDict({pc.PACKED_RECORD: ConfigRecord(record)})), _context(), _handler(seen)
    )
    assert not seen  # no handler ran
    assert reply.has_error() and reply.error.code == pc.PACKING_ERROR_CODE
    assert says in reply.error.reason and "update fedcustomer" in reply.error.reason
    assert "4711" not in reply.error.reason
