"""Moving an existing home's KEKs from the key file to a PKCS#11 token (``keys migrate``).

Why it is staged: a home made with the development default keeps its KEK in
``keys/keyring.json``, beside the data. Moving to a token must lose nothing and, if
anything fails (wrong PIN, token absent, a crash), leave the home as it was and usable
with the key file. So the migration

1. generates KEK version 1 inside the token (sensitive, never extractable);
2. in ONE store transaction, re-wraps every data key (customers, quarantined rows, the
   key check) under it, then reads every row back with the token alone (every sealed
   row, core field, merge record and quarantined row is decrypted), and records the
   switch (the token's ``[keyring]`` section) in the store's ``meta`` table; a failure
   before the commit rolls all of it back and destroys the staged token KEK;
3. writes the ``[keyring]`` section into partner.toml, then destroys ``keyring.json``
   (overwritten, then unlinked) and clears the record.

The commit of step 2 is the switch. If the process dies between it and the end of step
3, :func:`finish_key_switch` (run by every store open) completes step 3, so the home is
never left with token-wrapped keys and a partner.toml that names the key file. The
audit signing key stays in its file (``audit_key = "file"``): the log trusts one
checkpoint key, so moving it needs a signed hand-over the verifier does not know yet.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_db import (
    KEYCHECK_DATASET,
    KEYCHECK_LABEL,
    MERGE_FIELD,
    QUARANTINE_FIELD,
    SqliteBackend,
    open_row,
    table_name,
)
from fedcustomer.errors import ConfigError, FedCustomerError, IntegrityError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import open_record
from fedcustomer.privacy.crypto.keyring import (
    KEYRING_FILE,
    PKCS11_BLOB_PREFIX,
    FileKeyRing,
    KeyRing,
    WrappedKey,
    data_key_context,
)
from fedcustomer.privacy.crypto.keyring_factory import open_keyring
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig, TokenSession
from fedcustomer.privacy.crypto.secret_files import shred_secret_file

__all__ = ["SWITCH_META_KEY", "KeyMigration", "finish_key_switch", "token_target"]

SWITCH_META_KEY = "keyring_switch"
STAGED_NOTE = "keys-migrate.json"  # in state/: which token KEK an unfinished migration staged

_KEYS_SQL = {
    "data_keys": "SELECT 'data_keys', dataset, pseudonym, kek_version, blob, dataset, pseudonym FROM data_keys",
    "quarantine": "SELECT 'quarantine', id, NULL, kek_version, wrapped_key, dataset, key_label FROM quarantine",
    "keycheck": f"SELECT 'keycheck', id, NULL, kek_version, blob, '{KEYCHECK_DATASET}', '{KEYCHECK_LABEL}' "
    f"FROM keycheck",
}
_UPDATE_SQL = {
    "data_keys": "UPDATE data_keys SET kek_version = ?, blob = ? WHERE dataset = ? AND pseudonym = ?",
    "quarantine": "UPDATE quarantine SET kek_version = ?, wrapped_key = ? WHERE id = ?",
    "keycheck": "UPDATE keycheck SET kek_version = ?, blob = ? WHERE id = ?",
}


def token_target(spec: str, module: str | None, pin_env: str | None) -> KeyringConfig:
    """The ``[keyring]`` section ``pkcs11:TOKEN_LABEL[/KEY_LABEL]`` names (audit key stays in its file)."""
    body = spec[len("pkcs11:") :] if spec.startswith("pkcs11:") else None
    token_label, sep, key_label = (body or "").partition("/")
    if body is None or not token_label or (sep and not key_label) or "/" in key_label:
        raise ConfigError(f"--to {spec!r}: write pkcs11:TOKEN_LABEL or pkcs11:TOKEN_LABEL/KEY_LABEL")
    if not module:
        raise ConfigError(
            f"--to {spec!r} names a token: give the PKCS#11 library's path with --module "
            f"(or FEDCUSTOMER_PKCS11_MODULE)"
        )
    raw = {"backend": "pkcs11", "module": module, "token_label": token_label, "audit_key": "file"}
    if key_label:
        raw["key_label"] = key_label
    if pin_env:
        raw["pin_env"] = pin_env
    return KeyringConfig.from_mapping(raw, "--to")


class KeyMigration:
    """Moves one open store's data keys from its key file to a token (see the module docstring)."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store

    def to_token(self, actor: Credential, target: KeyringConfig) -> dict[str, Any]:
        """Authenticate, check the policy ('keys'), migrate; every outcome is audit-logged."""
        store = self.store
        config = store.home.config()
        target = replace(target, backend="pkcs11", audit_key="file")
        label = target.kek_label(config.name)
        to = f"pkcs11:{target.token_label}/{label}"
        actor = store.principal(
            actor, action="keys", audit_action="key_migrate", extra={"op": "migrate", "to": to}
        )
        details: dict[str, Any] = {"to": to}
        store.require(actor, "keys", "key_migrate", details=details)
        try:
            if config.keyring.on_token or not isinstance(store.keyring, FileKeyRing):
                raise ConfigError(
                    f"{store.home.root} already keeps its KEKs on a token ([keyring] of partner.toml): nothing to "
                    f"migrate; `fedcustomer keys rotate` makes a new version there"
                )
            result = self._migrate(actor, target, label, details)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, FedCustomerError) else f"unexpected {type(exc).__name__}"
            try:
                store.log(
                    actor,
                    "key_migrate",
                    "denied",
                    reason=f"key migration refused or failed: {reason}",
                    details={**details, "outcome": "failed"},
                )
            except FedCustomerError:
                pass  # the log refused the entry; the next action's log check reports why
            raise
        store.log(actor, "key_migrate", details=result)
        return result

    def _migrate(
        self, actor: Actor, target: KeyringConfig, label: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        store, home = self.store, self.store.home
        file_ring = store.keyring
        assert isinstance(file_ring, FileKeyRing)
        token = TokenSession.open(target)  # wrong PIN, token or module absent: nothing written yet
        try:
            _drop_leftover(home, token, target, label)
            if Pkcs11KeyRing.present(token, label):
                raise KeyMaterialError(
                    f"{token.where} already holds KEK objects labelled {label}-v* (another store's, or a "
                    f"migration of this home interrupted before the note in state/ was written): name another key "
                    f"label, --to pkcs11:{target.token_label}/NEW_LABEL"
                )
            note = home.state_dir / STAGED_NOTE
            atomic_write_text(note, json.dumps(_note(target, label)) + "\n")
            try:
                ring = Pkcs11KeyRing.create(token, label, home.keys_dir)
            except BaseException:
                note.unlink(missing_ok=True)  # nothing was staged on the token
                raise
        except BaseException:
            token.close()
            raise
        committed = False
        try:
            store.log(
                actor, "key_create", details={**details, "kek_version": 1, "for": "migration to a token"}
            )
            with store.backend.transaction():  # no other writer until the switch is recorded or rolled back
                file_ring.refresh()
                counts = _rewrap(store.backend, file_ring, ring, only_file_wrapped=False)
                verified = verify_every_row(store, ring)
                if verified["wrapped_keys"] != sum(counts.values()):
                    raise IntegrityError(
                        f"re-wrapped {sum(counts.values())} data keys but read back {verified['wrapped_keys']}; "
                        f"nothing was switched"
                    )
                store.backend.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (SWITCH_META_KEY, _switch_record(target))
                )
            committed = True
            try:
                finish_key_switch(home, store.backend, file_ring=file_ring, token_ring=ring)
            except FedCustomerError as exc:
                raise type(exc)(
                    f"every data key is on the token and the switch is committed in {home.store_path}, but it "
                    f"could not be completed ({exc}); the next command that opens this home completes it"
                ) from None
        finally:
            if not committed:
                try:
                    ring.discard()
                    (home.state_dir / STAGED_NOTE).unlink(missing_ok=True)
                except (FedCustomerError, OSError):
                    pass  # the note stays: the next `keys migrate` destroys the staged KEK first
            ring.close()
        return {
            **details,
            "kek_version": 1,
            "rewrapped": sum(counts.values()),
            "by_table": counts,
            "rows_read": verified["rows"],
            "file_kek": "destroyed",
            "audit_key": "file",
        }


