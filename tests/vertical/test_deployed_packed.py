"""A vertical job whose messages cross as Flower's objects, packed (as the deployed ServerApp sends
them) and not: the same job, the same charges, and at most three objects per message when packed."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedcustomer.apps.prompt_grid import PromptGrid
from fedcustomer.common.packed_content import is_packed
from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app, pin_each_other


class WireGrid(LocalGrid):
    """The in-process grid behind push and pull: each message and reply is deflated into Flower's
    objects and inflated again, as the SuperLink carries it; ``objects`` counts them per message."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, Message] = {}
        self.objects: list[int] = []
        self.packed: list[bool] = []

    def _cross(self, msg: Message) -> Message:
        objects = get_all_nested_objects(msg)
        self.objects.append(len(objects))
        self.packed.append(msg.has_content() and is_packed(msg.content))
        received = inflate_object_from_contents(msg.object_id, {i: o.deflate() for i, o in objects.items()})
        assert isinstance(received, Message)
        received.metadata.__dict__["_message_id"] = msg.metadata.message_id
        return received

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.calls[node] += 1
            msg.metadata.__dict__["_message_id"] = msg.object_id
            msg.metadata.__dict__["_src_node_id"] = 0
            reply = self.client_app(self._cross(msg), self.contexts[node])
            reply.metadata.__dict__["_message_id"] = reply.object_id
            self.pending[msg.metadata.message_id] = self._cross(reply)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.pending.pop(i) for i in list(message_ids) if i in self.pending]


def _homes(root):
    bank = prepare_party_home(root / "bank", "bank", customers=400, seed=3, epsilon=8.0)
    retail = prepare_party_home(root / "retailer", "retailer", customers=400, seed=3, epsilon=8.0)
    pin_each_other(bank, retail)
    return [bank, retail]


def _charges(home, run_id):
    name = home.config().name
    ledger = BudgetLedger(home.ledger_path, name, home.config().budget_for(name))
    return sorted(
        (c.round or 0, c.mechanism, round(c.epsilon, 12)) for c in ledger.charges() if c.run_id == run_id
    )


def _run(root, pack: bool):
    homes = _homes(root)
    job = VerticalJob(out=str(root / "run"), rounds=2, batch_size=64, steps_per_round=2, seed=0)
    raw = two_party_run_config(job, mode="vertical", wait_for_partners=5)
    wire = WireGrid(party_app([str(h.root) for h in homes]), num_nodes=2)
    summary = run_two_party(PromptGrid(wire, first_pause=0.001, max_pause=0.001, pack=pack), raw)  # type: ignore[arg-type]
    charges = {h.config().name: _charges(h, raw["run-id"]) for h in homes}
    return summary, charges, wire, root / "run"


@pytest.mark.slow
def test_packed_messages_give_the_same_job_and_charges_in_fewer_objects(tmp_path):
    plain, plain_charges, plain_wire, plain_out = _run(tmp_path / "plain", pack=False)
    packed, packed_charges, packed_wire, packed_out = _run(tmp_path / "packed", pack=True)
    assert plain["status"] == packed["status"] == "completed"
    assert (
        packed["psi_size"] == plain["psi_size"]
        and packed["rounds_completed"] == plain["rounds_completed"] == 2
    )
    assert 0.0 <= packed["comparison"]["vertical_auc"] <= 1.0  # trained and evaluated (DP noise: not equal)
    assert packed_charges == plain_charges and all(packed_charges.values())  # charged alike, nothing twice
    # every message and reply packed, each at most three objects (message, dict, one record)
    assert all(packed_wire.packed) and max(packed_wire.objects) <= 3
    assert max(plain_wire.objects) > 3 and sum(packed_wire.objects) < sum(plain_wire.objects)

    # the audit anchors the coordinator records (read from the sent messages after the push) are the same
    def kinds(out):
        rows = map(json.loads, (out / "anchors.jsonl").open())
        return sorted((r["partner"], r["kind"], r["round"] or 0) for r in rows)

    assert kinds(packed_out) == kinds(plain_out)
