"""Console credentials: argon2id hashes, TOTP once per step, lock-out, a file only the node's user reads."""

from __future__ import annotations

import os
import sqlite3

import pyotp
import pytest

from fedcustomer.console.credentials import LOCK_SECONDS, MAX_FAILURES, CredentialBook
from fedcustomer.errors import AccessDenied, ConfigError


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def test_passwords_are_argon2id_hashes_and_totp_codes_count_once(tmp_path) -> None:
    clock = Clock()
    book = CredentialBook(tmp_path / "state" / "creds.db", clock=clock)
    enrolment = book.enrol("k1", "alice", "a long enough password")
    assert os.stat(book.path).st_mode & 0o777 == 0o600
    with sqlite3.connect(book.path) as con:
        stored = con.execute("SELECT password_hash FROM credentials").fetchone()[0]
    assert stored.startswith("$argon2id$") and "a long enough password" not in stored
    assert book.check_password("k1", "a long enough password")
    assert not book.check_password("k1", "a long enough passwore")
    assert not book.check_password(None, "a long enough password") and not book.check_password("k2", "x" * 12)
    code = pyotp.TOTP(enrolment.totp_secret).at(clock.t)
    assert book.check_totp("k1", code) and not book.check_totp("k1", code)
    clock.t += 30
    assert book.check_totp("k1", pyotp.TOTP(enrolment.totp_secret).at(clock.t))
    assert not book.check_totp("k1", "abcdef") and not book.check_totp("nobody", "123456")
    assert book.enrolled("k1") and book.enrolled_keys() == {"k1"}
    with pytest.raises(ConfigError, match="at least"):
        book.enrol("k2", "alice", "short")
    assert "otpauth://totp/" in enrolment.provisioning_uri("carol")


def test_lock_out_after_failures_and_its_end(tmp_path) -> None:
    clock = Clock()
    book = CredentialBook(tmp_path / "creds.db", clock=clock)
    for _ in range(MAX_FAILURES - 1):
        book.record_failure("key:k1")
    book.check_not_locked("key:k1")
    book.record_failure("key:k1")
    with pytest.raises(AccessDenied, match="locked"):
        book.check_not_locked("key:k1")
    book.check_not_locked("key:k2")
    clock.t += LOCK_SECONDS + 1
    book.check_not_locked("key:k1")


def test_a_credentials_file_readable_by_others_is_refused(tmp_path) -> None:
    path = tmp_path / "creds.db"
    CredentialBook(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        CredentialBook(path)
