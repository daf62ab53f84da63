"""Private set intersection: correctness, fresh secrets, shuffling, and what crosses the wire."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter

import pytest
from flwr.app import ConfigRecord, Message
from flwr.clientapp import ClientApp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcustomer.errors import ConfigError, DataError, FederationError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.psi.core import (
    POINT_BYTES,
    PSIParty,
    hash_to_group,
    pack,
    run_psi_local,
    unpack,
)
from fedcustomer.psi.protocol import (
    RECORD,
    alignment_path,
    party_path,
    register_psi_handlers,
)
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.state import load_alignment, load_alignment_result
from fedcustomer.server.inprocess import LocalGrid


def _norm(ids):
    return [normalize_id(i) for i in ids]


def _ids(prefix: str, lo: int, hi: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(lo, hi)]


# --- the maths ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (_ids("CUST-", 0, 40), _ids("CUST-", 25, 60), 15),  # partial overlap
        (_ids("CUST-", 0, 30), _ids("CUST-", 30, 50), 0),  # disjoint
        (_ids("CUST-", 0, 30), list(reversed(_ids("CUST-", 0, 30))), 30),  # full overlap, other order
        ([], _ids("CUST-", 0, 5), 0),  # one side empty
        ([], [], 0),
    ],
)
def test_intersection_equals_plain_set_intersection(a, b, expected):
    ra, rb = run_psi_local(a, b)
    assert ra.size == rb.size == expected
    assert set(ra.local_ids) == set(a) & set(b)
    assert ra.local_ids == rb.local_ids  # same ids here, so the agreed order must match exactly
    assert ra.set_size == rb.peer_set_size == len(set(a))
    assert ra.digest == rb.digest


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    a=st.lists(st.sampled_from(["ab1", " AB1", "ab2", "ab3", "Cd4", "cd4 ", "e5", "f6", "g7"]), max_size=12),
    b=st.lists(st.sampled_from(["AB1", "ab2 ", "zz9", "CD4", "e5", "yy8", "ab3"]), max_size=12),
)
def test_intersection_of_normalised_ids_with_duplicates_property(a, b):
    ra, rb = run_psi_local(a, b)
    expected = set(_norm(a)) & set(_norm(b))
    assert ra.size == rb.size == len(expected)
    assert set(_norm(ra.local_ids)) == expected
    assert _norm(ra.local_ids) == _norm(rb.local_ids)  # aligned row for row
    assert ra.duplicates_removed == len(a) - len(set(_norm(a)))
    assert rb.duplicates_removed == len(b) - len(set(_norm(b)))
    assert set(ra.local_ids) <= set(a) and set(rb.local_ids) <= set(b)  # each side gets its own spelling


def test_local_spelling_and_duplicate_count_are_reported():
    ra, rb = run_psi_local([" c-1", "C-1", "c-2"], ["C-1 ", "c-3"])
    assert ra.local_ids == [" c-1"]  # first spelling of the duplicate kept
    assert rb.local_ids == ["C-1 "]
    assert (ra.duplicates_removed, rb.duplicates_removed) == (1, 0)
    assert (ra.set_size, ra.peer_set_size) == (2, 2)


def test_labels_are_returned_instead_of_ids():
    a = PSIParty(["X1", "X2", "x1"], role="initiator", labels=["row-0", "row-1", "row-2"])
    b = PSIParty(["x1", "X3"], role="responder")
    res = a.intersect(b.reblind(a.blinded()), a.reblind(b.blinded()))
    assert res.local_ids == ["row-0"]
    with pytest.raises(DataError, match="2 local labels"):
        PSIParty(["X1", "X2", "X3"], role="initiator", labels=["a", "b"])


def test_alignment_order_is_the_same_on_both_sides_for_many_shared_ids():
    shared = _ids("S", 0, 60)
    ra, rb = run_psi_local(shared + _ids("A", 0, 20), _ids("B", 0, 20) + [s.lower() for s in shared])
    assert ra.size == 60
    assert _norm(ra.local_ids) == _norm(rb.local_ids)
    assert ra.local_ids != sorted(ra.local_ids)  # canonical order is by blinded value, not by id


def test_fresh_secret_per_session_gives_unlinkable_blinded_values():
    ids = _ids("CUST-", 0, 20)
    first = PSIParty(ids, role="initiator").blinded()
    second = PSIParty(ids, role="initiator").blinded()
    assert set(first).isdisjoint(second)
    assert len(set(first)) == 20


def test_blinded_values_are_the_ids_hashed_and_raised_to_the_secret_in_send_order():
    from fedcustomer.psi.core import _sodium

    party = PSIParty(["b", "a", "c"], role="responder", labels=["B", "A", "C"])
    state = party.session_state()
    secret = bytes.fromhex(state["secret"])
    expect = [_sodium().crypto_scalarmult_ristretto255(secret, hash_to_group(i)) for i in state["labels"]]
    assert party.blinded() == expect
    assert party.blinded() == party.blinded()  # computed once per session


def test_send_order_is_independent_of_input_order():
    ids = ["P0", "P1", "P2", "P3"]
    positions = Counter()
    for _ in range(400):
        order = PSIParty(ids, role="initiator", labels=ids).session_state()["labels"]
        positions[order.index("P0")] += 1
    # uniform would be 100 each; a fixed or input-following order would put all 400 in one slot
    assert set(positions) == {0, 1, 2, 3}
    assert all(50 <= c <= 150 for c in positions.values()), positions


def test_session_state_round_trip_resumes_the_same_session():
    a = PSIParty(_ids("K", 0, 10), role="initiator", labels=[f"row-{k}" for k in range(10)])
    b = PSIParty(_ids("K", 5, 15), role="responder")
    blinded_a = a.blinded()
    state = json.loads(json.dumps(a.session_state()))
    assert not any(i in json.dumps(state) for i in _ids("K", 0, 10))  # labels and blinded values only
    a2 = PSIParty.restore(state)
    assert a2.blinded() == blinded_a
    res = a2.intersect(b.reblind(blinded_a), a2.reblind(b.blinded()))
    assert res.size == 5 and set(res.local_ids) == {f"row-{k}" for k in range(5, 10)}


def test_a_party_without_labels_cannot_be_saved_because_its_labels_are_raw_ids():
    with pytest.raises(ConfigError, match="without local labels"):
        PSIParty(["SECRET-1"], role="initiator").session_state()


def test_restore_of_damaged_state_raises_integrity_error():
    with pytest.raises(IntegrityError, match="damaged"):
        PSIParty.restore({"role": "initiator", "secret": "zz"})


def test_parallel_workers_give_the_same_intersection():
    a, b = _ids("W", 0, 300), _ids("W", 200, 500)
    ra1, _ = run_psi_local(a, b, workers=1)
    ra2, rb2 = run_psi_local(a, b, workers=2, chunk=64)
    assert ra2.size == ra1.size == 100
    assert set(ra2.local_ids) == set(ra1.local_ids)
    assert ra2.local_ids == rb2.local_ids


# --- failure paths -----------------------------------------------------------------------
def test_reblind_rejects_a_value_that_is_not_a_group_element():
    party = PSIParty(["A"], role="responder")
    good = PSIParty(["B"], role="initiator").blinded()[0]
    with pytest.raises(IntegrityError, match="#1 .*not a valid ristretto255"):
        party.reblind([good, b"\xff" * POINT_BYTES])


def test_reblind_in_workers_names_the_bad_value_by_its_position_in_the_whole_message():
    good = PSIParty(_ids("G", 0, 9), role="initiator").blinded()
    party = PSIParty(["A"], role="responder", workers=2, chunk=4)
    with pytest.raises(IntegrityError, match="#6 "):
        party.reblind(good[:6] + [b"\xff" * POINT_BYTES] + good[6:])


def test_reblind_rejects_a_value_of_the_wrong_length():
    with pytest.raises(IntegrityError, match="#0 .*31 bytes"):
        PSIParty(["A"], role="responder").reblind([b"\x01" * 31])


def test_intersect_rejects_a_reply_with_the_wrong_number_of_values():
    a, b = PSIParty(["A", "B"], role="initiator"), PSIParty(["A"], role="responder")
    with pytest.raises(IntegrityError, match="returned 1 doubly-blinded values for the 2"):
        a.intersect(b.reblind(a.blinded())[:1], a.reblind(b.blinded()))


def test_unpack_rejects_a_truncated_blob():
    assert unpack(pack([b"\x01" * 32, b"\x02" * 32])) == [b"\x01" * 32, b"\x02" * 32]
    with pytest.raises(IntegrityError, match="not a whole number"):
        unpack(b"\x01" * 33)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ids": ["A"], "role": "leader"}, ConfigError, "role must be one of"),
        ({"ids": ["A"], "role": "initiator", "workers": 0}, ConfigError, "workers must be >= 1"),
        ({"ids": ["A", "   "], "role": "initiator"}, DataError, "row 1: customer id is empty"),
        ({"ids": ["A", 7], "role": "initiator"}, DataError, "row 1: customer id must be a string"),
    ],
)
def test_bad_party_input_raises_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        PSIParty(**kwargs)


# --- through the coordinator ---------------------------------------------------------------
class RecordingGrid(LocalGrid):
    """LocalGrid that keeps every message the server sends (each party's received view) and
    every reply (the server's view), and can tamper with one step's payload."""

    def __init__(self, client_app, num_nodes, tamper=None, **kw):
        super().__init__(client_app, num_nodes, **kw)
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.tamper = tamper

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if self.tamper:
            for m in messages:
                self.tamper(m)
        self.sent.extend(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def _wire_blob(messages) -> bytes:
    parts = []
    for m in messages:
        if m.has_error():
            parts.append(m.error.reason.encode())
            continue
        for rec in m.content.config_records.values():
            for v in rec.values():
                parts.append(v if isinstance(v, bytes) else str(v).encode())
    return b"\x00".join(parts)


def _forbidden_forms(ids):
    """Every form of an id that must never cross the wire."""
    forms = set()
    for raw in ids:
        for s in {raw, normalize_id(raw)}:
            b = s.encode()
            forms |= {b, b.lower()}
            for h in (hashlib.sha256(b), hashlib.sha512(b)):
                forms |= {h.digest(), h.hexdigest().encode()}
    return forms


NAMES = {"name_a": "bank", "name_b": "shop"}


@pytest.fixture
def federation(tmp_path):
    homes = [PartnerHome.create(tmp_path / "bank", "bank"), PartnerHome.create(tmp_path / "shop", "shop")]
    data = {
        "accounts": [f"bank-{i:05d}" for i in range(40)] + ["BANK-00001"],  # one duplicate
        "loyalty": [f" BANK-{i:05d}" for i in range(25, 60)],
    }

    def load_ids(home, dataset):
        if dataset not in data:
            raise DataError(f"no dataset {dataset!r} on this partner")
        return list(data[dataset])

    app = ClientApp()
    register_psi_handlers(
        app, lambda ctx: homes[int(ctx.node_config["partition-id"])], load_ids, local_labels=_fake_pseudonyms
    )
    return homes, data, app


def _fake_pseudonyms(home, dataset, ids):
    """Stand-in for the store's keyed pseudonyms: per home, not derivable from the id text."""
    return [f"{home.root.name}:{_PSEUDO.setdefault(normalize_id(i), len(_PSEUDO)):06d}" for i in ids]


_PSEUDO: dict[str, int] = {}


def _customer(label):
    """The normalised id behind a fake pseudonym (test bookkeeping only)."""
    number = int(label.split(":")[1])
    return next(k for k, v in _PSEUDO.items() if v == number)


def test_psi_over_grid_aligns_both_partners_and_server_sees_only_sizes(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    view = run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="join-1")
    assert (view.set_size_a, view.set_size_b, view.intersection_size) == (40, 35, 15)
    assert view.bytes_relayed == 2 * (40 + 35) * POINT_BYTES
    bank, shop = load_alignment(homes[0], "join-1"), load_alignment(homes[1], "join-1")
    assert all(b.startswith("bank:") for b in bank) and all(s.startswith("shop:") for s in shop)
    assert [_customer(b) for b in bank] == [_customer(s) for s in shop]
    assert {_customer(b) for b in bank} == {f"BANK-{i:05d}" for i in range(25, 40)}
    assert load_alignment_result(homes[0], "join-1").duplicates_removed == 1
    assert not party_path(homes[0], "join-1").exists()  # the secret is gone after finish
    assert stat.S_IMODE(os.stat(alignment_path(homes[1], "join-1")).st_mode) == 0o600


def test_no_message_carries_a_raw_normalised_or_plainly_hashed_id(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="join-2")
    all_ids = data["accounts"] + data["loyalty"]
    forbidden = _forbidden_forms(all_ids)
    to_bank = _wire_blob(m for m in grid.sent if m.metadata.dst_node_id == 1)
    to_shop = _wire_blob(m for m in grid.sent if m.metadata.dst_node_id == 2)
    server_view = _wire_blob(grid.received)
    assert len(grid.sent) == 6 and len(grid.received) == 6
    for view in (to_bank, to_shop, server_view):
        assert len(view) > 1000  # the views really hold the relayed values
        leaked = [f for f in forbidden if f in view]
        assert leaked == []
    # the check itself can see an id: a plain digest planted in a view is caught
    assert any(f in server_view + hashlib.sha256(b"BANK-00003").digest() for f in forbidden)


def test_each_session_uses_fresh_secrets_on_the_wire(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="s-a")
    run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="s-b")
    blinded = [
        set(unpack(bytes(m.content[RECORD]["blinded"])))
        for m in grid.received
        if m.metadata.src_node_id == 1 and "blinded" in m.content[RECORD]
    ]
    assert len(blinded) == 2 and blinded[0].isdisjoint(blinded[1])


def test_reusing_a_session_id_is_refused(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="once")
    with pytest.raises(FederationError, match="already started"):
        run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="once")
    assert len(load_alignment(homes[0], "once")) == 15  # the finished session is untouched