def verify_every_row(store: StoreCore, keyring: KeyRing) -> dict[str, int]:
    """Open every wrapped key with ``keyring`` and decrypt every value it protects; counts (0 lost).

    Raises KeyMaterialError or IntegrityError at the first key or value that does not open.
    """
    backend = store.backend
    q = backend.quote
    counts = {"wrapped_keys": 0, "rows": 0}
    known = set(store.datasets())
    for dataset in sorted(known):
        core = [f.name for f in store.schema(dataset).fields if f.is_core]
        cipher = FieldCipher(dataset)
        table = q(table_name(dataset))
        orphans = backend.scalar(
            f"SELECT COUNT(*) FROM {table} t LEFT JOIN data_keys k ON k.dataset = ? AND k.pseudonym = t.pseudonym "
            f"WHERE k.blob IS NULL",
            (dataset,),
        )
        if orphans:
            raise IntegrityError(
                f"{orphans} row(s) of dataset {dataset!r} have no data key; the store was altered"
            )
        sql = (
            f"SELECT k.pseudonym, k.kek_version, k.blob, t.sealed{''.join(f', t.{q(n)}' for n in core)} "
            f"FROM data_keys k LEFT JOIN {table} t ON t.pseudonym = k.pseudonym WHERE k.dataset = ?"
        )
        for row in backend.fetchall(sql, (dataset,)):
            key = open_record(keyring, cipher, row[0], WrappedKey(int(row[1]), bytes(row[2])))
            counts["wrapped_keys"] += 1
            if row[3] is None:
                continue  # a customer known only from merges or erasure bookkeeping
            open_row(key, row[3])
            key.open({n: bytes(t) for n, t in zip(core, row[4:]) if t is not None})
            counts["rows"] += 1
    for dataset, pseudonym, version, blob in backend.fetchall(
        "SELECT dataset, pseudonym, kek_version, blob FROM data_keys"
    ):
        if dataset not in known:  # a key whose dataset has no table (kept for its merges)
            open_record(keyring, FieldCipher(dataset), pseudonym, WrappedKey(int(version), bytes(blob)))
            counts["wrapped_keys"] += 1
    for dataset, pseudonym, sealed, version, blob in backend.fetchall(
        "SELECT m.dataset, m.pseudonym, m.sealed, k.kek_version, k.blob FROM merges m "
        "LEFT JOIN data_keys k ON k.dataset = m.dataset AND k.pseudonym = m.pseudonym"
    ):
        if blob is None:
            raise IntegrityError(
                f"a merge record of dataset {dataset!r} has no data key; the store was altered"
            )
        key = open_record(keyring, FieldCipher(dataset), pseudonym, WrappedKey(int(version), bytes(blob)))
        key.open_value(MERGE_FIELD, bytes(sealed))
    for dataset, label, version, blob, payload in backend.fetchall(
        "SELECT dataset, key_label, kek_version, wrapped_key, payload FROM quarantine"
    ):
        key = open_record(keyring, FieldCipher(dataset), label, WrappedKey(int(version), bytes(blob)))
        key.open_value(QUARANTINE_FIELD, bytes(payload))
        counts["wrapped_keys"] += 1
    for version, blob in backend.fetchall("SELECT kek_version, blob FROM keycheck"):
        open_record(
            keyring, FieldCipher(KEYCHECK_DATASET), KEYCHECK_LABEL, WrappedKey(int(version), bytes(blob))
        )
        counts["wrapped_keys"] += 1
    return counts


