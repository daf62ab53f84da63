"""Erasing a customer reaches the PSI files: open sessions dropped, alignments nulled, order kept."""

from __future__ import annotations

import json

from fedcustomer.apps.client import make_client_app
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer
from fedcustomer.psi.protocol import (
    MSG_BLIND,
    alignment_path,
    party_path,
)
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.state import forget_customer, load_alignment, load_alignment_result
from fedcustomer.server.inprocess import LocalGrid
from tests.data.test_ingest import bank_frame
from tests.psi.raw_messages import send

ADMIN = Actor("alice", "partner_admin")


def _partner(tmp_path, name: str, frame) -> PartnerHome:
    home = PartnerHome(tmp_path / name)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    with PartnerStore.init(home, name, actor=ADMIN) as store:
        store.ingest(ADMIN, load_bundled("bank"), path)
    return home


def test_erase_removes_the_customer_from_every_psi_file(tmp_path):
    frame = bank_frame(30)
    bank = _partner(tmp_path, "bank", frame.iloc[:20])
    other = _partner(tmp_path, "other", frame.iloc[10:])
    grid = LocalGrid(make_client_app([str(bank.root), str(other.root)]), num_nodes=2)
    node_a, node_b = grid.get_node_ids()
    view = run_psi_on_grid(
        grid, node_a, node_b, "bank", "bank", name_a="bank", name_b="other", session_id="done"
    )
    assert view.intersection_size == 10
    reply = send(
        grid,
        node_a,
        MSG_BLIND,
        {"session-id": "open", "dataset": "bank", "role": "initiator", "peer": "other"},
    )
    assert not reply.has_error()
    victim = frame["customer_id"].iloc[12]
    pseudonym = Pseudonymizer.open(bank.keys_dir).pseudonym(victim)
    before = load_alignment(bank, "done")
    assert pseudonym in before and party_path(bank, "open").exists()

    with PartnerStore.open(bank) as store:
        result = erase_customer(store, ADMIN, victim)

    assert result["psi_state"] == {"sessions_dropped": 1, "alignment_entries": 1}
    after = load_alignment(bank, "done")
    assert len(after) == len(before) and after == [None if p == pseudonym else p for p in before]
    assert not party_path(bank, "open").exists()
    for path in bank.state_dir.rglob("*"):
        if path.is_file():
            assert pseudonym not in path.read_text(errors="ignore"), path
    assert None not in load_alignment(other, "done")  # the peer keeps its own records


def test_forget_customer_nulls_vertical_alignments_and_drops_unreadable_sessions(tmp_path):
    home = PartnerHome.create(tmp_path / "p", "p")
    vertical = home.state_dir / "vertical"
    vertical.mkdir(parents=True)
    (vertical / "alignment-bank-with-shop.json").write_text(json.dumps({"pseudonyms": ["a", "b", "c"]}))
    party_path(home, "broken").parent.mkdir(parents=True, exist_ok=True)
    party_path(home, "broken").write_text("{not json")
    alignment_path(home, "s").write_text(json.dumps({"local_ids": ["b"], "size": 1}))
    out = forget_customer(home, "b")
    assert out == {"sessions_dropped": 1, "alignment_entries": 2}
    assert json.loads((vertical / "alignment-bank-with-shop.json").read_text())["pseudonyms"] == [
        "a",
        None,
        "c",
    ]
    assert not party_path(home, "broken").exists()
    assert forget_customer(home, "b") == {"sessions_dropped": 0, "alignment_entries": 0}  # idempotent
