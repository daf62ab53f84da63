"""Open the keyring and audit signer a partner's ``[keyring]`` configuration names.

The file keyring (``keys/keyring.json``) is the development default; ``backend =
"pkcs11"`` puts the KEKs, and unless ``audit_key = "file"`` the audit signing key, on a
PKCS#11 token. Callers above pass the configuration and the partner's name (which
derives the default object labels), never a PIN.
"""

from __future__ import annotations

from pathlib import Path

from fedcustomer.privacy.crypto.keyring import FileKeyRing, KeyRing
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_signer import TokenSigner
from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig, TokenSession

__all__ = ["KeyringConfig", "create_keyring", "open_audit_signer", "open_keyring"]


def create_keyring(config: KeyringConfig, keys_dir: Path, owner: str) -> KeyRing:
    """A new keyring for a new store: a key file, or version 1 generated on the token."""
    if not config.on_token:
        return FileKeyRing.create(keys_dir)
    return Pkcs11KeyRing.create(TokenSession.open(config), config.kek_label(owner), _lock_dir(keys_dir))


def open_keyring(config: KeyringConfig, keys_dir: Path, owner: str) -> KeyRing:
    """The existing keyring of a store; KeyMaterialError (nothing written) if it cannot be reached."""
    if not config.on_token:
        return FileKeyRing.open(keys_dir)
    return Pkcs11KeyRing.open(TokenSession.open(config), config.kek_label(owner), _lock_dir(keys_dir))


def open_audit_signer(config: KeyringConfig, owner: str) -> TokenSigner | None:
    """The token's audit signing key (generated on first use); None when the key stays in its file."""
    if not config.audit_on_token:
        return None
    return TokenSigner.open(TokenSession.open(config), config.audit_label(owner))


def _lock_dir(keys_dir: Path) -> Path | None:
    return keys_dir if Path(keys_dir).is_dir() else None
