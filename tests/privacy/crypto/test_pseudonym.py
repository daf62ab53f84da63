"""Pseudonymizer: keyed, stable pseudonyms of normalised ids, and a key file kept private."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.errors import DataError, KeyMaterialError
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer
from tests.privacy.crypto.key_files import permission_bits, snapshot

KEY = bytes(range(32))


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


# --- Pseudonymizer -----------------------------------------------------------------------------


def test_pseudonyms_are_stable_across_reopen_and_private_on_disk(keys_dir: Path) -> None:
    created = Pseudonymizer.create(keys_dir)
    p = created.pseudonym("AB123456C")
    assert len(p) == 64 and int(p, 16) >= 0
    assert Pseudonymizer.open(keys_dir).pseudonym("AB123456C") == p
    assert permission_bits(keys_dir / "pseudonym.key") == 0o600 and permission_bits(keys_dir) == 0o700
    assert p != hashlib.sha256(b"AB123456C").hexdigest()  # keyed, not a plain hash


def test_pseudonyms_differ_across_keys_and_ids(tmp_path: Path) -> None:
    bank = Pseudonymizer.create(tmp_path / "bank")
    shop = Pseudonymizer.create(tmp_path / "shop")
    assert bank.pseudonym("AB123456C") != shop.pseudonym("AB123456C")
    assert bank.pseudonym("AB123456C") != bank.pseudonym("AB123456D")


@pytest.mark.parametrize("variant", ["ab123456c", "  AB123456C\t", "\nab123456C ", "ＡＢ１２３４５６Ｃ"])
def test_pseudonym_normalises_whitespace_case_and_width(keys_dir: Path, variant: str) -> None:
    ps = Pseudonymizer.create(keys_dir)
    assert ps.pseudonym(variant) == ps.pseudonym("AB123456C")


@settings(max_examples=60)
@given(
    core=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1),
    left=st.text(alphabet=" \t\n\u3000", max_size=3),
    right=st.text(alphabet=" \t\n", max_size=3),
)
def test_pseudonym_ignores_padding_and_case_for_any_id(core: str, left: str, right: str) -> None:
    ps = Pseudonymizer(Path("unused"), KEY)
    assert ps.pseudonym(left + core.lower() + right) == ps.pseudonym(core.upper())


def test_pseudonyms_batch_matches_single_calls(keys_dir: Path) -> None:
    ps = Pseudonymizer.create(keys_dir)
    ids = ["A1", "b2", " C3 "]
    assert ps.pseudonyms(ids) == [ps.pseudonym(i) for i in ids]
    assert ps.pseudonyms(iter(ids)) == ps.pseudonyms(ids)


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_id_is_a_data_error(keys_dir: Path, bad: str) -> None:
    with pytest.raises(DataError, match="empty"):
        Pseudonymizer.create(keys_dir).pseudonym(bad)


def test_pseudonym_create_refuses_existing_key(keys_dir: Path) -> None:
    Pseudonymizer.create(keys_dir)
    before = snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="already exists"):
        Pseudonymizer.create(keys_dir)
    assert snapshot(keys_dir) == before


def test_pseudonym_open_missing_key_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="not found"):
        Pseudonymizer.open(tmp_path / "keys")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b'{"format": "fedcustomer-keyring", "format_version": 1}',
        b'{"format": "fedcustomer-pseudonym-key", "format_version": 1, "key": "c2hvcnQ="}',
    ],
)
def test_malformed_pseudonym_key_is_refused_and_untouched(keys_dir: Path, content: bytes) -> None:
    Pseudonymizer.create(keys_dir)
    path = keys_dir / "pseudonym.key"
    path.write_bytes(content)
    with pytest.raises(KeyMaterialError, match="pseudonym.key"):
        Pseudonymizer.open(keys_dir)
    assert path.read_bytes() == content


def test_world_readable_pseudonym_key_is_refused(keys_dir: Path) -> None:
    Pseudonymizer.create(keys_dir)
    os.chmod(keys_dir / "pseudonym.key", 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        Pseudonymizer.open(keys_dir)


def test_pseudonymizer_repr_hides_key(keys_dir: Path) -> None:
    ps = Pseudonymizer.create(keys_dir)
    key_b64 = json.loads((keys_dir / "pseudonym.key").read_text())["key"]
    assert key_b64 not in repr(ps)
