"""The coordinator's record of the anchors in any reply (AnchorGrid, AnchorLog) and the partner's
mod that puts one into every reply (clients/anchor_mod): one line per change, lines kept, bad ones
on record, error replies and homes without a checkpoint left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import WIRE_KEY, current_anchor_json, read_anchor_file
from fedcustomer.server.anchor_grid import AnchorGrid, AnchorLog, kind_and_round
from fedcustomer.server.inprocess import LocalGrid
from tests.privacy.audit.test_anchors import _session


@pytest.fixture()
def home(tmp_path: Path) -> PartnerHome:
    h = PartnerHome(tmp_path / "bank")
    PartnerStore.init(h, "bank").close()  # closing the store signs a checkpoint
    return h


def _app(home_of) -> ClientApp:
    app = ClientApp(mods=[anchor_mod(home_of)])

    @app.query("ping")
    def ping(msg: Message, context: Context) -> Message:
        if dict(msg.content["config"]).get("fail"):
            return Message(error=Error(code=4100, reason="refused"), reply_to=msg)
        return Message(content=RecordDict({"pong": ConfigRecord({"ok": True})}), reply_to=msg)

    @app.query("own")
    def own(msg: Message, context: Context) -> Message:  # a handler that sends its own anchor
        return Message(content=RecordDict({"answer": ConfigRecord({WIRE_KEY: "its own"})}), reply_to=msg)

    return app


def _ask(grid, action: str, **config) -> list[Message]:
    msg = Message(
        content=RecordDict({"config": ConfigRecord(config)}), dst_node_id=1, message_type=f"query.{action}"
    )
    return list(grid.send_and_receive([msg]))


def test_kind_and_round_of_each_reply() -> None:
    assert kind_and_round("train", "3", {}) == ("round", 3)  # a SecAgg+ stage names its round
    assert kind_and_round("train.vertical_begin", "", {"round": 2}) == ("vertical", 2)
    assert kind_and_round("query.vertical_hello", "", {}) == ("vertical", None)
    assert kind_and_round("query.psi_blind", "", {"round": 5}) == ("psi", None)
    assert kind_and_round("query.analytics", "", {}) == ("analytics", None)


def test_every_reply_carries_the_anchor_and_one_line_is_kept_per_change(
    home: PartnerHome, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    grid = AnchorGrid.around(LocalGrid(_app(lambda ctx: home), 1), out, "r1")
    assert AnchorGrid.around(grid, out, "r1") is grid  # wrapping twice records once
    first = _ask(grid, "ping")[0]
    assert dict(first.content["pong"]) == {"ok": True}  # the handler's reply, unchanged
    assert dict(first.content["partner"]) == {
        "name": "bank",
        WIRE_KEY: current_anchor_json(home.audit_dir, home.keys_dir, "bank"),
    }
    _ask(grid, "ping")  # the same anchor again: not repeated
    _session(home, "C1")  # an audited action: the log signs a new checkpoint
    _ask(grid, "ping")
    lines = [json.loads(x) for x in (out / "anchors.jsonl").read_text().splitlines()]
    assert [x["anchor"]["checkpoint"]["number"] for x in lines] == [1, 2]
    assert all(x["partner"] == "bank" and x["kind"] == "ping" and "problem" not in x for x in lines)
    read = read_anchor_file(out / "anchors.jsonl")
    assert [a.anchor.number for a in read if a.anchor] == [1, 2]
    assert read[0].label == "anchors.jsonl line 1 (run r1, ping)"  # no "None" for a step without a round


def test_error_replies_and_own_anchors_are_left_alone(home: PartnerHome, tmp_path: Path) -> None:
    grid = AnchorGrid.around(LocalGrid(_app(lambda ctx: home), 1), tmp_path / "run", "r1")
    failed = _ask(grid, "ping", fail=True)[0]
    assert failed.has_error() and failed.error.reason == "refused"
    own = _ask(grid, "own")[0]
    assert dict(own.content["answer"]) == {WIRE_KEY: "its own"} and "partner" not in own.content
    # a reply naming no partner is recorded under its node, with why it proves nothing
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "anchors.jsonl").read_text().splitlines()]
    assert line["partner"] == "node-1" and "problem" in line


def test_a_node_without_a_home_or_a_checkpoint_still_answers(tmp_path: Path) -> None:
    def no_home(ctx: Context) -> PartnerHome:
        raise ConfigError("this node has no partner home")

    reply = _ask(LocalGrid(_app(no_home), 1), "ping")[0]
    assert dict(reply.content["pong"]) == {"ok": True} and "partner" not in reply.content
    bare = PartnerHome(tmp_path / "bare")
    bare.root.mkdir()
    reply = _ask(LocalGrid(_app(lambda ctx: bare), 1), "ping")[0]
    assert "partner" not in reply.content


def test_lines_already_in_the_file_are_kept_as_they_are(home: PartnerHome, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    earlier = b'{"earlier": "run"}\nnot json, kept too'
    (out / "anchors.jsonl").write_bytes(earlier)
    log = AnchorLog(out, "r2")
    text = current_anchor_json(home.audit_dir, home.keys_dir, "bank")
    assert text is not None
    assert log.take("bank", text, kind="round", round=1) and not log.take("bank", text, kind="round", round=2)
    assert log.take("retailer", "{}", kind="psi", round=None)  # another partner: its own line
    data = (out / "anchors.jsonl").read_bytes()
    assert data.startswith(earlier + b"\n")
    new = [json.loads(x) for x in data[len(earlier) + 1 :].splitlines()]
    assert [(x["partner"], x["round"], "problem" in x) for x in new] == [
        ("bank", 1, False),
        ("retailer", None, True),
    ]