def test_partner_failure_aborts_and_drops_session_secrets(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2)
    with pytest.raises(FederationError, match="node 2: DataError: no dataset 'nope'"):
        run_psi_on_grid(grid, 1, 2, "accounts", "nope", session_id="bad", **NAMES)
    assert not party_path(homes[0], "bad").exists()
    assert not alignment_path(homes[0], "bad").exists()


def test_dead_partner_raises_federation_error(federation):
    homes, data, app = federation
    grid = RecordingGrid(app, 2, dead_after={2: 1})
    with pytest.raises(FederationError, match="node 2 did not answer"):
        run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="dead")
    assert not party_path(homes[0], "dead").exists()


def test_tampered_relay_is_caught_by_the_alignment_digest(federation):
    homes, data, app = federation

    def tamper(msg):  # a coordinator that replaces the doubly-blinded values on their way to the bank
        if msg.metadata.message_type == "query.psi_finish" and msg.metadata.dst_node_id == 1:
            count = len(unpack(bytes(msg.content[RECORD]["my-doubly"])))
            rec = dict(msg.content[RECORD])
            rec["my-doubly"] = pack(PSIParty(_ids("FAKE", 0, count), role="initiator").blinded())
            msg.content[RECORD] = ConfigRecord(rec)

    grid = RecordingGrid(app, 2, tamper=tamper)
    with pytest.raises(IntegrityError, match="different alignments"):
        run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="tampered")


