"""The intersection-sum streamed in signed chunks: many chunks give the one-chunk result (first row of
a repeated id wins, as in one process), every chunk stays signed in its place (altered, dropped,
reordered, replayed, relabelled: refused before any work, nothing kept, nobody charged), progress
without values, and a sum session answers only sum messages."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedcustomer.errors import AccessDenied, FederationError
from fedcustomer.psi import intersection_sum
from fedcustomer.psi.intersection_sum import MECHANISM, SumParams
from fedcustomer.psi.protocol import RECORD, PartyLimits
from fedcustomer.psi.sum_protocol import run_sum_on_grid
from tests.psi.test_sum_protocol import ARGS, COLS, DATA, IDS, NAMES, RecordingGrid, _charges, _left, nodes

BANK, SHOP = 1, 2


@pytest.fixture
def exact(monkeypatch):
    """No noise: the released figures are the exact ones, so runs can be compared."""
    monkeypatch.setattr(intersection_sum.SumParams, "sum_noise", lambda self: 0)
    monkeypatch.setattr(intersection_sum.SumParams, "count_noise", lambda self: 0)


@pytest.fixture
def repeats(monkeypatch):
    """Repeated ids whose later rows disagree with the first: the first row must win."""
    ids = {k: list(v) for k, v in IDS.items()}
    data = {k: {c: list(v) for c, v in cols.items()} for k, cols in DATA.items()}
    ids["accounts"].append("CU00071Q")  # not a defaulter in its first row
    data["accounts"]["default"].append(1.0)
    ids["loyalty"] += ["cu00061q", "CU00130q"]  # selected first / not selected first
    data["loyalty"]["top_segment"] += ["no", "yes"]
    monkeypatch.setattr("tests.psi.test_sum_protocol.IDS", ids)
    monkeypatch.setattr("tests.psi.test_sum_protocol.DATA", data)


def _run(app, chunk, meddle=None, **kw):
    return run_sum_on_grid(RecordingGrid(app, meddle), BANK, SHOP, *ARGS, **COLS, **NAMES, params=SumParams(2.0),
                           chunk_size=chunk, **kw)  # fmt: skip


def test_many_chunks_give_the_one_chunk_result(nodes, exact, repeats):
    homes, app = nodes
    views = [_run(app, chunk, run_id=f"r{chunk}") for chunk in (1000, 40, 7)]
    # 60 shared customers in the top segment, 30 of them defaulted; the repeats change nothing
    assert [(v.noisy_count, v.noisy_sum, v.rate) for v in views] == [(60, 30.0, 0.5)] * 3
    assert [(v.chunks_a, v.chunks_b) for v in views] == [(1, 1), (4, 4), (23, 23)]
    assert [(v.set_size_a, v.set_size_b) for v in views] == [(160, 160)] * 3
    for (
        v
    ) in views:  # the bank's ids with their ciphertexts (and its key per chunk), the shop's set and answer
        assert v.bytes_relayed == 160 * (32 + 512) + v.chunks_a * 256 + 2 * 160 * 32 + 512
    for home, dataset in zip(homes, ARGS, strict=True):
        paid = [c for c in home.ledger(dataset).charges() if c.mechanism == MECHANISM]
        assert [c.epsilon for c in paid] == [pytest.approx(2.0)] * 3  # once per run, same epsilon as before
        assert _left(home) == []


def _cfg(msg: Message) -> dict:
    return dict(msg.content[RECORD])


def _rewrite(msg: Message, cfg: dict) -> Message:
    return Message(content=RecordDict({RECORD: ConfigRecord(cfg)}), dst_node_id=msg.metadata.dst_node_id,
                   message_type=msg.metadata.message_type)  # fmt: skip


def _flip(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 1])


class Meddle:
    """Rewrites the ``index``-th chunk one node receives in ``step`` messages with ``change(cfg, seen)``."""

    def __init__(self, step, node, index, change):
        self.step, self.node, self.index, self.change, self.seen = step, node, index, change, {}

    def __call__(self, msg: Message) -> Message:
        if msg.metadata.message_type != f"query.{self.step}" or msg.metadata.dst_node_id != self.node:
            return msg
        cfg = _cfg(msg)
        if "peer-blinded" not in cfg and "my-doubly" not in cfg:
            return msg
        self.seen.setdefault(cfg["index"], cfg)
        return _rewrite(msg, self.change(cfg, self.seen)) if cfg["index"] == self.index else msg


def _without(*keys):
    return lambda cfg, seen: {k: v for k, v in cfg.items() if k not in keys}


CHUNK = ("peer-blinded", "peer-ciphertexts", "peer-public-key", "peer-signature", "index", "chunks", "count")
CASES = {
    "altered padded set": (Meddle("psi_sum_step", BANK, 1, lambda c, s: c | {"peer-blinded": _flip(c["peer-blinded"])}),
                           "does not verify"),
    "altered ciphertexts": (Meddle("psi_sum_step", SHOP, 2, lambda c, s: c | {"peer-ciphertexts": _flip(c["peer-ciphertexts"])}),
                            "does not verify"),
    "altered key": (Meddle("psi_sum_step", SHOP, 0, lambda c, s: c | {"peer-public-key": _flip(c["peer-public-key"])}),
                    "does not verify"),
    "dropped chunk": (Meddle("psi_sum_step", SHOP, 1, _without(*CHUNK)), "expected chunk 1 .* got chunk 2"),
    "reordered chunk": (Meddle("psi_sum_step", BANK, 1, _without(*CHUNK)), "expected chunk 1 .* got chunk 2"),
    "relabelled index": (Meddle("psi_sum_step", BANK, 1, lambda c, s: c | {"index": 2}), "does not verify"),
    "replayed chunk": (Meddle("psi_sum_step", SHOP, 1, lambda c, s: c | {k: s[0][k] for k in CHUNK}),
                       "already answered chunk 0"),
    "relabelled sender": (Meddle("psi_sum_step", BANK, 0, lambda c, s: c | {"peer": "mallory"}), "another peer"),
    "relabelled set size": (Meddle("psi_sum_step", SHOP, 0, lambda c, s: c | {"count": 170}), "does not verify"),
    "altered answer chunk": (Meddle("psi_sum_accept", SHOP, 1, lambda c, s: c | {"my-doubly": _flip(c["my-doubly"])}),
                             "does not verify"),
    "replayed answer chunk": (Meddle("psi_sum_accept", SHOP, 1, lambda c, s: c | {k: s[0][k] for k in
                              ("my-doubly", "index", "peer-signature")}), "expected answer chunk 1, got chunk 0"),
    "dropped last answer chunk": (Meddle("psi_sum_answer", SHOP, 3, _without("my-doubly", "index")),
                                  "came back answered"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_chunk_is_refused_before_any_work_and_nobody_pays(nodes, case):
    homes, app = nodes
    meddle, reason = CASES[case]
    meddle.seen.clear()
    with pytest.raises(FederationError, match=reason):
        _run(app, 40, meddle)
    assert _charges(homes) == [[], []]
    assert [_left(h) for h in homes] == [[], []]  # both sessions dropped: no secret, no value kept


def test_an_altered_answer_is_refused_by_the_value_holder_after_the_retailer_paid(nodes):
    homes, app = nodes

    def alter(msg):
        if msg.metadata.message_type != "query.psi_sum_finish":
            return msg
        return _rewrite(msg, _cfg(msg) | {"sum": _flip(_cfg(msg)["sum"])})

    with pytest.raises(FederationError, match="does not verify"):
        _run(app, 40, alter)
    assert [len(c) for c in _charges(homes)] == [0, 1]  # the retailer released its answer, the bank nothing
    assert [_left(h) for h in homes] == [[], []]


def test_progress_counts_chunks_and_never_a_value(nodes, caplog):
    homes, app = nodes
    lines: list[str] = []
    with caplog.at_level(logging.INFO, logger="fedcustomer.psi"):
        _run(app, 50, progress=lines.append)
    assert lines and lines[-1].endswith("4/4 answer chunks back to shop; released")
    assert any("bank 4/4 chunks to shop" in line for line in lines)
    text = "\n".join(lines + [r.getMessage() for r in caplog.records])
    assert "reblinded chunk 4/4 of its peer's values" in text
    for raw in IDS["accounts"] + IDS["loyalty"]:
        assert raw not in text and raw.lower() not in text


def test_a_sum_session_answers_only_sum_messages(nodes):
    from fedcustomer.psi.protocol import handle_finish, handle_reblind
    from fedcustomer.psi.sum_protocol import handle_finish as sum_finish
    from fedcustomer.psi.sum_protocol import handle_open
    from tests.psi.test_sum_protocol import load_column

    homes, _ = nodes
    cfg = {"session-id": "s1", "dataset": "loyalty", "role": "predicate", "column": "top_segment", "peer": "bank",
           "epsilon": 1.0, "value-max": 1.0, "chunk-size": 50}  # fmt: skip
    first = handle_open(homes[1], cfg, load_column, PartyLimits(), now=1000.0)
    assert (first["index"], first["chunks"], first["count"]) == (0, 4, 160)
    with pytest.raises(AccessDenied, match="another mode"):
        handle_finish(homes[1], {"session-id": "s1"}, PartyLimits(), now=1001.0)
    with pytest.raises(AccessDenied, match="another mode"):
        handle_reblind(homes[1], {"session-id": "s1", "peer": "bank", "peer-blinded": b"\0" * 32},
                       PartyLimits(), now=1001.0)  # fmt: skip
    with pytest.raises(AccessDenied, match="not the value holder"):
        sum_finish(homes[1], {"session-id": "s1", "sum": b"1", "count": 1}, PartyLimits(), now=1001.0)
    assert _charges(homes) == [[], []]


@pytest.mark.parametrize("role", ["value", "predicate"])
def test_a_session_reads_its_column_batch_by_batch_and_a_bad_cell_leaves_nothing(nodes, role):
    """The session takes the next batch only once the last one's cells are on its disk, asks for
    batches of at most its chunk size, and a bad cell in a later batch names its row; the reader is
    closed and the session leaves nothing behind."""
    from fedcustomer.errors import DataError
    from fedcustomer.psi.state import psi_dir, work_path
    from fedcustomer.psi.sum_input import input_file
    from fedcustomer.psi.sum_protocol import handle_open
    from tests.psi.test_sum_protocol import load_column

    homes, _ = nodes
    home, dataset, column = (
        (homes[0], *ARGS[:1], "default") if role == "value" else (homes[1], ARGS[1], "top_segment")
    )
    asked, closed = [], []

    def batches(home_, dataset_, column_, size):
        asked.append(size)
        try:
            for k, (ids, cells) in enumerate(load_column(home_, dataset_, column_, size)):
                if k:  # the batches before this one are parsed and on disk by now
                    path = work_path(home, "by-batch") / input_file(role)
                    assert path.stat().st_size == k * size * (8 if role == "value" else 1)
                yield ids, (["n/a"] + cells[1:] if k == 3 else cells)
        finally:
            closed.append(True)

    cfg = {"session-id": "by-batch", "dataset": dataset, "role": role, "column": column,
           "peer": "shop" if role == "value" else "bank", "epsilon": 1.0, "value-max": 1.0, "chunk-size": 16}  # fmt: skip
    with pytest.raises(DataError, match=f"column '{column}', row 48: not a") as info:
        handle_open(home, cfg, batches, PartyLimits(), now=1000.0)
    assert "n/a" not in str(info.value) and asked == [16] and closed == [True]
    assert not psi_dir(home).exists() or not any(psi_dir(home).iterdir())
