"""FileKeyRing: the KEK keyring on disk (wrap, rotate, retire, rewrap) and its refusals of bad key files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedcustomer.common import files as common_files
from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto import secret_files
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
from tests.privacy.crypto.key_files import permission_bits, snapshot

KEY = bytes(range(32))
PSEUDO_A = "a" * 64
PSEUDO_B = "b" * 64


# --- FileKeyRing -------------------------------------------------------------------------------


@pytest.fixture()
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture()
def ring(keys_dir: Path) -> FileKeyRing:
    return FileKeyRing.create(keys_dir)


CTX = data_key_context("loans", PSEUDO_A)


def test_create_writes_private_keyring_in_private_dir(keys_dir: Path, ring: FileKeyRing) -> None:
    assert permission_bits(keys_dir) == 0o700
    assert permission_bits(keys_dir / "keyring.json") == 0o600
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
    before = snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="already exists"):
        FileKeyRing.create(keys_dir)
    assert snapshot(keys_dir) == before


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
    assert permission_bits(keys_dir / "keyring.json") == 0o600


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
    before = snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match="active version"):
        ring.retire(1)
    with pytest.raises(KeyMaterialError, match="no KEK version 5"):
        ring.retire(5)
    assert snapshot(keys_dir) == before
    assert ring.active_version() == 1


def test_failed_persist_leaves_keyring_file_and_object_unchanged(
    keys_dir: Path, ring: FileKeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(keys_dir)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common_files.os, "replace", broken_replace)  # the keyring's atomic write
    with pytest.raises(OSError):
        ring.rotate()
    monkeypatch.undo()
    assert snapshot(keys_dir) == before  # no temp file left behind either
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
    before = snapshot(keys_dir)
    with pytest.raises(KeyMaterialError, match=str(ring.path)):
        FileKeyRing.open(keys_dir)
    with pytest.raises(KeyMaterialError):
        ring.rotate()  # a mutation re-reads the file and must not overwrite it
    assert snapshot(keys_dir) == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_accessible_keyring_is_refused_with_fix(
    keys_dir: Path, ring: FileKeyRing, mode: int
) -> None:
    os.chmod(ring.path, mode)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        FileKeyRing.open(keys_dir)
    assert permission_bits(ring.path) == mode  # we report, we do not silently change it


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
    assert permission_bits(keys_dir) == mode  # reported, not silently changed
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


def test_create_without_hard_link_support_still_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(secret_files.os, "link", no_links)
    ring = FileKeyRing.create(tmp_path / "keys")
    assert permission_bits(ring.path) == 0o600 and FileKeyRing.open(tmp_path / "keys").active_version() == 1
    before = snapshot(tmp_path)
    with pytest.raises(KeyMaterialError, match="already exists"):
        FileKeyRing.create(tmp_path / "keys")
    assert snapshot(tmp_path) == before
