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


def test_a_packed_record_of_another_format_is_refused_with_what_to_do():
    bad = RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: 99, pc.RECORDS_KEY: b""})})
    with pytest.raises(FederationError, match="update fedcustomer on both sides"):
        pc.unpack(bad)
    missing = RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: pc.FORMAT})})
    with pytest.raises(FederationError, match="no 'records' bytes"):
        pc.unpack(missing)


def test_undecodable_packed_bytes_are_refused_without_echoing_them():
    secret = b"customer-4711-\xff\xfe"
    bad = RecordDict({pc.PACKED_RECORD: ConfigRecord({pc.FORMAT_KEY: pc.FORMAT, pc.RECORDS_KEY: secret})})
    with pytest.raises(FederationError) as err:
        pc.unpack(bad)
    assert "could not be decoded" in str(err.value) and "4711" not in str(err.value)
