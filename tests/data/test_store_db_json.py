"""A chunk of sealed rows parses to exactly what ``json.loads`` gives, whichever parser did it."""

import json
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.data import store_db
from fedcustomer.data.store_db import parse_json_array


def _written(values: dict) -> str:
    """A row's text as :func:`store_db.seal_row` writes it."""
    return json.dumps({"ts": "", "digest": "ab" * 32, "values": values}, separators=(",", ":"))


def _same(a, b) -> bool:
    """Equal to the bit: types (1 vs 1.0 vs True), -0.0, NaN and every float's exact value."""
    return json.dumps(a) == json.dumps(b)


def _old(texts: list[str]):
    return json.loads("[" + ",".join(texts) + "]")


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e7, max_value=1e7).map(lambda f: round(f, 2)),
    st.text(),
    st.from_regex(r"[:,\[]-?[0-9]{15,25}", fullmatch=True),  # digit runs inside text: a false alarm only
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=8), VALUES, max_size=6), min_size=1, max_size=8))
def test_rows_parse_to_json_loads_objects(rows):
    texts = [_written(v) for v in rows]
    assert _same(parse_json_array(texts), _old(texts))


@pytest.mark.parametrize(
    "value",
    [
        2**64,  # orjson would read it as a float
        2**64 - 1,
        -(2**63),
        2**63 - 1,
        -(2**63) - 1,
        10**19,
        -(10**30),
        10**400,
        float("nan"),  # orjson refuses NaN and Infinity
        float("inf"),
        float("-inf"),
        -0.0,
        5e-324,
        1.7976931348623157e308,
        0.1 + 0.2,
        "\ud800",  # a lone surrogate, written as its escape
        "é \U0001f600 \u2028",
        "a:1234567890123456789012",
    ],
)
def test_edge_values_parse_as_json_does(value):
    texts = [_written({"x": value, "n": 1}), _written({"x": 2, "n": value})]
    got = parse_json_array(texts)
    assert _same(got, _old(texts))
    if isinstance(value, int):
        assert type(got[0]["values"]["x"]) is int and got[0]["values"]["x"] == value


def test_long_integers_never_reach_orjson(monkeypatch):
    calls = []
    real = store_db.orjson.loads

    def counting(data):
        calls.append(data)
        return real(data)

    monkeypatch.setattr(store_db.orjson, "loads", counting)
    assert parse_json_array([_written({"x": 12})])[0]["values"]["x"] == 12
    assert len(calls) == 1  # the common case is orjson's
    assert parse_json_array([_written({"x": 2**64 + 3})])[0]["values"]["x"] == 2**64 + 3
    assert parse_json_array([_written({"x": -(10**19)})])[0]["values"]["x"] == -(10**19)
    assert len(calls) == 1  # 19 digits or more: json alone


def test_floats_are_the_same_bits():
    values = [
        struct.unpack("<d", struct.pack("<Q", (i * 0x9E3779B97F4A7C15) % 2**64))[0] for i in range(2000)
    ]
    values = [v for v in values if math.isfinite(v)]
    texts = [_written({"f": v}) for v in values]
    got = [doc["values"]["f"] for doc in parse_json_array(texts)]
    assert [struct.pack("<d", g) for g in got] == [struct.pack("<d", v) for v in values]


@pytest.mark.parametrize("texts", [["{"], ['{"a":1}', "nope"], ['{"a":01}']])
def test_text_that_is_not_json_is_refused(texts):
    with pytest.raises(ValueError):
        parse_json_array(texts)
