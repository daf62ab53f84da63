"""Tests for fedcustomer.privacy.crypto: field envelope encryption, the KEK keyring, pseudonyms."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.common import files as common_files
from fedcustomer.errors import DataError, IntegrityError, KeyMaterialError
from fedcustomer.privacy.crypto import secret_files
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import (
    FileKeyRing,
    KekInfo,
    KeyRing,
    WrappedKey,
    data_key_context,
    rewrap,
)
from fedcustomer.privacy.crypto.material import new_data_key
from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PSEUDO_A = "a" * 64
PSEUDO_B = "b" * 64
texts = st.text(max_size=200)
names = st.text(min_size=1, max_size=40)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: to prove a failed call wrote nothing."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


# --- FieldCipher: round trips ------------------------------------------------------------------


@given(dataset=names, field=names, pseudonym=names, value=texts)
def test_field_round_trips_any_unicode_value_and_names(
    dataset: str, field: str, pseudonym: str, value: str
) -> None:
    cipher = FieldCipher(dataset)
    token = cipher.encrypt(KEY, field, pseudonym, value)
    assert cipher.decrypt(KEY, field, pseudonym, token) == value


@given(values=st.dictionaries(names, texts, max_size=8))
def test_record_round_trips_every_field(values: dict[str, str]) -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, values)
    assert set(tokens) == set(values)
    assert cipher.decrypt_record(KEY, PSEUDO_A, tokens) == values


def test_record_tokens_decrypt_field_by_field_and_vice_versa() -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, {"national_id": "AB123456C", "name": "Ada"})
    assert cipher.decrypt(KEY, "name", PSEUDO_A, tokens["name"]) == "Ada"
    single = {"name": cipher.encrypt(KEY, "name", PSEUDO_A, "Ada")}
    assert cipher.decrypt_record(KEY, PSEUDO_A, single) == {"name": "Ada"}


def test_same_value_encrypts_to_different_tokens_without_plaintext() -> None:
    cipher = FieldCipher("loans")
    t1 = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    t2 = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    assert t1 != t2  # fresh nonce per encryption
    assert b"AB123456C" not in t1
    assert t1[0] == 1 and len(t1) == 1 + 12 + len("AB123456C") + 16


def test_cipher_cache_does_not_reuse_previous_key_for_a_new_key() -> None:
    cipher = FieldCipher("loans")
    t_key = cipher.encrypt(KEY, "f", PSEUDO_A, "v")
    t_other = cipher.encrypt(OTHER_KEY, "f", PSEUDO_A, "v")
    assert cipher.decrypt(OTHER_KEY, "f", PSEUDO_A, t_other) == "v"
    assert cipher.decrypt(KEY, "f", PSEUDO_A, t_key) == "v"
    with pytest.raises(IntegrityError):
        cipher.decrypt(OTHER_KEY, "f", PSEUDO_A, t_key)


# --- FieldCipher: tampering and misuse --------------------------------------------------------


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(position: int, bit: int) -> None:
    cipher = FieldCipher("loans")
    token = bytearray(cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C"))
    token[position % len(token)] ^= 1 << bit
    with pytest.raises(IntegrityError):
        cipher.decrypt(KEY, "national_id", PSEUDO_A, bytes(token))


def test_token_moved_to_another_field_is_rejected() -> None:
    cipher = FieldCipher("loans")
    tokens = cipher.encrypt_record(KEY, PSEUDO_A, {"national_id": "AB123456C", "phone": "0700900123"})
    swapped = {"national_id": tokens["phone"], "phone": tokens["national_id"]}
    with pytest.raises(IntegrityError, match="national_id") as info:
        cipher.decrypt_record(KEY, PSEUDO_A, swapped)
    assert "AB123456C" not in str(info.value) and "0700900123" not in str(info.value)


def test_token_moved_to_another_customer_is_rejected() -> None:
    cipher = FieldCipher("loans")
    token = cipher.encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    with pytest.raises(IntegrityError, match=PSEUDO_B):
        cipher.decrypt(KEY, "national_id", PSEUDO_B, token)


def test_token_moved_to_another_dataset_is_rejected() -> None:
    token = FieldCipher("loans").encrypt(KEY, "national_id", PSEUDO_A, "AB123456C")
    with pytest.raises(IntegrityError, match="cards"):
        FieldCipher("cards").decrypt(KEY, "national_id", PSEUDO_A, token)


def test_aad_parts_cannot_be_shifted_between_names() -> None:
    # Naive concatenation would make ("ab", "c") and ("a", "bc") identical.
    token = FieldCipher("ab").encrypt(KEY, "c", PSEUDO_A, "v")
    with pytest.raises(IntegrityError):
        FieldCipher("a").decrypt(KEY, "bc", PSEUDO_A, token)


def test_wrong_data_key_is_an_integrity_error() -> None:
    token = FieldCipher("loans").encrypt(KEY, "f", PSEUDO_A, "v")
    with pytest.raises(IntegrityError, match="another data key"):
        FieldCipher("loans").decrypt(OTHER_KEY, "f", PSEUDO_A, token)


@pytest.mark.parametrize("mangle", [lambda t: t[:20], lambda t: b"", lambda t: b"\x02" + t[1:]])
def test_truncated_or_unknown_format_token_is_an_integrity_error(mangle) -> None:  # type: ignore[no-untyped-def]
    cipher = FieldCipher("loans")
    token = cipher.encrypt(KEY, "f", PSEUDO_A, "value")
    with pytest.raises(IntegrityError, match="truncated or has an unknown format version"):
        cipher.decrypt(KEY, "f", PSEUDO_A, mangle(token))


@pytest.mark.parametrize("bad_key", [b"", b"x" * 16, b"x" * 33, "k" * 32])
def test_data_key_of_wrong_size_or_type_is_refused(bad_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyMaterialError, match="must be 32 random bytes"):
        FieldCipher("loans").encrypt(bad_key, "f", PSEUDO_A, "v")


def test_non_text_value_is_a_data_error_that_does_not_echo_the_value() -> None:
    cipher = FieldCipher("loans")
    with pytest.raises(DataError, match="national_id"):
        cipher.encrypt(KEY, "national_id", PSEUDO_A, 123456789)  # type: ignore[arg-type]
    with pytest.raises(DataError) as info:
        cipher.encrypt(KEY, "name", PSEUDO_A, "Ada\ud800Lovelace")
    assert "Ada" not in str(info.value)


def test_empty_dataset_name_is_refused() -> None:
    with pytest.raises(DataError):
        FieldCipher("")


# --- FileKeyRing -------------------------------------------------------------------------------


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture()
def ring(keys_dir: Path) -> FileKeyRing:
    return FileKeyRing.create(keys_dir)


CTX = data_key_context("loans", PSEUDO_A)


def test_create_writes_private_keyring_in_private_dir(keys_dir: Path, ring: FileKeyRing) -> None:
    assert _mode(keys_dir) == 0o700
    assert _mode(keys_dir / "keyring.json") == 0o600
    assert ring.active_version() == 1
    assert [v.status for v in ring.versions()] == ["active"]
    assert isinstance(ring, KeyRing)
    assert sorted(p.name for p in keys_dir.iterdir()) == ["keyring.json"]


def test_created_at_is_iso8601_utc(ring: FileKeyRing) -> None:
    created = datetime.fromisoformat(ring.versions()[0].created_at)
    assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)


def test_wrap_unwrap_round_trip_and_blob_hides_data_key(ring: FileKeyRing) -> None:
    dk = new_data_key()
    wrapped = ring.wrap(dk, CTX)
    assert wrapped.kek_version == 1
    assert dk not in wrapped.blob and len(wrapped.blob) == 12 + 32 + 16
    assert ring.unwrap(wrapped, CTX) == dk
    assert FileKeyRing.open(ring.path.parent).unwrap(wrapped, CTX) == dk


def test_new_data_keys_are_random_32_bytes() -> None:
    keys = {new_data_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == 32 for k in keys)


def test_unwrap_with_another_customers_context_is_refused(ring: FileKeyRing) -> None:
    wrapped = ring.wrap(new_data_key(), CTX)
    with pytest.raises(KeyMaterialError, match="could not unwrap"):
        ring.unwrap(wrapped, data_key_context("loans", PSEUDO_B))


def test_unwrap_of_altered_blob_is_refused(ring: FileKeyRing) -> None:
    wrapped = ring.wrap(new_data_key(), CTX)
    altered = WrappedKey(wrapped.kek_version, wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]))
    with pytest.raises(KeyMaterialError, match="could not unwrap"):
        ring.unwrap(altered, CTX)
    with pytest.raises(KeyMaterialError, match="truncated"):
        ring.unwrap(WrappedKey(1, wrapped.blob[:10]), CTX)


def test_another_partners_keyring_gives_clear_key_material_error(tmp_path: Path) -> None:
    ours = FileKeyRing.create(tmp_path / "ours")
    theirs = FileKeyRing.create(tmp_path / "theirs")
    wrapped = ours.wrap(new_data_key(), CTX)
    with pytest.raises(KeyMaterialError, match="could not unwrap the data key") as info:
        theirs.unwrap(wrapped, CTX)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no InvalidTag traceback


def test_unknown_kek_version_is_refused(ring: FileKeyRing) -> None:
    wrapped = ring.wrap(new_data_key(), CTX)
    with pytest.raises(KeyMaterialError, match="version 9.*does not have"):
        ring.unwrap(WrappedKey(9, wrapped.blob), CTX)


def test_create_refuses_existing_keyring_and_leaves_it_unchanged(keys_dir: Path, ring: FileKeyRing) -> None:
    before = _snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="already exists"):
        FileKeyRing.create(keys_dir)
    assert _snapshot(keys_dir) == before


def test_rotate_activates_new_version_and_old_keys_still_unwrap(keys_dir: Path, ring: FileKeyRing) -> None:
    dk = new_data_key()
    old = ring.wrap(dk, CTX)
    assert ring.rotate() == 2
    assert ring.active_version() == 2
    assert [(v.version, v.status) for v in ring.versions()] == [(1, "available"), (2, "active")]
    assert ring.unwrap(old, CTX) == dk
    assert ring.wrap(dk, CTX).kek_version == 2
    reopened = FileKeyRing.open(keys_dir)
    assert reopened.active_version() == 2 and reopened.unwrap(old, CTX) == dk
    assert _mode(keys_dir / "keyring.json") == 0o600


def test_rewrap_moves_data_key_to_active_version_without_changing_it(ring: FileKeyRing) -> None:
    dk = new_data_key()
    old = ring.wrap(dk, CTX)
    ring.rotate()
    new = rewrap(ring, old, CTX)
    assert new.kek_version == 2 and new.blob != old.blob
    assert ring.unwrap(new, CTX) == dk
    assert rewrap(ring, new, CTX) is new  # already current: idempotent


def test_retired_version_cannot_unwrap_and_its_material_is_gone(keys_dir: Path, ring: FileKeyRing) -> None:
    dk = new_data_key()
    old = ring.wrap(dk, CTX)
    old_key_b64 = json.loads((keys_dir / "keyring.json").read_text())["keks"][0]["key"]
    ring.rotate()
    new = rewrap(ring, old, CTX)
    ring.retire(1)
    assert [(v.version, v.status) for v in ring.versions()] == [(1, "retired"), (2, "active")]
    with pytest.raises(KeyMaterialError, match="retired"):
        ring.unwrap(old, CTX)
    assert old_key_b64 not in (keys_dir / "keyring.json").read_text()
    reopened = FileKeyRing.open(keys_dir)
    with pytest.raises(KeyMaterialError, match="retired"):
        reopened.unwrap(old, CTX)
    assert reopened.unwrap(new, CTX) == dk
    ring.retire(1)  # idempotent


def test_retire_refuses_active_and_unknown_versions_without_writing(
    keys_dir: Path, ring: FileKeyRing
) -> None:
    before = _snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="active version"):
        ring.retire(1)
    with pytest.raises(KeyMaterialError, match="no KEK version 5"):
        ring.retire(5)
    assert _snapshot(keys_dir) == before
    assert ring.active_version() == 1


def test_failed_persist_leaves_keyring_file_and_object_unchanged(
    keys_dir: Path, ring: FileKeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(keys_dir)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common_files.os, "replace", broken_replace)  # the keyring's atomic write
    with pytest.raises(OSError):
        ring.rotate()
    monkeypatch.undo()
    assert _snapshot(keys_dir) == before  # no temp file left behind either
    assert ring.active_version() == 1 and len(ring.versions()) == 1


def test_rotation_by_another_process_is_seen_and_not_lost(keys_dir: Path, ring: FileKeyRing) -> None:
    node = FileKeyRing.open(keys_dir)  # e.g. a running partner node
    admin = FileKeyRing.open(keys_dir)  # e.g. the CLI
    assert admin.rotate() == 2
    dk = new_data_key()
    wrapped_by_admin = admin.wrap(dk, CTX)
    assert node.unwrap(wrapped_by_admin, CTX) == dk  # node reloads on an unknown version
    assert ring.rotate() == 3  # builds on version 2 rather than overwriting it
    assert [v.version for v in FileKeyRing.open(keys_dir).versions()] == [1, 2, 3]


def test_repr_and_wrapped_key_repr_hide_material(ring: FileKeyRing) -> None:
    wrapped = ring.wrap(KEY, CTX)
    assert "blob=<60 bytes>" in repr(wrapped)
    key_b64 = json.loads(ring.path.read_text())["keks"][0]["key"]
    assert key_b64 not in repr(ring) and "active=1" in repr(ring)


def test_wrapped_key_bytes_round_trip() -> None:
    wk = WrappedKey(7, os.urandom(60))
    assert WrappedKey.from_bytes(wk.to_bytes()) == wk
    with pytest.raises(KeyMaterialError):
        WrappedKey.from_bytes(b"\x00\x00")


def test_data_key_context_separates_dataset_and_pseudonym() -> None:
    assert data_key_context("ab", "c") != data_key_context("a", "bc")
    assert data_key_context("loans", PSEUDO_A) == data_key_context("loans", PSEUDO_A)


def test_open_missing_keyring_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="not found"):
        FileKeyRing.open(tmp_path / "keys")
    assert list(tmp_path.iterdir()) == []


def _keyring_doc(ring: FileKeyRing) -> dict:  # type: ignore[type-arg]
    return json.loads(ring.path.read_text())


MALFORMED = {
    "not json": lambda d: b"{not json",
    "not an object": lambda d: b"[1, 2]",
    "wrong format": lambda d: {**d, "format": "something-else"},
    "future format version": lambda d: {**d, "format_version": 99},
    "no keks": lambda d: {**d, "keks": []},
    "bad base64": lambda d: {**d, "keks": [{**d["keks"][0], "key": "***"}]},
    "short key": lambda d: {**d, "keks": [{**d["keks"][0], "key": base64.b64encode(b"x" * 16).decode()}]},
    "bad status": lambda d: {**d, "keks": [{**d["keks"][0], "status": "enabled"}]},
    "no active": lambda d: {**d, "keks": [{**d["keks"][0], "status": "available"}]},
    "two active": lambda d: {**d, "keks": [d["keks"][0], {**d["keks"][0], "version": 2}]},
    "duplicate version": lambda d: {**d, "keks": [d["keks"][0], {**d["keks"][0], "status": "available"}]},
    "bad version": lambda d: {**d, "keks": [{**d["keks"][0], "version": "1"}]},
    "retired with key": lambda d: {
        **d,
        "keks": [{**d["keks"][0], "version": 2}, {**d["keks"][0], "status": "retired"}],
    },
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_keyring_is_refused_and_left_untouched(
    keys_dir: Path, ring: FileKeyRing, case: str
) -> None:
    mangled = MALFORMED[case](_keyring_doc(ring))
    data = mangled if isinstance(mangled, bytes) else json.dumps(mangled).encode()
    ring.path.write_bytes(data)
    before = _snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match=str(ring.path)):
        FileKeyRing.open(keys_dir)
    with pytest.raises(KeyMaterialError):
        ring.rotate()  # a mutation re-reads the file and must not overwrite it
    assert _snapshot(keys_dir) == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_accessible_keyring_is_refused_with_fix(
    keys_dir: Path, ring: FileKeyRing, mode: int
) -> None:
    os.chmod(ring.path, mode)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        FileKeyRing.open(keys_dir)
    assert _mode(ring.path) == mode  # we report, we do not silently change it


def test_keyring_path_that_is_a_directory_is_refused(keys_dir: Path) -> None:
    (keys_dir / "keyring.json").mkdir(parents=True)
    with pytest.raises(KeyMaterialError):
        FileKeyRing.open(keys_dir)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["keyring.json", "pseudonym.key"])
def test_fifo_at_a_key_path_is_refused_at_once_instead_of_hanging(keys_dir: Path, name: str) -> None:
    keys_dir.mkdir(mode=0o700)
    os.mkfifo(keys_dir / name, 0o600)  # nobody ever writes to it: a blocking open would wait forever
    with pytest.raises(KeyMaterialError, match="not a regular file"):
        FileKeyRing.open(keys_dir) if name == "keyring.json" else Pseudonymizer.open(keys_dir)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o730, 0o703])
def test_keys_directory_writable_by_group_or_others_is_refused(
    keys_dir: Path, ring: FileKeyRing, mode: int
) -> None:
    Pseudonymizer.create(keys_dir)
    os.chmod(keys_dir, mode)
    with pytest.raises(KeyMaterialError, match="chmod 700"):
        FileKeyRing.open(keys_dir)
    with pytest.raises(KeyMaterialError, match="chmod 700"):
        Pseudonymizer.open(keys_dir)
    with pytest.raises(KeyMaterialError, match="chmod 700"):
        ring.rotate()  # a mutation re-reads the file first, so it is refused too
    assert _mode(keys_dir) == mode  # reported, not silently changed
    os.chmod(keys_dir, 0o750)  # group may read and enter, not write: accepted
    FileKeyRing.open(keys_dir)


@pytest.mark.parametrize("target", ["dir", "file"])
def test_keys_owned_by_another_user_are_refused(keys_dir: Path, ring: FileKeyRing, target: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    other = 54321
    os.chown(keys_dir if target == "dir" else ring.path, other, -1)
    with pytest.raises(KeyMaterialError, match=f"owned by user id {other}"):
        FileKeyRing.open(keys_dir)


class _FakeKms:
    """A minimal KeyRing adapter, standing in for an external KMS: only the protocol matters."""

    def __init__(self) -> None:
        self.version = 1

    def active_version(self) -> int:
        return self.version

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        return WrappedKey(self.version, hashlib.sha256(context).digest()[:4] + data_key)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if wrapped.blob[:4] != hashlib.sha256(context).digest()[:4]:
            raise KeyMaterialError("context mismatch")
        return wrapped.blob[4:]

    def versions(self) -> list[KekInfo]:
        return [
            KekInfo(v, "2024-01-01T00:00:00+00:00", "active" if v == self.version else "available")
            for v in range(1, self.version + 1)
        ]


def test_rewrap_works_with_any_keyring_adapter() -> None:
    kms = _FakeKms()
    assert isinstance(kms, KeyRing)
    dk = new_data_key()
    old = kms.wrap(dk, CTX)
    kms.version = 2
    new = rewrap(kms, old, CTX)
    assert new.kek_version == 2 and kms.unwrap(new, CTX) == dk


# --- Pseudonymizer -----------------------------------------------------------------------------


def test_pseudonyms_are_stable_across_reopen_and_private_on_disk(keys_dir: Path) -> None:
    created = Pseudonymizer.create(keys_dir)
    p = created.pseudonym("AB123456C")
    assert len(p) == 64 and int(p, 16) >= 0
    assert Pseudonymizer.open(keys_dir).pseudonym("AB123456C") == p
    assert _mode(keys_dir / "pseudonym.key") == 0o600 and _mode(keys_dir) == 0o700
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
    before = _snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="already exists"):
        Pseudonymizer.create(keys_dir)
    assert _snapshot(keys_dir) == before


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


def test_create_without_hard_link_support_still_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(secret_files.os, "link", no_links)
    ring = FileKeyRing.create(tmp_path / "keys")
    assert _mode(ring.path) == 0o600 and FileKeyRing.open(tmp_path / "keys").active_version() == 1
    before = _snapshot(tmp_path)
    with pytest.raises(KeyMaterialError, match="already exists"):
        FileKeyRing.create(tmp_path / "keys")
    assert _snapshot(tmp_path) == before