def finish_key_switch(
    home: PartnerHome,
    backend: SqliteBackend | None = None,
    *,
    file_ring: FileKeyRing | None = None,
    token_ring: KeyRing | None = None,
) -> None:
    """Complete a switch to a token that the store committed: partner.toml, then the key file's end.

    A no-op (one small query) when the store records no switch. Idempotent: after a crash
    at any point it is simply run again, by the next store open.
    """
    own = backend is None
    if backend is None:
        if not home.store_path.exists():
            return
        backend = SqliteBackend(home.store_path)
    try:
        try:
            raw = backend.scalar("SELECT value FROM meta WHERE key = ?", (SWITCH_META_KEY,))
        except (sqlite3.Error, IntegrityError):
            return  # not a store, or damaged: the store's own checks say so
        if raw is None:
            return
        target = _target_from(raw, backend)
        config = home.config()
        if config.keyring != target:
            config.keyring = target
            home.write_config(config)
        keyring_file = home.keys_dir / KEYRING_FILE
        opened: list[KeyRing] = []
        try:
            with backend.transaction():
                if _file_wrapped(backend):  # written by a handle opened before the switch: move them too
                    if file_ring is None:
                        file_ring = FileKeyRing.open(home.keys_dir)
                    if token_ring is None:
                        token_ring = open_keyring(target, home.keys_dir, config.name)
                        opened.append(token_ring)
                    _rewrap(backend, file_ring, token_ring, only_file_wrapped=True)
                shred_secret_file(keyring_file)  # under the write lock: a stale handle's next write fails
                backend.execute("DELETE FROM meta WHERE key = ?", (SWITCH_META_KEY,))
        finally:
            for ring in opened:
                getattr(ring, "close", lambda: None)()
        (home.state_dir / STAGED_NOTE).unlink(missing_ok=True)
    finally:
        if own:
            backend.close()


