"""Identity keys of people and services: Ed25519 key pairs, their files and their ids.

A person proves who they are by signing each governance request with their own private
key; the partner keeps only the public key, in the signed people registry
(:mod:`.people`). A person's private key lives in their own file, encrypted with their
passphrase (PKCS#8 with the best encryption pyca/cryptography offers), never in the
partner home. A service (the node's training pipeline) has its own key in the home's
``keys/`` directory, readable only by the node's user, because no person is there to
type a passphrase when a round starts.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcustomer.common.files import atomic_write_bytes
from fedcustomer.errors import ConfigError, KeyMaterialError

MIN_PASSPHRASE = 12
PASSPHRASE_ENV = "FEDCUSTOMER_PASSPHRASE"


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A key's id: the first 32 hex digits of SHA-256 over its raw public bytes."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:32]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte public key, as the registry stores it."""
    return base64.b64encode(raw_public(public_key)).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise KeyMaterialError("a registered public key is not a base64 Ed25519 key") from None


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class Signer(Protocol):
    """Something that signs with one Ed25519 identity key (a key file or a token)."""

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class KeySigner:
    """A signer holding an Ed25519 private key in memory (loaded from a key file)."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __repr__(self) -> str:
        return f"KeySigner(key_id={self.key_id})"

    @classmethod
    def generate(cls) -> KeySigner:
        """A fresh key pair from the OS random source (pyca's Ed25519 generation)."""
        return cls(Ed25519PrivateKey.generate())


def _check_passphrase(passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"the passphrase is shorter than {MIN_PASSPHRASE} characters; choose a longer one")
    return passphrase.encode("utf-8")


def write_identity_file(
    path: Path, signer: KeySigner, passphrase: str | None, *, replace: bool = False
) -> Path:
    """Write the private key (0600, encrypted unless ``passphrase`` is None) and ``PATH.pub``.

    ``None`` is for service keys only; a person's key always has a passphrase. ``replace`` is for
    a governed key replacement, whose caller keeps the old files to put back on failure.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise ConfigError(f"{path} exists; refusing to overwrite an identity key")
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(_check_passphrase(passphrase))
    )
    pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    atomic_write_bytes(path, pem, exact=True, mode=0o600)
    atomic_write_bytes(public_path(path), public_pem(signer.public_key))
    return path


def public_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".pub")


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """A public key from a ``.pub`` PEM file (what a person hands the partner admin)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise KeyMaterialError(f"public key file {path} not found") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read public key file {path}: {exc.strerror}") from None
    except ValueError:
        raise KeyMaterialError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 public key")
    return key


def load_identity_file(path: Path, passphrase: str | None) -> KeySigner:
    """Load a private identity key; a wrong or missing passphrase is a clear KeyMaterialError."""
    path = Path(path)
    try:
        data = path.read_bytes()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        raise KeyMaterialError(
            f"identity key file {path} not found; make one with `fedcustomer people keygen --out FILE`"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read identity key file {path}: {exc.strerror}") from None
    if b"-----BEGIN PRIVATE KEY" not in data and b"-----BEGIN ENCRYPTED PRIVATE KEY" not in data:
        what = "a public key" if b"-----BEGIN PUBLIC KEY" in data else "not a private key in PEM form"
        raise KeyMaterialError(
            f"{path} is {what}: --identity takes your private key file (the one without .pub), "
            "as `fedcustomer people keygen --out FILE` writes it"
        )
    if mode & 0o077:
        raise KeyMaterialError(
            f"identity key file {path} is readable by others (mode {mode:o}); chmod 600 it"
        )
    secret = passphrase.encode("utf-8") if passphrase else None
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        if secret is None:
            raise KeyMaterialError(
                f"identity key file {path} is encrypted: give its passphrase ({PASSPHRASE_ENV} or the prompt)"
            ) from None
        raise KeyMaterialError(
            f"identity key file {path} is not encrypted; no passphrase is needed"
        ) from None
    except ValueError:
        raise KeyMaterialError(
            f"cannot open identity key file {path}: wrong passphrase or not a key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 private key")
    return KeySigner(key)
