"""Packed message content: the records restored exactly, the size limit, and malformed input refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedcustomer.common import packed_content as pc
from fedcustomer.errors import FederationError


def _content() -> RecordDict:
    rng = np.random.default_rng(0)
    return RecordDict(
        {
            "embeddings": ArrayRecord({"rows": Array(rng.normal(size=(50, 4)).astype(np.float32))}),
            "positions": ArrayRecord({"ids": Array(np.arange(7, dtype=np.int64))}),
            "config": ConfigRecord({"step": 3, "then": "vertical_fit", "blob": b"\x00\x01", "ok": True}),
            "metrics": MetricRecord({"loss": 0.25, "n": 50}),
        }
    )


def test_packed_content_restores_every_record_and_array_exactly():
    original = _content()
    packed = pc.pack(original)
    assert packed is not None and pc.is_packed(packed)
    restored = pc.unpack(packed)
    assert list(restored.keys()) == list(original.keys())
    for key in ("embeddings", "positions"):
        for name, array in original[key].items():
            np.testing.assert_array_equal(restored[key][name].numpy(), array.numpy())
            assert restored[key][name].numpy().dtype == array.numpy().dtype
    assert dict(restored["config"]) == dict(original["config"])
    assert dict(restored["metrics"]) == dict(original["metrics"])


def test_a_packed_message_is_three_objects_whatever_it_carries():
    original = _content()
    # the dict, 4 records, 2 arrays and their 2 chunks: each object its own request when deployed
    assert len(get_all_nested_objects(original)) == 9
    packed = pc.pack(original)
    assert packed is not None and len(get_all_nested_objects(packed)) == 2  # dict + one record (+ message)


def test_unpacked_content_passes_unpack_unchanged():
    original = _content()
    assert pc.unpack(original) is original


def test_content_over_the_limit_empty_or_already_packed_is_not_packed():
    original = _content()
    assert pc.pack(original, limit=100) is None  # bigger than the limit: sent as Flower sends it
    assert pc.pack(RecordDict()) is None
    packed = pc.pack(original)
    assert packed is not None and pc.pack(packed) is None


def _of_format(fmt) -> RecordDict:
    return RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: fmt, pc.RECORDS_KEY: b""})})


def test_a_packed_record_of_another_format_is_refused_with_what_to_do():
    # newer than this release reads: the reader is the older side
    with pytest.raises(
        FederationError, match="format 99; this node reads format 1: update fedcustomer on this node"
    ):
        pc.unpack(_of_format(99))
    # older than any format this release reads: the sender is the older side
    with pytest.raises(FederationError, match="format 0; .*: update fedcustomer on node 7"):
        pc.unpack(_of_format(0), here="the coordinator", there="node 7")
    with pytest.raises(FederationError, match="format unknown; .*on both sides to the same release"):
        pc.unpack(_of_format("v2"))
    missing = RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: pc.FORMAT})})
    with pytest.raises(FederationError, match="no 'records' bytes"):
        pc.unpack(missing)


def test_undecodable_packed_bytes_are_refused_without_echoing_them():
    secret = b"customer-4711-\xff\xfe"
    bad = RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: pc.FORMAT, pc.RECORDS_KEY: secret})})
    with pytest.raises(FederationError) as err:
        pc.unpack(bad)
    assert "could not be decoded" in str(err.value) and "4711" not in str(err.value)


def test_formats_are_declared_and_taken_out_and_a_malformed_declaration_reads_as_none():
    content = RecordDict({"config": ConfigRecord({"step": 1})})
    assert pc.take_formats(content) is None  # an older sender: no declaration
    pc.add_formats(content)
    assert pc.take_formats(content) == pc.READ_FORMATS == (pc.FORMAT,)
    assert list(content.keys()) == ["config"]  # taken out: the handlers never see it
    for forged in (
        ConfigRecord({pc.FORMATS_KEY: ["1"]}),
        ConfigRecord({"other": 1}),
        ConfigRecord({pc.FORMATS_KEY: 1}),
    ):
        content[pc.FORMATS_RECORD] = forged
        assert pc.take_formats(content) == ()
    content[pc.FORMATS_RECORD] = ConfigRecord({pc.FORMATS_KEY: [7, 9]})
    assert pc.take_formats(content) == (7, 9)
