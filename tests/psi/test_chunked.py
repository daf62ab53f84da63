"""Two-party PSI streamed in chunks over Flower messages: many small chunks give the single-message
result, every chunk stays signed in its place (drop, reorder, replay, tamper: refused, nothing kept or
charged), count-only answers unlinkable to the owner's order, progress per chunk without values."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.partner.ledger_audit import check_ledger_against_audit, log_entries
from fedcustomer.privacy.audit.records import ACTION_PSI_RELEASE
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.psi.chunked import MAX_CHUNK_SIZE
from fedcustomer.psi.core import POINT_BYTES, unpack
from fedcustomer.psi.noisy_count import MECHANISM
from fedcustomer.psi.protocol import (
    MSG_ACCEPT,
    MSG_BLIND,
    MSG_FINISH,
    MSG_REBLIND,
    RECORD,
    REVEAL_COUNT,
)
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.state import alignment_path, load_alignment, party_path, psi_dir, work_path
from fedcustomer.server.inprocess import LocalGrid
from tests.psi.raw_messages import send
from tests.psi.test_signing import DATA, NAMES, MeddlingGrid, pinned

BANK, SHOP = 1, 2


def _cfg(msg: Message) -> dict:
    return dict(msg.content[RECORD])


def _rewrite(msg: Message, **changes) -> Message:
    return Message(
        content=RecordDict({RECORD: ConfigRecord(_cfg(msg) | changes)}),
        dst_node_id=msg.metadata.dst_node_id,
        message_type=msg.metadata.message_type,
    )


def _customers(home, session):
    return [label.split(":")[1] for label in load_alignment(home, session)]


def test_many_small_chunks_give_the_single_message_result(pinned):
    homes, app = pinned
    one = run_psi_on_grid(LocalGrid(app, 2), BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="one")
    grid = MeddlingGrid(app)
    many = run_psi_on_grid(grid, BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="many", chunk_size=4)
    assert (many.chunks_a, many.chunks_b, many.chunk_size) == (10, 9, 4)  # 40 and 35 ids
    assert (many.set_size_a, many.set_size_b, many.intersection_size) == (40, 35, 15)
    assert many.bytes_relayed == one.bytes_relayed == 2 * (40 + 35) * POINT_BYTES
    for home in homes:  # the same shared customers (the agreed order depends on each session's secrets)
        assert len(load_alignment(home, "many")) == 15
        assert sorted(_customers(home, "many")) == sorted(_customers(home, "one"))
        assert not party_path(home, "many").exists() and not work_path(home, "many").exists()
    bank_rows = [int(c) for c in _customers(homes[0], "many")]
    shop_rows = [int(c) for c in _customers(homes[1], "many")]
    assert [DATA["accounts"][r] for r in bank_rows] == [DATA["loyalty"][r] for r in shop_rows]
    for msg in grid.sent:  # no message carries more than one chunk of values
        for key in ("peer-blinded", "my-doubly"):
            if key in _cfg(msg):
                assert len(_cfg(msg)[key]) <= 4 * POINT_BYTES
    reblinds = [m for m in grid.sent if m.metadata.message_type == f"query.{MSG_REBLIND}"]
    assert len(reblinds) == 10 + 9


def test_one_chunk_takes_three_messages_per_partner(pinned):
    homes, app = pinned
    grid = MeddlingGrid(app)
    run_psi_on_grid(grid, BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="three", chunk_size=40)
    assert [m.metadata.message_type for m in grid.sent][::2] == [
        f"query.{MSG_BLIND}",
        f"query.{MSG_REBLIND}",
        f"query.{MSG_FINISH}",
    ]
    assert len(grid.sent) == 6


def test_count_only_over_chunks_reveals_the_size_and_no_member(pinned):
    homes, app = pinned
    grid = MeddlingGrid(app)
    view = run_psi_on_grid(
        grid, BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="cnt", reveal=REVEAL_COUNT, chunk_size=6
    )
    assert view.intersection_size == 15 and view.digest == ""
    for home in homes:  # nothing kept
        assert not alignment_path(home, "cnt").exists()
        assert not [p for p in psi_dir(home).iterdir() if p.name.startswith("cnt")]
    # no answer comes back while the peer's set is incomplete; then the answer comes sorted by value,
    # chunk after chunk, unrelated to the order in which the owner sent its values
    replies = [r for r in grid.replies if r.metadata.message_type == f"query.{MSG_REBLIND}"]
    assert sum("doubly" in _cfg(r) for r in replies) == 2  # one per side, with the last chunk
    to_bank = [
        v
        for m in grid.sent
        if m.metadata.dst_node_id == BANK and "my-doubly" in _cfg(m)
        for v in unpack(bytes(_cfg(m)["my-doubly"]))
    ]
    assert len(to_bank) == 40 and to_bank == sorted(to_bank)


def test_a_dp_count_over_chunks_is_paid_once_by_each_party(pinned):
    homes, app = pinned
    for home in homes:
        cfg = home.config()
        cfg.budget = DatasetBudget(5.0, 1e-5)
        home.write_config(cfg)
    run_psi_on_grid(LocalGrid(app, 2), BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="dp",
                    reveal=REVEAL_COUNT, count_epsilon=1.0, chunk_size=7)  # fmt: skip
    for home, dataset in zip(homes, ("accounts", "loyalty"), strict=True):
        charges = [c for c in home.ledger(dataset).charges() if c.mechanism == MECHANISM]
        assert len(charges) == 1 and charges[0].epsilon == pytest.approx(1.0)
        # each party's audit log records the release it paid, and the ledger row agrees with it
        with home.open_audit_log() as log:
            (entry,) = log.query(action=ACTION_PSI_RELEASE)
        assert entry.decision == "allowed" and entry.dataset == dataset and entry.purpose == "record_linkage"
        assert entry.details["kind"] == "count" and entry.details["charge_key"] == charges[0].charge_key
        assert entry.details["epsilon"] == pytest.approx(1.0) and not entry.details["replayed"]
        report = check_ledger_against_audit(home.ledger(dataset).all_charges(), log_entries(home.audit_dir))
        assert report.ok and report.checked_by_kind == {"psi_release": 1} and report.unlogged == []


# --- a dishonest coordinator, message by message -------------------------------------------
def _open(grid, session, chunk=10, run_id="r1"):
    common = {"session-id": session, "chunk-size": chunk, "run-id": run_id}
    bank = send(grid, BANK, MSG_BLIND, {**common, "dataset": "accounts", "role": "initiator", "peer": "shop"})
    shop = send(grid, SHOP, MSG_BLIND, {**common, "dataset": "loyalty", "role": "responder", "peer": "bank"})
    assert not bank.has_error() and not shop.has_error()
    chunks = [_cfg(bank)]
    while len(chunks) < chunks[0]["chunks"]:
        chunks.append(_cfg(send(grid, BANK, MSG_ACCEPT, {"session-id": session, "want-next": True})))
    return chunks


def _reblind(grid, session, chunk, **changes):
    cfg = {
        "session-id": session,
        "peer": "bank",
        "peer-blinded": chunk["blinded"],
        "index": chunk["index"],
        "chunks": chunk["chunks"],
        "count": chunk["count"],
        "peer-signature": chunk["signature"],
    }
    return send(grid, SHOP, MSG_REBLIND, cfg | changes)


def _refused(reply, *needles):
    assert reply.has_error(), "the partner answered a chunk it must refuse"
    for needle in needles:
        assert needle in reply.error.reason, reply.error.reason
    return reply.error.reason


def test_dropped_reordered_replayed_or_altered_chunks_are_refused_and_change_nothing(pinned):
    homes, app = pinned
    grid = LocalGrid(app, 2)
    chunks = _open(grid, "raw")  # the bank's 40 values in 4 chunks
    assert [c["index"] for c in chunks] == [0, 1, 2, 3]
    assert not _reblind(grid, "raw", chunks[0]).has_error()
    before = party_path(homes[1], "raw").read_bytes()
    _refused(_reblind(grid, "raw", chunks[2]), "expected chunk 1", "got chunk 2", "dropped or reordered")
    _refused(_reblind(grid, "raw", chunks[2], index=1), "does not verify")  # relabelled: signature breaks
    _refused(_reblind(grid, "raw", chunks[0]), "already answered chunk 0")  # replayed within the session
    altered = bytearray(chunks[1]["blinded"])
    altered[:32] = chunks[1]["blinded"][32:64]
    _refused(_reblind(grid, "raw", chunks[1], **{"peer-blinded": bytes(altered)}), "does not verify")
    _refused(_reblind(grid, "raw", chunks[1], count=41), "does not verify")  # the set size is signed too
    unsigned = {"peer-signature": b""}
    _refused(_reblind(grid, "raw", chunks[1], **unsigned), "carries no signature")
    assert party_path(homes[1], "raw").read_bytes() == before  # every refusal left the session as it was
    assert not _reblind(grid, "raw", chunks[1]).has_error()  # the right chunk still goes through


def test_a_chunk_from_another_run_is_refused_and_nothing_is_charged(pinned):
    homes, app = pinned
    for home in homes:
        cfg = home.config()
        cfg.budget = DatasetBudget(5.0, 1e-5)
        home.write_config(cfg)
    first = MeddlingGrid(app)
    run_psi_on_grid(first, BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="run1", run_id="run-1",
                    chunk_size=10)  # fmt: skip
    old = next(
        m
        for m in first.sent
        if m.metadata.message_type == f"query.{MSG_REBLIND}"
        and _cfg(m)["index"] == 1
        and m.metadata.dst_node_id == SHOP
    )

    def replay(msg):  # the bank's chunk 1 of run-1, signature and all, passed off in run-2
        if msg.metadata.message_type == f"query.{MSG_REBLIND}" and msg.metadata.dst_node_id == SHOP:
            if _cfg(msg)["index"] == 1:
                return _rewrite(msg, **{k: _cfg(old)[k] for k in ("peer-blinded", "peer-signature")})
        return msg

    with pytest.raises(FederationError, match="does not verify"):
        run_psi_on_grid(MeddlingGrid(app, replay), BANK, SHOP, "accounts", "loyalty", **NAMES,
                        session_id="run2", run_id="run-2", reveal=REVEAL_COUNT, count_epsilon=1.0,
                        chunk_size=10)  # fmt: skip
    for home, dataset in zip(homes, ("accounts", "loyalty"), strict=True):
        assert [c for c in home.ledger(dataset).charges() if c.mechanism == MECHANISM] == []
        assert not party_path(home, "run2").exists() and not work_path(home, "run2").exists()


def test_an_altered_or_dropped_answer_chunk_is_refused(pinned):
    homes, app = pinned

    def alter(msg):
        if msg.metadata.message_type == f"query.{MSG_ACCEPT}" and "my-doubly" in _cfg(msg):
            blob = bytearray(_cfg(msg)["my-doubly"])
            blob[0] ^= 1
            return _rewrite(msg, **{"my-doubly": bytes(blob)})
        return msg

    with pytest.raises(FederationError, match="does not verify"):
        run_psi_on_grid(MeddlingGrid(app, alter), BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="alt",
                        chunk_size=10)  # fmt: skip

    def drop_last(msg):  # the coordinator keeps the bank's last answer chunk to itself
        if msg.metadata.message_type == f"query.{MSG_FINISH}" and msg.metadata.dst_node_id == BANK:
            cfg = {k: v for k, v in _cfg(msg).items() if k not in ("my-doubly", "peer-signature", "index")}
            return Message(content=RecordDict({RECORD: ConfigRecord(cfg)}), dst_node_id=BANK,
                           message_type=msg.metadata.message_type)  # fmt: skip
        return msg

    with pytest.raises(FederationError, match="3 of the 4 chunks of our values came back"):
        run_psi_on_grid(MeddlingGrid(app, drop_last), BANK, SHOP, "accounts", "loyalty", **NAMES,
                        session_id="drop", chunk_size=10)  # fmt: skip
    assert not alignment_path(homes[0], "drop").exists() and not party_path(homes[0], "drop").exists()


def test_the_peer_set_size_is_capped_before_any_work(pinned):
    homes, app = pinned
    grid = LocalGrid(app, 2)
    chunks = _open(grid, "cap")
    grid.contexts[SHOP].node_config["psi-max-set-size"] = 39
    _refused(_reblind(grid, "cap", chunks[0]), "AccessDenied", "40 values", "maximum of 39")
    assert not (work_path(homes[1], "cap") / "reblind-0").exists()


def test_chunk_size_must_be_sane(pinned):
    homes, app = pinned
    for bad in (0, MAX_CHUNK_SIZE + 1, "10"):
        with pytest.raises(ConfigError, match="chunk size"):
            run_psi_on_grid(LocalGrid(app, 2), BANK, SHOP, "accounts", "loyalty", **NAMES, chunk_size=bad)
    reply = send(LocalGrid(app, 2), BANK, MSG_BLIND, {"session-id": "big", "dataset": "accounts",
                 "role": "initiator", "peer": "shop", "chunk-size": MAX_CHUNK_SIZE + 1})  # fmt: skip
    _refused(reply, "ConfigError", "chunk size")
    assert not work_path(homes[0], "big").exists()


def test_progress_per_chunk_on_both_sides_and_the_coordinator_without_values(pinned, caplog):
    homes, app = pinned
    lines: list[str] = []
    with caplog.at_level(logging.INFO, logger="fedcustomer.psi"):
        run_psi_on_grid(LocalGrid(app, 2), BANK, SHOP, "accounts", "loyalty", **NAMES, session_id="prog",
                        chunk_size=10, progress=lines.append)  # fmt: skip
    assert lines[-1] == (
        "PSI prog: bank 4/4 chunks reblinded by its peer, 4/4 answered; "
        "shop 4/4 chunks reblinded by its peer, 4/4 answered"
    )
    assert any("bank 1/4 chunks reblinded" in line for line in lines)
    party = [r.getMessage() for r in caplog.records if r.name == "fedcustomer.psi.chunked"]
    assert any("(shop): reblinded chunk 4/4 of its peer's values (40 of 40)" in m for m in party)
    assert any("(bank): sent chunk 2/4 of its values (20 of 40)" in m for m in party)
    assert any("(bank): took back chunk 4/4" in m for m in party)
    text = "\n".join(lines + party)
    assert not [i for i in DATA["accounts"] + DATA["loyalty"] if i in text]
