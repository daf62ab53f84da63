"""Where a partner's keys live (``[keyring]`` of partner.toml) and a logged-in PKCS#11 session.

Why a token: with ``backend = "pkcs11"`` the key-encryption keys (and, by default, the
audit signing key) are objects generated inside an HSM, a cloud KMS's PKCS#11 library or
SoftHSM2, marked sensitive and non-extractable. Whoever copies the partner home gets
wrapped data keys and no key to unwrap them. The PIN comes from an environment variable
named in the configuration, never from the file.

Every failure to reach the token (module missing, no token with that label, wrong PIN,
token refused an operation) is a :class:`KeyMaterialError` naming what to fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError, KeyMaterialError

__all__ = ["DEFAULT_PIN_ENV", "KeyringConfig", "TokenSession", "forget_sessions"]

DEFAULT_PIN_ENV = "FEDCUSTOMER_PKCS11_PIN"
BACKENDS = ("file", "pkcs11")
AUDIT_KEY_PLACES = ("token", "file")
_FIELDS = ("backend", "module", "token_label", "pin_env", "key_label", "audit_key", "audit_key_label")


@dataclass(frozen=True)
class KeyringConfig:
    """The ``[keyring]`` section: which backend holds the KEKs, and where the token is.

    ``key_label`` and ``audit_key_label`` default to labels derived from the partner's name
    (see :meth:`kek_label` and :meth:`audit_label`); ``audit_key`` says whether the audit
    signing key is on the token (the default with a token) or stays in its file.
    """

    backend: str = "file"
    module: str | None = None
    token_label: str | None = None
    pin_env: str = DEFAULT_PIN_ENV
    key_label: str | None = None
    audit_key: str = "token"
    audit_key_label: str | None = None

    @classmethod
    def from_mapping(cls, raw: object, where: str) -> KeyringConfig:
        """Validate a parsed ``[keyring]`` table; ConfigError naming the bad field otherwise."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: [keyring] must be a table")
        if any(str(k).lower() in ("pin", "user_pin", "so_pin") for k in raw):
            raise ConfigError(
                f"{where}: [keyring] must not hold a PIN; remove it and set the PIN in the environment "
                f"variable named by pin_env (default {DEFAULT_PIN_ENV})"
            )
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: [keyring] has unknown field(s) {', '.join(unknown)}")
        for name, value in raw.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: [keyring] {name} must be a non-empty string")
        config = cls(**{str(k): v for k, v in raw.items()})
        if config.backend not in BACKENDS:
            raise ConfigError(f"{where}: [keyring] backend must be one of {', '.join(BACKENDS)}")
        if config.audit_key not in AUDIT_KEY_PLACES:
            raise ConfigError(f"{where}: [keyring] audit_key must be one of {', '.join(AUDIT_KEY_PLACES)}")
        if config.backend == "pkcs11" and (config.module is None or config.token_label is None):
            raise ConfigError(
                f'{where}: [keyring] backend = "pkcs11" needs module (the PKCS#11 library\'s path) and '
                f"token_label"
            )
        return config

    def toml_lines(self) -> list[str]:
        """The section as written back to partner.toml (only fields that differ from the default)."""
        default = KeyringConfig()
        fields = [(n, getattr(self, n)) for n in _FIELDS if getattr(self, n) != getattr(default, n)]
        if not fields:
            return []
        return [
            "",
            "# Where the key-encryption keys live; the PIN is read from the environment (pin_env).",
            "[keyring]",
        ] + [_toml_pair(name, value) for name, value in fields]

    @property
    def on_token(self) -> bool:
        return self.backend == "pkcs11"

    @property
    def audit_on_token(self) -> bool:
        return self.on_token and self.audit_key == "token"

    def kek_label(self, owner: str) -> str:
        """Label prefix of the KEK objects; version N is ``<prefix>-v<N>``."""
        return self.key_label or f"fedcustomer-kek-{owner}"

    def audit_label(self, owner: str) -> str:
        return self.audit_key_label or f"fedcustomer-audit-{owner}"


