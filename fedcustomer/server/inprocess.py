"""An in-process Flower Grid: runs a job against ClientApps in this process.

Each message goes straight to a ClientApp (no Ray, no network); a node can be
made to stop answering to simulate one that died mid-round. Used by fast tests and
benchmarks; the simulation engine and real gRPC processes are the product paths.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(
        self, client_app: ClientApp, num_nodes: int, dead_after: dict[int, int] | None = None
    ) -> None:
        self.client_app = client_app
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = (
            1,
            1,
            0,
        )  # what a SuperLink would set
        self.node_ids = list(range(1, num_nodes + 1))
        self.dead_after = dead_after or {}  # node id -> calls after which it stops answering
        self.calls: dict[int, int] = {n: 0 for n in self.node_ids}
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, n in enumerate(self.node_ids)
        }

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.calls[node] += 1
            if node in self.dead_after and self.calls[node] > self.dead_after[node]:
                continue  # died: no reply
            msg.metadata.__dict__["_message_id"] = msg.object_id
            msg.metadata.__dict__["_src_node_id"] = 0
            reply = self.client_app(msg, self.contexts[node])
            replies.append(reply)
        return replies


class SecAggLocalGrid(LocalGrid):
    """A LocalGrid for Flower's legacy SecAgg+ workflow: a run id, messages copied as if sent, errors replied.

    The workflow shares one ConfigRecord between the messages of a stage and the client mod
    consumes keys from it; over a network every node gets its own copy, so here too. A
    ClientApp that raises (a partner refusing a round) answers with an error, as a SuperNode does.
    """

    @property
    def run(self):
        from types import SimpleNamespace

        return SimpleNamespace(run_id=1)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for original in messages:
            msg = Message(
                content=copy.deepcopy(original.content),
                dst_node_id=original.metadata.dst_node_id,
                message_type=original.metadata.message_type,
                group_id=original.metadata.group_id,
            )
            node = msg.metadata.dst_node_id
            self.calls[node] += 1
            if node in self.dead_after and self.calls[node] > self.dead_after[node]:
                continue
            msg.metadata.__dict__["_message_id"] = msg.object_id
            msg.metadata.__dict__["_src_node_id"] = 0
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as exc:
                reply = Message(error=Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies
