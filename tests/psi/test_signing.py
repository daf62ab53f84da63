"""PSI values signed end to end: a relaying coordinator cannot alter, splice or replay them;
count-only sessions tell the parties how many customers they share, never which."""

from __future__ import annotations

import json

import pysodium
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.errors import AccessDenied, FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import signing
from fedcustomer.psi.core import unpack
from fedcustomer.psi.protocol import RECORD, REVEAL_COUNT, register_psi_handlers
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.state import alignment_path, party_path, psi_dir, work_path
from fedcustomer.server.inprocess import LocalGrid

NAMES = {"name_a": "bank", "name_b": "shop"}
DATA = {"accounts": [f"C{i:05d}" for i in range(40)], "loyalty": [f"C{i:05d}" for i in range(25, 60)]}


@pytest.fixture
def pinned(tmp_path):
    """Two partners that exchanged and pinned each other's link keys."""
    homes = [PartnerHome.create(tmp_path / "bank", "bank"), PartnerHome.create(tmp_path / "shop", "shop")]
    pubs = [signing.ensure_link_key(h) for h in homes]
    signing.pin_peer(homes[0], "shop", pubs[1])
    signing.pin_peer(homes[1], "bank", pubs[0])
    app = ClientApp()
    register_psi_handlers(
        app,
        lambda ctx: homes[int(ctx.node_config["partition-id"])],
        lambda home, dataset: list(DATA[dataset]),
        local_labels=lambda home, dataset, ids: [f"{home.root.name}:{k}" for k in range(len(ids))],
    )
    return homes, app


class MeddlingGrid(LocalGrid):
    """A coordinator that rewrites what it relays (``meddle(message) -> message``) and records it."""

    def __init__(self, app, meddle=None):
        super().__init__(app, 2)
        self.meddle = meddle or (lambda m: m)
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.before_finish: dict[int, dict] = {}
        self.homes: list[PartnerHome] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = [self.meddle(m) for m in messages]
        self.sent += messages
        if self.homes and messages and messages[0].metadata.message_type == "query.psi_finish":
            for k, home in enumerate(self.homes):
                session = str(dict(messages[0].content[RECORD])["session-id"])
                state = json.loads(party_path(home, session).read_text())
                sent = (work_path(home, session) / "values" / "send.bin").read_bytes()
                self.before_finish[k + 1] = {"secret": state["party"]["secret"], "blinded": sent.hex()}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def _rewrite(msg: Message, **changes) -> Message:
    cfg = dict(msg.content[RECORD]) | changes
    return Message(
        content=RecordDict({RECORD: ConfigRecord(cfg)}),
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
    )


def test_signed_session_between_pinned_partners_aligns_both(pinned):
    homes, app = pinned
    view = run_psi_on_grid(
        LocalGrid(app, 2), 1, 2, "accounts", "loyalty", **NAMES, session_id="s1", run_id="r1"
    )
    assert view.intersection_size == 15
    assert alignment_path(homes[0], "s1").exists() and alignment_path(homes[1], "s1").exists()


def test_an_altered_blinded_set_is_refused(pinned):
    homes, app = pinned

    def flip(msg):
        if msg.metadata.message_type == "query.psi_reblind" and msg.metadata.dst_node_id == 2:
            blob = bytearray(dict(msg.content[RECORD])["peer-blinded"])
            blob[:32] = bytes(dict(msg.content[RECORD])["peer-blinded"])[
                32:64
            ]  # splice one value over another
            return _rewrite(msg, **{"peer-blinded": bytes(blob)})
        return msg

    with pytest.raises(FederationError, match="does not verify against its pinned link key"):
        run_psi_on_grid(MeddlingGrid(app, flip), 1, 2, "accounts", "loyalty", **NAMES, session_id="s2")
    assert not alignment_path(homes[1], "s2").exists()