# --- internals ---------------------------------------------------------------------------------


def _wrapped_keys(backend: SqliteBackend) -> Iterator[tuple[str, tuple[Any, ...], WrappedKey, bytes]]:
    """(table, row key, wrapped key, context) of every wrapped key in the store."""
    for table, sql in _KEYS_SQL.items():
        for _, k1, k2, version, blob, dataset, label in backend.fetchall(sql):
            key = (k1, k2) if table == "data_keys" else (k1,)
            yield table, key, WrappedKey(int(version), bytes(blob)), data_key_context(dataset, label)


def _rewrap(backend: SqliteBackend, old: KeyRing, new: KeyRing, *, only_file_wrapped: bool) -> dict[str, int]:
    """Re-wrap data keys from ``old`` to ``new`` inside the caller's transaction; counts per table."""
    updates: dict[str, list[tuple[Any, ...]]] = {table: [] for table in _UPDATE_SQL}
    for table, key, wrapped, context in list(_wrapped_keys(backend)):
        if only_file_wrapped and wrapped.blob.startswith(PKCS11_BLOB_PREFIX):
            continue
        moved = new.wrap(old.unwrap(wrapped, context), context)
        updates[table].append((moved.kek_version, moved.blob, *key))
    for table, rows in updates.items():
        backend.executemany(_UPDATE_SQL[table], rows)
    return {table: len(rows) for table, rows in updates.items()}


def _file_wrapped(backend: SqliteBackend) -> bool:
    n = len(PKCS11_BLOB_PREFIX)
    return any(
        backend.scalar(f"SELECT COUNT(*) FROM {t} WHERE substr({col}, 1, ?) != ?", (n, PKCS11_BLOB_PREFIX))
        for t, col in (("data_keys", "blob"), ("quarantine", "wrapped_key"), ("keycheck", "blob"))
    )


def _switch_record(target: KeyringConfig) -> str:
    return json.dumps({"keyring": {k: v for k, v in asdict(target).items() if v is not None}}, sort_keys=True)


def _target_from(raw: str, backend: SqliteBackend) -> KeyringConfig:
    try:
        section = json.loads(raw)["keyring"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"{backend.path}: the recorded key switch is malformed; the store was altered"
        ) from None
    return KeyringConfig.from_mapping(section, f"{backend.path} (recorded key switch)")


def _note(target: KeyringConfig, label: str) -> dict[str, str]:
    return {"module": target.module or "", "token_label": target.token_label or "", "key_label": label}


def _drop_leftover(home: PartnerHome, token: TokenSession, target: KeyringConfig, label: str) -> None:
    """Destroy the KEK a migration of this home staged on this token and never committed (it was killed)."""
    note = home.state_dir / STAGED_NOTE
    try:
        staged = json.loads(note.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    if staged != _note(target, label) or not Pkcs11KeyRing.present(token, label):
        return
    Pkcs11KeyRing(token, label, home.keys_dir).discard()  # not closed: the session is the caller's
    note.unlink(missing_ok=True)