@pytest.mark.parametrize("session", ["../escape", ".hidden", "a/b", "x" * 65])
def test_unsafe_session_ids_are_rejected(federation, session):
    homes, data, app = federation
    with pytest.raises(ConfigError, match="session id"):
        run_psi_on_grid(RecordingGrid(app, 2), 1, 2, "accounts", "loyalty", **NAMES, session_id=session)


def test_load_alignment_of_unknown_or_damaged_session(tmp_path):
    home = PartnerHome.create(tmp_path / "p", "p")
    with pytest.raises(DataError, match="not found"):
        load_alignment(home, "never-run")
    path = alignment_path(home, "broken")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(IntegrityError, match="damaged"):
        load_alignment(home, "broken")
    path.write_text(
        json.dumps(
            {
                "size": 3,
                "local_ids": ["a"],
                "duplicates_removed": 0,
                "set_size": 1,
                "peer_set_size": 1,
                "digest": "",
            }
        )
    )
    with pytest.raises(IntegrityError, match="lists 1 ids but records size 3"):
        load_alignment(home, "broken")


def test_a_partner_that_does_not_answer_in_time_is_told_how_to_run_again(federation):
    """Found by a new-user trial: a slow intersection-sum step looked like a lost node, with no remedy."""
    homes, data, app = federation
    grid = RecordingGrid(app, 2, dead_after={2: 1})
    with pytest.raises(FederationError) as caught:
        run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="slow", timeout=7.5)
    text = str(caught.value)
    assert "node 2 did not answer within 7.5 s (--round-timeout)" in text
    assert "--psi-chunk-size" in text and "start it again" in text
