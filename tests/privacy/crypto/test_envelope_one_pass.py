"""Unwrapping each record's key and opening one field under it in one pass (open_records_field):
the same keys and values as the two steps, and None (so the caller takes the two steps, which
raise that record's own error) wherever a record does not open at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import open_records, open_records_field, seal_record
from fedcustomer.privacy.crypto.keyring import (
    FileKeyRing,
    WrappedKey,
    data_key_context,
    data_key_contexts,
)
from fedcustomer.privacy.crypto.material import new_data_key
from tests.privacy.crypto.test_envelope import _Kms

PSEUDONYMS = [f"{i:064x}" for i in range(4)] + ["é" * 3, "客户"]


@pytest.fixture()
def ring(tmp_path: Path) -> FileKeyRing:
    return FileKeyRing.create(tmp_path / "keys")


def _records(ring: Any, values: list[str], *, other: str = "other") -> dict[str, Any]:
    """Sealed records of dataset ``loans``: each record's wrapped key, ``row`` and ``other`` tokens."""
    cipher = FieldCipher("loans")
    versions, blobs, rows, others = [], [], [], []
    for pseudonym, value in zip(PSEUDONYMS, values):
        record = seal_record(ring, cipher, pseudonym, {"row": value, other: value[::-1]})
        versions.append(record.wrapped.kek_version)
        blobs.append(record.wrapped.blob)
        rows.append(record.tokens["row"])
        others.append(record.tokens[other])
    return {
        "cipher": cipher,
        "pseudonyms": PSEUDONYMS[: len(values)],
        "versions": versions,
        "blobs": blobs,
        "rows": rows,
        "others": others,
    }


def _one_pass(ring: Any, r: dict[str, Any]) -> Any:
    return open_records_field(ring, r["cipher"], r["pseudonyms"], r["versions"], r["blobs"], "row", r["rows"])


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.text(max_size=40), min_size=0, max_size=len(PSEUDONYMS)))
def test_one_pass_gives_the_two_steps_keys_and_values(tmp_path_factory: Any, values: list[str]) -> None:
    ring = FileKeyRing.create(tmp_path_factory.mktemp("keys") / "keys")
    r = _records(ring, values)
    opened = _one_pass(ring, r)
    assert opened is not None
    keys, raw = opened
    wrapped = [WrappedKey(v, b) for v, b in zip(r["versions"], r["blobs"])]
    two_steps = open_records(ring, r["cipher"], r["pseudonyms"], wrapped)
    assert [b.decode("utf-8") for b in raw] == two_steps.open_field("row", r["rows"]) == values
    # the keys handed back open the records' other fields, as the two steps' keys do
    assert keys.open_field("other", r["others"]) == two_steps.open_field("other", r["others"])
    assert keys.pseudonyms == list(r["pseudonyms"])


def test_one_pass_opens_keys_of_several_kek_versions(ring: FileKeyRing) -> None:
    first = _records(ring, ["a", "b"])
    ring.rotate()
    second = _records(ring, ["c", "d", "e"])
    merged = {k: first[k] + second[k] for k in ("versions", "blobs", "rows")}
    merged["pseudonyms"] = PSEUDONYMS[:2] + PSEUDONYMS[:3]
    merged["cipher"] = first["cipher"]
    # the second batch reused the first pseudonyms under other keys: each key opens its own token
    opened = _one_pass(ring, merged)
    assert opened is not None
    assert [b.decode() for b in opened[1]] == ["a", "b", "c", "d", "e"]
    assert sorted(set(merged["versions"])) == [1, 2]


def _mangled(r: dict[str, Any], what: str, ring: FileKeyRing) -> dict[str, Any]:
    r = {k: (list(v) if isinstance(v, list) else v) for k, v in r.items()}
    if what == "key altered":
        r["blobs"][1] = r["blobs"][1][:-1] + bytes([r["blobs"][1][-1] ^ 1])
    elif what == "key of another customer":
        r["blobs"][1] = r["blobs"][2]
    elif what == "key missing":
        r["blobs"][1] = None
    elif what == "key short":
        r["blobs"][1] = r["blobs"][1][:20]
    elif what == "unknown kek version":
        r["versions"][1] = 9
    elif what == "version not a number":
        r["versions"][1] = "1"
    elif what == "token altered":
        r["rows"][1] = r["rows"][1][:-1] + bytes([r["rows"][1][-1] ^ 1])
    elif what == "token of another customer":
        r["rows"][1] = r["rows"][2]
    elif what == "token of another field":
        r["rows"][1] = r["others"][1]
    elif what == "token missing":
        r["rows"][1] = None
    elif what == "token short":
        r["rows"][1] = r["rows"][1][:20]
    elif what == "token format":
        r["rows"][1] = b"\x02" + r["rows"][1][1:]
    elif what == "data key of another size":
        short_key = new_data_key()[:16]
        wrapped = ring.wrap(short_key, data_key_context("loans", PSEUDONYMS[1]))
        r["versions"][1], r["blobs"][1] = wrapped.kek_version, wrapped.blob
    elif what == "fewer tokens than keys":
        r["rows"] = r["rows"][:-1]
    elif what == "pseudonym not text":
        r["pseudonyms"] = [*r["pseudonyms"][:1], 7, *r["pseudonyms"][2:]]
    return r


CASES = [
    "key altered",
    "key of another customer",
    "key missing",
    "key short",
    "unknown kek version",
    "version not a number",
    "token altered",
    "token of another customer",
    "token of another field",
    "token missing",
    "token short",
    "token format",
    "data key of another size",
    "fewer tokens than keys",
    "pseudonym not text",
]


@pytest.mark.parametrize("what", CASES)
def test_a_record_that_does_not_open_at_once_sends_the_caller_to_the_two_steps(
    ring: FileKeyRing, what: str
) -> None:
    r = _records(ring, ["x", "y", "z"])
    assert _one_pass(ring, r) is not None
    assert _one_pass(ring, _mangled(r, what, ring)) is None


def test_a_retired_version_is_not_opened_in_line(ring: FileKeyRing) -> None:
    r = _records(ring, ["x"])
    ring.rotate()
    ring.retire(1)
    assert _one_pass(ring, r) is None


def test_a_version_another_process_added_goes_to_the_two_steps_which_read_it(
    tmp_path: Path, ring: FileKeyRing
) -> None:
    other = FileKeyRing.open(tmp_path / "keys")
    other.rotate()  # this handle has never seen version 2
    r = _records(other, ["x", "y"])
    assert _one_pass(ring, r) is None
    wrapped = [WrappedKey(v, b) for v, b in zip(r["versions"], r["blobs"])]
    assert open_records(ring, r["cipher"], r["pseudonyms"], wrapped).open_field("row", r["rows"]) == [
        "x",
        "y",
    ]
    assert _one_pass(ring, r) is not None  # the two steps re-read the keyring: version 2 is known now


def test_a_keyring_without_an_in_line_opener_goes_to_the_two_steps() -> None:
    kms = _Kms()
    r = _records(kms, ["x", "y"])
    assert _one_pass(kms, r) is None


def test_the_aad_heads_are_the_one_value_aads_up_to_the_pseudonym(ring: FileKeyRing) -> None:
    cipher = FieldCipher("loans")
    from fedcustomer.privacy.crypto.keyring import data_key_context_head
    from fedcustomer.privacy.crypto.material import lp

    for pseudonym in PSEUDONYMS:
        tail = lp(pseudonym.encode("utf-8"))
        assert cipher.aad_head("row") + tail == cipher._aad("row", pseudonym)
        assert data_key_context_head("loans") + tail == data_key_contexts("loans", [pseudonym])[0]
