"""Console passwords and TOTP secrets of registered people, and the lock-out after failures.

Kept in the partner home (``state/console_credentials.db``, mode 0600), keyed by the
person's registered key id: never in the people registry, which holds only public
facts. A password is stored as an argon2id hash (argon2-cffi's defaults); the TOTP
secret (RFC 6238, pyotp) is stored as it must be to check codes, so the file is as
sensitive as a password file and readable only by the node's user. A TOTP code is
accepted once: the last accepted time step is kept, so a code seen over a shoulder
cannot be replayed.

Failures are counted per login name (so names that are not registered are throttled
too, and give no hint): after ``MAX_FAILURES`` within the window the name is locked for
``LOCK_SECONDS``, and every attempt while locked is refused without checking anything.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError

FILE_NAME = "console_credentials.db"
MAX_FAILURES = 5
LOCK_SECONDS = 15 * 60
MIN_PASSWORD = 12
ISSUER = "fedcustomer console"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (
    key_id TEXT PRIMARY KEY, password_hash TEXT NOT NULL, totp_secret TEXT NOT NULL,
    last_step INTEGER NOT NULL DEFAULT -1, enrolled_at REAL NOT NULL, enrolled_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
    login TEXT PRIMARY KEY, count INTEGER NOT NULL, first_at REAL NOT NULL, locked_until REAL NOT NULL);
"""
_HASHER = PasswordHasher()  # argon2id, the library's current recommended parameters


@dataclass(frozen=True)
class Enrolment:
    """What the partner admin hands the person once: a first password and the TOTP secret."""

    key_id: str
    password: str
    totp_secret: str

    def provisioning_uri(self, name: str) -> str:
        return pyotp.TOTP(self.totp_secret).provisioning_uri(name=name, issuer_name=ISSUER)


class CredentialBook:
    """The console credentials of one partner home (see the module docstring)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        mode = os.stat(self.path).st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{self.path} is readable by others (mode {mode:o}); chmod 600 it")
        with self._tx() as con:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    con.execute(statement)

    def now(self) -> float:
        return float(self._clock())

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(connect(self.path)) as con, transaction(con):
                yield con
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"console credentials {self.path} cannot be used: {exc}") from None

    # ---- enrolment -------------------------------------------------------------------
    def enrol(self, key_id: str, enrolled_by: str, password: str | None = None) -> Enrolment:
        """Set (or reset) a person's password and a fresh TOTP secret; returns both once."""
        password = password or secrets.token_urlsafe(15)
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"a console password needs at least {MIN_PASSWORD} characters")
        secret = pyotp.random_base32()  # from the OS random source (secrets)
        with self._tx() as con:
            con.execute(
                "INSERT OR REPLACE INTO credentials VALUES (?, ?, ?, -1, ?, ?)",
                (key_id, _HASHER.hash(password), secret, self.now(), enrolled_by),
            )
        return Enrolment(key_id, password, secret)

    def enrolled(self, key_id: str) -> bool:
        with self._tx() as con:
            return con.execute("SELECT 1 FROM credentials WHERE key_id = ?", (key_id,)).fetchone() is not None

    def enrolled_keys(self) -> set[str]:
        with self._tx() as con:
            return {r[0] for r in con.execute("SELECT key_id FROM credentials")}

    # ---- lock-out ----------------------------------------------------------------------
    def check_not_locked(self, login: str) -> None:
        with self._tx() as con:
            row = con.execute("SELECT locked_until FROM failures WHERE login = ?", (login,)).fetchone()
        if row is not None and row[0] > self.now():
            raise AccessDenied(
                "too many failed sign-ins: this account is locked for a while; try again later"
            )

    def record_failure(self, login: str) -> None:
        at = self.now()
        with self._tx() as con:
            row = con.execute("SELECT count, first_at FROM failures WHERE login = ?", (login,)).fetchone()
            count, first = (0, at) if row is None or at - row[1] > LOCK_SECONDS else row
            count += 1
            locked = at + LOCK_SECONDS if count >= MAX_FAILURES else 0.0
            con.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                (login, 0 if locked else count, first, locked),
            )

    def clear_failures(self, login: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM failures WHERE login = ?", (login,))

    # ---- checking ----------------------------------------------------------------------
    def check_password(self, key_id: str | None, password: str) -> bool:
        """True if ``password`` is this key's; spends the same work for an unknown key."""
        with self._tx() as con:
            row = (
                con.execute("SELECT password_hash FROM credentials WHERE key_id = ?", (key_id,)).fetchone()
                if key_id
                else None
            )
        stored = row[0] if row else _DUMMY_HASH
        try:
            ok = _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return bool(ok and row)

    def check_totp(self, key_id: str, code: str) -> bool:
        """True once per time step for a current code (one step of clock drift either way)."""
        code = code.strip().replace(" ", "")
        if not code.isdigit():
            return False
        at = self.now()
        with self._tx() as con:
            row = con.execute(
                "SELECT totp_secret, last_step FROM credentials WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None:
                return False
            totp = pyotp.TOTP(row[0])
            step = int(at // totp.interval)
            for candidate in (step - 1, step, step + 1):
                if candidate > row[1] and secrets.compare_digest(totp.at(candidate * totp.interval), code):
                    con.execute("UPDATE credentials SET last_step = ? WHERE key_id = ?", (candidate, key_id))
                    return True
        return False

    def current_code(self, key_id: str) -> str:
        """The code a person's authenticator shows now (tests and the enrolment check)."""
        with self._tx() as con:
            row = con.execute("SELECT totp_secret FROM credentials WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise ConfigError(f"key {key_id} has no console credentials")
        return pyotp.TOTP(row[0]).at(self.now())


_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
