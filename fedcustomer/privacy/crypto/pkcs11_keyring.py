"""A :class:`~fedcustomer.privacy.crypto.keyring.KeyRing` whose KEKs never leave a PKCS#11 token.

Each KEK version is an AES-256 secret-key object generated inside the token (sensitive,
never extractable), labelled ``<key_label>-v<N>``; its ``CKA_ID`` holds its creation time.
Wrapping a data key is an AES-GCM encryption *inside the token* with the data key's
context (dataset, pseudonym) and the version as associated data, so the KEK is never in
this process's memory. A wrapped blob is ``PKCS11_BLOB_PREFIX || nonce || ciphertext+tag``:
the prefix tells the store's two backends apart, so neither mistakes the other's keys
for a wrong or tampered key.

Versions follow the file keyring: the newest object is the active one, older ones are
``available`` (unwrap only), and retiring a version destroys its object on the token, so
a gap in the numbering is a ``retired`` version. Rotation and retirement are serialised
between processes by a lock on the home's keys directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto.keyring import PKCS11_BLOB_PREFIX, KekInfo, WrappedKey
from fedcustomer.privacy.crypto.material import NONCE_BYTES, TAG_BYTES, utc_now
from fedcustomer.privacy.crypto.pkcs11_token import TokenSession

try:  # POSIX only, as for the file keyring
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Pkcs11KeyRing"]

_WRAP_LABEL = b"fedcustomer/pkcs11-kek-wrap/v1\x00"
ACTIVE, AVAILABLE, RETIRED = "active", "available", "retired"


@dataclass(frozen=True)
class _TokenKek:
    version: int
    created_at: str
    key: Any  # the token's handle on the secret-key object, never its value


class Pkcs11KeyRing:
    """Versioned KEKs on a PKCS#11 token (see the module docstring)."""

    def __init__(self, token: TokenSession, prefix: str, lock_dir: Path | None) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._token = token
        self._prefix = prefix
        self._lock_dir = lock_dir
        self._keks: dict[int, _TokenKek] = {}
        self._closed = False
        self._pattern = re.compile(re.escape(prefix) + r"-v([1-9][0-9]{0,9})")

    # --- construction ---------------------------------------------------------
    @classmethod
    def create(cls, token: TokenSession, prefix: str, lock_dir: Path | None = None) -> Pkcs11KeyRing:
        """Generate version 1 on the token; refuses a token that already holds KEKs with this label."""
        ring = cls(token, prefix, lock_dir)
        with ring._locked():
            if ring._scan():
                raise KeyMaterialError(
                    f"{token.where} already holds KEK objects labelled {prefix}-v*; refusing to reuse another "
                    f"store's keys. Set another key_label in [keyring] of partner.toml, or delete those objects"
                )
            ring._generate(1)
            ring._install()
        return ring

    @classmethod
    def open(cls, token: TokenSession, prefix: str, lock_dir: Path | None = None) -> Pkcs11KeyRing:
        """Find this store's KEK objects on the token; KeyMaterialError if there are none."""
        ring = cls(token, prefix, lock_dir)
        ring._install()
        return ring

    @classmethod
    def present(cls, token: TokenSession, prefix: str) -> bool:
        """Whether the token already holds KEK objects labelled ``<prefix>-v*`` (this or another store's)."""
        return bool(cls(token, prefix, None)._scan())

    # --- KeyRing protocol -----------------------------------------------------
    def active_version(self) -> int:
        return max(self._keks)

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        """AES-GCM-encrypt ``data_key`` inside the token under the active KEK."""
        from pkcs11 import GCMParams, Mechanism

        if not isinstance(data_key, (bytes, bytearray)) or not data_key:
            raise KeyMaterialError("data key to wrap must be non-empty bytes")
        kek = self._keks[self.active_version()]
        nonce = os.urandom(NONCE_BYTES)
        params = GCMParams(nonce, _wrap_aad(kek.version, context), TAG_BYTES * 8)
        with self._token.call(f"wrap a data key under KEK version {kek.version}"):
            sealed = kek.key.encrypt(bytes(data_key), mechanism=Mechanism.AES_GCM, mechanism_param=params)
        return WrappedKey(kek.version, PKCS11_BLOB_PREFIX + nonce + bytes(sealed))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """Recover a data key inside the token; KeyMaterialError if its KEK is gone or it was not wrapped here."""
        from pkcs11 import GCMParams, Mechanism
        from pkcs11 import exceptions as p11x

        version, blob = wrapped.kek_version, wrapped.blob
        if not blob.startswith(PKCS11_BLOB_PREFIX):
            raise KeyMaterialError(
                f"the data key (KEK version {version}) was wrapped by the keyring file, not inside "
                f"{self._token.where}: this store's [keyring] backend was changed after its keys were written"
            )
        kek = self._keks.get(version)
        if kek is None:
            self.refresh()  # another process may have rotated since this keyring was opened
            kek = self._keks.get(version)
        if kek is None:
            raise KeyMaterialError(self._missing(version))
        body = blob[len(PKCS11_BLOB_PREFIX) :]
        if len(body) < NONCE_BYTES + TAG_BYTES:
            raise KeyMaterialError(
                f"wrapped data key for KEK version {version} is {len(blob)} bytes: truncated or not a wrapped key"
            )
        params = GCMParams(body[:NONCE_BYTES], _wrap_aad(version, context), TAG_BYTES * 8)
        try:
            with self._token.call(f"unwrap a data key with KEK version {version}"):
                try:
                    data_key = kek.key.decrypt(
                        body[NONCE_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                    )
                except (p11x.GeneralError, p11x.EncryptedDataInvalid, p11x.EncryptedDataLenRange):
                    raise _NotOurs() from None
        except _NotOurs:
            raise KeyMaterialError(
                f"KEK version {version} on {self._token.where} could not unwrap the data key: this token's key "
                f"did not wrap it (another partner's token or key_label?), or the wrapped key or its context "
                f"(dataset, pseudonym) was altered"
            ) from None
        return bytes(data_key)

    def versions(self) -> list[KekInfo]:
        infos = []
        for version in range(1, self.active_version() + 1):
            kek = self._keks.get(version)
            if kek is None:
                infos.append(KekInfo(version, "", RETIRED))
            else:
                status = ACTIVE if version == self.active_version() else AVAILABLE
                infos.append(KekInfo(version, kek.created_at, status))
        return infos

    def refresh(self) -> None:
        """Re-read the token's KEK objects: adopt a version another process created or retired."""
        self._install()

    # --- administration -------------------------------------------------------
    def rotate(self) -> int:
        """Generate the next KEK version on the token; it becomes active, the previous one stays available."""
        with self._locked():
            keks = self._scan()
            new_version = (max(keks) if keks else 0) + 1
            self._generate(new_version)
            self._install()
        return new_version

    def retire(self, version: int) -> None:
        """Destroy one version's object on the token; refuses the active version; a retired one is a no-op."""
        with self._locked():
            self._install()
            active = self.active_version()
            if not 1 <= version <= active:
                raise KeyMaterialError(
                    f"{self._token.where} has no KEK version {version} labelled {self._prefix} "
                    f"(versions 1 to {active})"
                )
            if version == active:
                raise KeyMaterialError(
                    f"KEK version {version} is the active version on {self._token.where} and cannot be retired; "
                    f"rotate to a new version and re-wrap data keys first"
                )
            kek = self._keks.get(version)
            if kek is None:
                return
            with self._token.call(f"destroy KEK version {version}"):
                kek.key.destroy()
            self._install()

    def discard(self) -> None:
        """Destroy every KEK object of this label: only for keys that never protected data (a staged migration)."""
        with self._locked():
            for version, kek in sorted(self._scan().items()):
                with self._token.call(f"destroy staged KEK version {version}"):
                    kek.key.destroy()
            self._keks = {}

    def close(self) -> None:
        """Release the token session (the store calls this when it closes); idempotent."""
        if not self._closed:
            self._closed = True
            self._token.close()

    @property
    def where(self) -> str:
        return f"{self._token.where}, KEK label {self._prefix}-v*"

    # --- internals --------------------------------------------------------------
    def _scan(self) -> dict[int, _TokenKek]:
        """This store's KEK objects on the token, checked to be non-extractable AES keys."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        keks: dict[int, _TokenKek] = {}
        with self._token.call("list its secret keys"):
            for obj in self._token.session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
                match = self._pattern.fullmatch(str(obj.label))
                if match is None:
                    continue
                version = int(match.group(1))
                if version in keks:
                    raise KeyMaterialError(
                        f"{self._token.where} holds two objects labelled {obj.label}; remove the one this store "
                        f"did not create"
                    )
                if (
                    obj[Attribute.KEY_TYPE] != KeyType.AES
                    or not obj[Attribute.SENSITIVE]
                    or obj[Attribute.EXTRACTABLE]
                ):
                    raise KeyMaterialError(
                        f"{obj.label} on {self._token.where} is not a sensitive, non-extractable AES key; "
                        f"refusing to use it as a KEK"
                    )
                created = bytes(obj[Attribute.ID]).decode("ascii", "replace")
                keks[version] = _TokenKek(version, created, obj)
        return keks

    def _install(self) -> None:
        keks = self._scan()
        if not keks:
            raise KeyMaterialError(
                f"{self._token.where} holds no KEK objects labelled {self._prefix}-v*: wrong token or key_label "
                f"in [keyring] of partner.toml, or the keys were deleted from the token"
            )
        self._keks = keks

    def _generate(self, version: int) -> None:
        from pkcs11 import Attribute, KeyType

        template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
            Attribute.ID: utc_now().encode("ascii"),
        }
        with self._token.call(f"generate KEK version {version}"):
            self._token.session.generate_key(
                KeyType.AES, 256, label=f"{self._prefix}-v{version}", store=True, template=template
            )

    def _missing(self, version: int) -> str:
        if version < self.active_version():
            return (
                f"the data key was wrapped by KEK version {version}, which is no longer on {self._token.where} "
                f"(retired, or deleted from the token): this data key cannot be recovered"
            )
        return (
            f"the data key was wrapped by KEK version {version}, which {self._token.where} does not have "
            f"(newest is {self.active_version()}): wrong token or key_label for this store, or an older token backup"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise rotation and retirement between processes (a lock on the keys directory)."""
        if fcntl is None or self._lock_dir is None:  # pragma: no cover
            yield
            return
        try:
            fd = os.open(self._lock_dir, os.O_RDONLY)
        except OSError as exc:
            raise KeyMaterialError(
                f"keys directory {self._lock_dir} could not be opened ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"Pkcs11KeyRing({self.where}, versions={len(self._keks)})"


class _NotOurs(Exception):
    """The token rejected the tag: not this KEK's wrap, or altered."""


def _wrap_aad(version: int, context: bytes) -> bytes:
    return _WRAP_LABEL + struct.pack(">I", version) + bytes(context)
