"""An Ed25519 signing key generated and used inside a PKCS#11 token (CKM_EDDSA).

The audit log signs its checkpoints with it when the partner's keys are on a token: the
private key never leaves the token, while the public key (read from the token's
``CKA_EC_POINT``) is what the log writes beside itself, so verification is unchanged.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcustomer.errors import KeyMaterialError
from fedcustomer.privacy.crypto.pkcs11_token import TokenSession

__all__ = ["TokenSigner"]

_ED25519_OID = "1.3.101.112"
_RAW_BYTES = 32


class TokenSigner:
    """``sign(data)`` and ``public_key()`` of an Ed25519 key pair on the token, found by label."""

    def __init__(self, token: TokenSession, private: Any, public: Ed25519PublicKey) -> None:
        """Use :meth:`open`."""
        self._token = token
        self._private = private
        self._public = public

    @classmethod
    def open(cls, token: TokenSession, label: str, *, create: bool = True) -> TokenSigner:
        """The key pair labelled ``label``, generated in the token first if absent and ``create``."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        def find(object_class: Any) -> list[Any]:
            template = {Attribute.CLASS: object_class, Attribute.LABEL: label}
            return list(token.session.get_objects(template))

        with token.call(f"find audit signing key {label}"):
            privates, publics = find(ObjectClass.PRIVATE_KEY), find(ObjectClass.PUBLIC_KEY)
        if not privates and not publics and create:
            _generate(token, label)
            with token.call(f"find audit signing key {label}"):
                privates, publics = find(ObjectClass.PRIVATE_KEY), find(ObjectClass.PUBLIC_KEY)
        if len(privates) != 1 or len(publics) != 1:
            raise KeyMaterialError(
                f"{token.where} must hold exactly one Ed25519 key pair labelled {label!r} for the audit log; "
                f"it has {len(privates)} private and {len(publics)} public key(s)"
            )
        with token.call(f"read audit signing key {label}"):
            if privates[0][Attribute.KEY_TYPE] != KeyType.EC_EDWARDS or privates[0][Attribute.EXTRACTABLE]:
                raise KeyMaterialError(f"{label!r} on {token.where} is not a non-extractable Ed25519 key")
            point = bytes(publics[0][Attribute.EC_POINT])
        return cls(token, privates[0], _public_key(point, label))

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        with self._token.call("sign an audit checkpoint"):
            return bytes(self._private.sign(bytes(data), mechanism=Mechanism.EDDSA))

    def close(self) -> None:
        self._token.close()

    def __repr__(self) -> str:
        return f"TokenSigner({self._token.where})"


def _generate(token: TokenSession, label: str) -> None:
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    public_template = {
        Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID),
        Attribute.VERIFY: True,
    }
    private_template = {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.PRIVATE: True,
        Attribute.SIGN: True,
    }
    with token.call(
        f"generate the audit signing key {label} (does the token support CKM_EC_EDWARDS_KEY_PAIR_GEN?)"
    ):
        token.session.generate_keypair(
            KeyType.EC_EDWARDS,
            store=True,
            label=label,
            public_template=public_template,
            private_template=private_template,
        )


def _public_key(point: bytes, label: str) -> Ed25519PublicKey:
    """CKA_EC_POINT is the raw 32-byte key, usually inside a DER OCTET STRING (04 20 ...)."""
    raw = point[2:] if len(point) == _RAW_BYTES + 2 and point[:2] == b"\x04\x20" else point
    if len(raw) != _RAW_BYTES:
        raise KeyMaterialError(f"the public key of {label!r} on the token is not an Ed25519 point")
    return Ed25519PublicKey.from_public_bytes(raw)