def _toml_pair(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'{name} = "{escaped}"'


class TokenSession:
    """The process's one logged-in session on a token, shared and used under a lock.

    PKCS#11 logs in per process, not per session, and closing a logged-in session logs
    every session of the process out. So the keyring and the audit signer share one
    session per (module, token), counted: the last :meth:`close` ends it, and the next
    :meth:`open` must log in with the PIN again. While it is open, a different PIN in the
    environment is refused rather than silently accepted. Sessions must not be used by
    two threads at once, so every call goes through :meth:`call`, which also turns the
    library's exceptions into KeyMaterialError.
    """

    def __init__(self, session: Any, config: KeyringConfig, pin_digest: bytes) -> None:
        """Use :meth:`open`."""
        self.session = session
        self.config = config
        self._pin_digest = pin_digest
        self._lock = threading.RLock()
        self._refs = 1

    @classmethod
    def open(cls, config: KeyringConfig) -> TokenSession:
        """Load the module, find the token by label and log in with the PIN from the environment."""
        module, label = config.module or "", config.token_label or ""
        pin = os.environ.get(config.pin_env)
        if not pin:
            raise KeyMaterialError(
                f"the PIN of PKCS#11 token {label!r} is not set: export it in the environment variable "
                f"{config.pin_env} (named by pin_env in [keyring] of partner.toml)"
            )
        digest = hashlib.sha256(_PIN_SALT + pin.encode("utf-8")).digest()
        with _SHARED_LOCK:
            shared = _SHARED.get((module, label))
            if shared is not None:
                if not hmac.compare_digest(shared._pin_digest, digest):
                    raise KeyMaterialError(
                        f"wrong PIN for PKCS#11 token {label!r} (taken from {config.pin_env}): it differs from the "
                        f"PIN this process logged in with; nothing was changed"
                    )
                shared._refs += 1
                return shared
            token = cls(_login(config, module, label, pin), config, digest)
            _SHARED[(module, label)] = token
            return token

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Serialise one token operation; a library error becomes KeyMaterialError saying ``what``."""
        from pkcs11 import exceptions as p11x

        with self._lock:
            try:
                yield
            except p11x.PKCS11Error as exc:
                raise KeyMaterialError(
                    f"PKCS#11 token {self.config.token_label!r} refused to {what} ({_name(exc)})"
                ) from None

    @property
    def where(self) -> str:
        return f"PKCS#11 token {self.config.token_label!r} ({self.config.module})"

    def close(self) -> None:
        """Release one user; the last one ends the session (and so the process's login)."""
        with _SHARED_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            key = (self.config.module or "", self.config.token_label or "")
            if _SHARED.get(key) is self:
                del _SHARED[key]
        with self._lock:
            try:
                self.session.close()
            except Exception:  # already closed, or the module was finalised
                pass


_SHARED: dict[tuple[str, str], TokenSession] = {}
_SHARED_LOCK = threading.Lock()
_PIN_SALT = os.urandom(16)  # the PIN is compared by salted digest, never kept


def forget_sessions() -> None:
    """Drop every shared session without using it: after the module was finalised or re-initialised."""
    with _SHARED_LOCK:
        _SHARED.clear()


def _login(config: KeyringConfig, module: str, label: str, pin: str) -> Any:
    """A new read-write session on the token, logged in as its user."""
    if not Path(module).is_file():
        raise KeyMaterialError(
            f"PKCS#11 module {module} not found: install the token's library (SoftHSM2: the softhsm2 "
            f"package) or correct module in [keyring] of partner.toml"
        )
    try:
        import pkcs11
        from pkcs11 import exceptions as p11x
    except ImportError:
        raise KeyMaterialError(
            "the PKCS#11 keyring needs python-pkcs11: install it (make setup does)"
        ) from None
    try:
        lib = pkcs11.lib(module)
        token = lib.get_token(token_label=label)
    except p11x.NoSuchToken:
        raise KeyMaterialError(
            f"no token labelled {label!r} in PKCS#11 module {module}: is it plugged in and initialised? "
            f"(SoftHSM2: softhsm2-util --show-slots; check SOFTHSM2_CONF)"
        ) from None
    except p11x.MultipleTokensReturned:
        raise KeyMaterialError(f"more than one token is labelled {label!r} in {module}") from None
    except p11x.PKCS11Error as exc:
        raise KeyMaterialError(
            f"PKCS#11 module {module} could not be loaded or searched ({_name(exc)})"
        ) from None
    try:
        return token.open(rw=True, user_pin=pin)
    except p11x.UserAlreadyLoggedIn:
        # Another part of this process (not through this class) already logged in.
        return _open_logged_in(token, label, p11x)
    except (p11x.PinIncorrect, p11x.PinInvalid, p11x.PinLenRange):
        raise KeyMaterialError(
            f"wrong PIN for PKCS#11 token {label!r} (taken from {config.pin_env}); nothing was changed"
        ) from None
    except p11x.PinLocked:
        raise KeyMaterialError(f"the user PIN of PKCS#11 token {label!r} is locked") from None
    except p11x.PKCS11Error as exc:
        raise KeyMaterialError(f"PKCS#11 token {label!r} could not be opened ({_name(exc)})") from None


def _open_logged_in(token: Any, label: str, p11x: Any) -> Any:
    try:
        return token.open(rw=True)
    except p11x.PKCS11Error as exc:
        raise KeyMaterialError(f"PKCS#11 token {label!r} could not be opened ({_name(exc)})") from None


def _name(exc: BaseException) -> str:
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")