def test_values_replayed_from_another_run_are_refused(pinned):
    homes, app = pinned
    first = MeddlingGrid(app)
    run_psi_on_grid(first, 1, 2, "accounts", "loyalty", **NAMES, session_id="s3", run_id="run-1")
    old = next(
        m
        for m in first.sent
        if m.metadata.message_type == "query.psi_reblind" and m.metadata.dst_node_id == 2
    )
    old_cfg = dict(old.content[RECORD])

    def replay(msg):  # the bank's blinded set and signature of run-1, passed off in run-2
        if msg.metadata.message_type == "query.psi_reblind" and msg.metadata.dst_node_id == 2:
            return _rewrite(
                msg, **{"peer-blinded": old_cfg["peer-blinded"], "peer-signature": old_cfg["peer-signature"]}
            )
        return msg

    with pytest.raises(FederationError, match="does not verify"):
        run_psi_on_grid(
            MeddlingGrid(app, replay), 1, 2, "accounts", "loyalty", **NAMES, session_id="s4", run_id="run-2"
        )


def test_a_pinned_peer_without_signature_is_refused(pinned):
    homes, app = pinned

    def strip(msg):
        if msg.metadata.message_type == "query.psi_finish" and msg.metadata.dst_node_id == 1:
            cfg = dict(msg.content[RECORD])
            cfg.pop("peer-signature", None)
            return Message(
                content=RecordDict({RECORD: ConfigRecord(cfg)}),
                dst_node_id=1,
                message_type=msg.metadata.message_type,
            )
        return msg

    with pytest.raises(FederationError, match="carries no signature"):
        run_psi_on_grid(MeddlingGrid(app, strip), 1, 2, "accounts", "loyalty", **NAMES, session_id="s5")


def test_pinning_needs_a_real_key_and_another_partner(pinned, tmp_path):
    homes, _ = pinned
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(Exception, match="not a PEM public key"):
        signing.pin_peer(homes[0], "shop", bad)
    with pytest.raises(Exception, match="own link key"):
        signing.pin_peer(homes[0], "bank", signing.ensure_link_key(homes[0]))
    with pytest.raises(AccessDenied, match="carries no signature"):
        signing.check(homes[0], "shop", b"", b"statement", "blinded set")


def test_count_only_reveals_the_size_and_no_member(pinned):
    homes, app = pinned
    grid = MeddlingGrid(app)
    grid.homes = homes
    view = run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="s6", reveal=REVEAL_COUNT)
    assert view.intersection_size == 15 and view.digest == "" and view.reveal == REVEAL_COUNT
    # nothing kept: no alignment, no session state, on either side
    for home in homes:
        assert not alignment_path(home, "s6").exists()
        assert not [
            p for p in psi_dir(home).iterdir() if p.name.startswith("s6") and not p.name.endswith(".answered")
        ]
    # what each party got back is its own set raised to the peer's secret, but shuffled: it cannot
    # tell which of its values (customers) matched
    bank, shop = grid.before_finish[1], grid.before_finish[2]
    to_bank = next(
        m for m in grid.sent if m.metadata.message_type == "query.psi_finish" and m.metadata.dst_node_id == 1
    )
    got = unpack(bytes(dict(to_bank.content[RECORD])["my-doubly"]))
    in_order = [
        pysodium.crypto_scalarmult_ristretto255(bytes.fromhex(shop["secret"]), v)
        for v in unpack(bytes.fromhex(bank["blinded"]))
    ]
    assert sorted(got) == sorted(in_order) and got != in_order
    # the parties' replies to the coordinator carry sizes only
    finish = [dict(r.content[RECORD]) for r in grid.replies if r.metadata.message_type == "query.psi_finish"]
    assert all(
        set(f) == {"size", "digest", "set-size", "peer-set-size", "duplicates-removed"} for f in finish
    )
    assert all(f["digest"] == "" for f in finish)


def test_plain_mode_returns_values_in_order(pinned):
    """The control for the count-only check: without it, the answer keeps the party's order."""
    homes, app = pinned
    grid = MeddlingGrid(app)
    grid.homes = homes
    run_psi_on_grid(grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="s7")
    bank, shop = grid.before_finish[1], grid.before_finish[2]
    to_bank = next(
        m for m in grid.sent if m.metadata.message_type == "query.psi_finish" and m.metadata.dst_node_id == 1
    )
    got = unpack(bytes(dict(to_bank.content[RECORD])["my-doubly"]))
    in_order = [
        pysodium.crypto_scalarmult_ristretto255(bytes.fromhex(shop["secret"]), v)
        for v in unpack(bytes.fromhex(bank["blinded"]))
    ]
    assert got == in_order


def test_a_dp_count_is_published_by_the_initiator_and_paid_once_by_both(pinned):
    from fedcustomer.privacy.dp.budget import DatasetBudget
    from fedcustomer.psi.noisy_count import MECHANISM

    homes, app = pinned
    for home in homes:  # the partner's one budget
        cfg = home.config()
        cfg.budget = DatasetBudget(5.0, 1e-5)
        home.write_config(cfg)
    grid = MeddlingGrid(app)
    view = run_psi_on_grid(
        grid, 1, 2, "accounts", "loyalty", **NAMES, session_id="s8", reveal=REVEAL_COUNT, count_epsilon=1.0
    )
    assert view.intersection_size >= 0
    finish = {
        r.metadata.src_node_id: dict(r.content[RECORD])
        for r in grid.replies
        if r.metadata.message_type == "query.psi_finish"
    }
    assert finish[2]["size"] == -1  # the responder publishes nothing
    for home, dataset in zip(homes, ("accounts", "loyalty"), strict=True):
        charges = [c for c in home.ledger(dataset).charges() if c.mechanism == MECHANISM]
        assert len(charges) == 1 and charges[0].epsilon == pytest.approx(1.0)


def test_discrete_laplace_noise_has_the_promised_spread():
    from fedcustomer.psi.noisy_count import discrete_laplace

    draws = [discrete_laplace(1.0) for _ in range(4000)]
    p = 2.718281828**-1.0
    variance = 2 * p / (1 - p) ** 2  # of the two-sided geometric distribution
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / len(draws)
    assert abs(mean) < 0.15 and 0.8 * variance < var < 1.2 * variance


def test_a_replaced_link_key_is_refused_naming_both_fingerprints_until_re_pinned(pinned):
    homes, app = pinned
    pinned_before = signing.fingerprint(signing.pinned_key(homes[1], "bank"))
    signing.replace_link_key(homes[0])
    now = signing.fingerprint(signing.link_signer(homes[0]).public_key)
    assert now != pinned_before
    with pytest.raises(FederationError) as refused:
        run_psi_on_grid(LocalGrid(app, 2), 1, 2, "accounts", "loyalty", **NAMES, session_id="s9")
    said = " ".join(str(refused.value).split())
    assert f"signed with link key {now}" in said and f"pinned for 'bank' is {pinned_before}" in said
    signing.pin_peer(homes[1], "bank", signing.ensure_link_key(homes[0]))
    view = run_psi_on_grid(LocalGrid(app, 2), 1, 2, "accounts", "loyalty", **NAMES, session_id="s10")
    assert view.intersection_size == 15


def test_a_signature_carries_its_key_hash_and_a_malformed_one_is_refused(pinned):
    homes, _ = pinned
    message = b"statement"
    signed = signing.sign(homes[0], message)
    key = signing.link_signer(homes[0]).public_key
    assert len(signed) == signing.SIGNATURE_BYTES + signing.KEY_HASH_BYTES
    assert "SHA256:" + signed[signing.SIGNATURE_BYTES :].hex() == signing.fingerprint(key)
    signing.check(homes[1], "bank", signed, message, "blinded set")  # with its key hash
    signing.check(homes[1], "bank", signed[: signing.SIGNATURE_BYTES], message, "blinded set")  # without
    with pytest.raises(AccessDenied, match="malformed signature"):
        signing.check(homes[1], "bank", signed + b"x", message, "blinded set")
    with pytest.raises(AccessDenied, match="does not verify against its pinned link key"):
        signing.check(homes[1], "bank", signed, b"another statement", "blinded set")


def test_replacing_a_link_key_needs_one_to_replace(tmp_path):
    home = PartnerHome.create(tmp_path / "fresh", "fresh")
    with pytest.raises(Exception, match="no link key to replace"):
        signing.replace_link_key(home)
    assert not signing.link_key_path(home).exists()
