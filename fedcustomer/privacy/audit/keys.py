"""The node's Ed25519 audit signing key and its public key files.

The signing key lives in the partner home's ``keys/`` (mode 0600); its public key is
written beside the log and into ``keys/`` so a verifier can check checkpoint signatures
and notice a public key replaced beside the log.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.audit.files import write_new_file


class CheckpointSigner(Protocol):
    """What signs checkpoints: the key file's Ed25519 key, or a key held by a PKCS#11 token."""

    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (first 16 hex digits of SHA-256 over the raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the node's Ed25519 audit signing key; refuse group/world-readable files."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"audit signing key {path} not found; create it with AuditLog.open(..., keys_dir=...)"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read audit signing key {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise KeyMaterialError(
            f"audit signing key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM) used to check checkpoint signatures."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"audit public key {path} not found") from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read audit public key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyMaterialError(f"{path} holds a {type(key).__name__}, expected an Ed25519 public key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_new_file(path, pem, 0o600)
    return load_signing_key(path)


def ensure_public_key_file(path: Path, public_key: Ed25519PublicKey) -> None:
    pem = _public_pem(public_key)
    if not path.exists():
        write_new_file(path, pem, 0o644)
    existing = load_public_key(path)
    if key_id(existing) != key_id(public_key):
        raise KeyMaterialError(
            f"{path} holds a different public key (id {key_id(existing)}) than the audit signing key "
            f"(id {key_id(public_key)}); restore the original key or the original public key file"
        )
