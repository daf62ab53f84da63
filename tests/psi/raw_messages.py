"""Sending one raw PSI query to a node, as a (possibly dishonest) coordinator would."""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from fedcustomer.psi.protocol import RECORD


def send(grid, node: int, step: str, cfg: dict) -> Message:
    msg = Message(
        content=RecordDict({RECORD: ConfigRecord(cfg)}), dst_node_id=node, message_type=f"query.{step}"
    )
    return list(grid.send_and_receive([msg]))[0]
