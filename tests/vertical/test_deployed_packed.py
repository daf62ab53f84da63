"""A vertical job whose messages cross as Flower's objects, packed (as the deployed ServerApp sends
them) and not: the same job, the same charges, and at most three objects per message when packed.
Packing is negotiated: only a node that said in its reply to the first message that it reads the
format gets packed messages; an older node (no unpacking mod) or a forged declaration gets ordinary
ones, and the job is the same."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedcustomer.apps.prompt_grid import PromptGrid
from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.clients.context import resolve_home
from fedcustomer.clients.linkage import register_governed_psi_handlers
from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.common.packed_content import FORMATS_KEY, FORMATS_RECORD, is_packed
from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app, pin_each_other
from fedcustomer.vertical.protocol import register_vertical_handlers


class WireGrid(LocalGrid):
    """The in-process grid behind push and pull: each message and reply is deflated into Flower's
    objects and inflated again, as the SuperLink carries it; ``objects`` counts them per message,
    ``packed`` says, per node, whether each of its messages and replies crossed packed. ``apps``:
    a node's own ClientApp (another release), by node id."""

    def __init__(self, *args, apps: dict[int, ClientApp] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.apps = apps or {}
        self.pending: dict[str, Message] = {}
        self.objects: list[int] = []
        self.packed: dict[int, list[bool]] = {n: [] for n in self.node_ids}

    def _cross(self, msg: Message, node: int) -> Message:
        objects = get_all_nested_objects(msg)
        self.objects.append(len(objects))
        self.packed[node].append(msg.has_content() and is_packed(msg.content))
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
            app = self.apps.get(node, self.client_app)
            reply = app(self._cross(msg, node), self.contexts[node])
            reply.metadata.__dict__["_message_id"] = reply.object_id
            self.pending[msg.metadata.message_id] = self._cross(reply, node)
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


def _older_app(homes: list[str]) -> ClientApp:
    """A party's ClientApp as a release before packing had it: no unpacking mod, no declaration."""

    def home_of(context: Context):
        return resolve_home(context, homes)

    app = ClientApp(mods=[anchor_mod(home_of)])
    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)
    return app


def _forging_app(homes: list[str]) -> ClientApp:
    """Today's ClientApp, but its answer on packing names only a format no release writes."""

    def forge(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if reply.has_content() and FORMATS_RECORD in reply.content:
            reply.content[FORMATS_RECORD] = ConfigRecord({FORMATS_KEY: [99]})
        return reply

    def home_of(context: Context):
        return resolve_home(context, homes)

    app = ClientApp(mods=[forge, packed_mod, anchor_mod(home_of)])
    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)
    return app


def _run(root, pack: bool, node_2=None):
    """The job; ``node_2`` (given the homes) is node 2's ClientApp, another release's."""
    homes = _homes(root)
    job = VerticalJob(out=str(root / "run"), rounds=2, batch_size=64, steps_per_round=2, seed=0)
    raw = two_party_run_config(job, mode="vertical", wait_for_partners=5)
    roots = [str(h.root) for h in homes]
    wire = WireGrid(party_app(roots), num_nodes=2, apps={2: node_2(roots)} if node_2 else None)
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
    # after each node's hello (unpacked: it asks, the reply declares), every message and reply
    # packed, each at most three objects (message, dict, one record)
    for crossed in packed_wire.packed.values():
        assert crossed[:2] == [False, False] and len(crossed) > 2 and all(crossed[2:])
    hellos = 4  # a request and a reply per node
    assert max(packed_wire.objects[hellos:]) <= 3
    assert max(plain_wire.objects) > 3 and sum(packed_wire.objects) < sum(plain_wire.objects)

    # the audit anchors the coordinator records (read from the sent messages after the push) are the same
    def kinds(out):
        rows = map(json.loads, (out / "anchors.jsonl").open())
        return sorted((r["partner"], r["kind"], r["round"] or 0) for r in rows)

    assert kinds(packed_out) == kinds(plain_out)


@pytest.mark.slow
@pytest.mark.parametrize("node_2", [_older_app, _forging_app], ids=["older-node", "forged-format"])
def test_a_node_that_did_not_declare_a_known_format_gets_only_ordinary_messages_and_the_same_job(
    tmp_path, node_2, caplog
):
    plain, plain_charges, _, _ = _run(tmp_path / "plain", pack=False)
    with caplog.at_level(logging.WARNING, logger="fedcustomer.apps.prompt_grid"):
        mixed, mixed_charges, wire, _ = _run(tmp_path / "mixed", pack=True, node_2=node_2)
    assert mixed["status"] == "completed"
    assert (
        mixed["psi_size"] == plain["psi_size"] and mixed["rounds_completed"] == plain["rounds_completed"] == 2
    )
    assert mixed_charges == plain_charges and all(mixed_charges.values())
    assert len(wire.packed[2]) > 2 and not any(wire.packed[2])  # never a packed message to node 2
    assert wire.packed[1][:2] == [False, False] and all(wire.packed[1][2:])  # node 1 declared: packed
    warned = [r.getMessage() for r in caplog.records if r.name == "fedcustomer.apps.prompt_grid"]
    if node_2 is _forging_app:  # ignored, and said so: which node, what it declared, what to update
        assert len(warned) == 1 and "node 2 declared packed format(s) 99, not format 1" in warned[0]
        assert "update fedcustomer" in warned[0]
    else:  # an older node is simply not asked again
        assert not warned
