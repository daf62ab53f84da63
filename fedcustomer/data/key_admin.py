"""Key administration over an open store: rotate the KEK, list versions and their use, retire.

Rotation re-wraps every data key in the store (customers, quarantined rows, the key
check) under the new KEK version in one transaction; retiring a version destroys its
material, refused while any wrapped key still uses it. Every action is checked against
the access policy ('keys') and audit-logged, allowed or denied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_db import KEYCHECK_DATASET, KEYCHECK_LABEL
from fedcustomer.errors import ConfigError, FedCustomerError, KeyMaterialError
from fedcustomer.privacy.crypto.keyring import WrappedKey, data_key_context, rewrap

_REWRAP_SQL = {
    "data_keys": "UPDATE data_keys SET kek_version = ?, blob = ? WHERE dataset = ? AND pseudonym = ?",
    "quarantine": "UPDATE quarantine SET kek_version = ?, wrapped_key = ? WHERE id = ?",
    "keycheck": "UPDATE keycheck SET kek_version = ?, blob = ? WHERE id = ?",
}


class KeyAdmin:
    """The KEK versions of one open store and the wrapped keys that use them."""

    def __init__(self, store: StoreCore) -> None:
        self.store = store

    def rotate(self, actor: Credential) -> dict[str, Any]:
        """Add a new KEK version and re-wrap every data key under it, in one transaction.

        If re-wrapping fails the database is unchanged and the previous KEK versions are
        still available, so every key still unwraps; run the rotation again.
        """
        store = self.store
        actor = store.principal(actor, action="keys", audit_action="key_rotate", extra={"op": "rotate"})
        store.require(actor, "keys", "key_rotate")
        rotate = getattr(store.keyring, "rotate", None)
        if rotate is None:
            raise ConfigError("this keyring cannot rotate from here; rotate the key in the KMS, then rewrap")
        created = int(rotate())
        store.log(
            actor, "key_create", details={"kek_version": created, "for": "rotation"}
        )  # even if killed next
        counts = {"data_keys": 0, "quarantine": 0, "keycheck": 0}
        with store.write_transaction():
            new_version = int(store.keyring.active_version())  # a concurrent rotation may have gone further
            for table, key, version, blob, context in list(self._wrapped_keys()):
                if version == new_version:
                    continue
                wrapped = rewrap(store.keyring, WrappedKey(version, blob), context)
                store.backend.execute(_REWRAP_SQL[table], (wrapped.kek_version, wrapped.blob, *key))
                counts[table] += 1
        result = {"active_version": new_version, "rewrapped": sum(counts.values()), "by_table": counts}
        store.log(actor, "key_rotate", details=result)
        return result

    def usage(self) -> dict[int, int]:
        """How many wrapped keys in the store use each KEK version (all kinds: what retiring checks)."""
        usage: dict[int, int] = {}
        for per_version in self.usage_by_kind().values():
            for version, n in per_version.items():
                usage[version] = usage.get(version, 0) + n
        return usage

    def usage_by_kind(self) -> dict[str, dict[int, int]]:
        """Wrapped keys per KEK version, apart: customers' data keys, quarantined rows, the store's key check.

        The key check is the store's own (it proves the keyring opens this store), not a customer's.
        """
        return {
            table: {
                int(version): int(n)
                for version, n in self.store.backend.fetchall(
                    f"SELECT kek_version, COUNT(*) FROM {table} GROUP BY kek_version"
                )
            }
            for table in ("data_keys", "quarantine", "keycheck")
        }

    def versions(self, actor: Credential | None = None) -> list[dict[str, Any]]:
        """KEK versions with status and how many wrapped keys use each (actor needs 'keys' if given)."""
        if actor is not None:
            actor = self.store.principal(actor, action="keys", audit_action="key_list", extra={"op": "list"})
            self.store.require(actor, "keys", "key_list")
        kinds = self.usage_by_kind()
        return [
            {
                "version": k.version,
                "created_at": k.created_at,
                "status": k.status,
                "customer_keys": kinds["data_keys"].get(k.version, 0),
                "quarantined_rows": kinds["quarantine"].get(k.version, 0),
                "key_check": kinds["keycheck"].get(k.version, 0),
                "wrapped_keys": sum(per.get(k.version, 0) for per in kinds.values()),
            }
            for k in self.store.keyring.versions()
        ]

    def retire(self, actor: Credential, version: int) -> None:
        """Destroy a KEK version; refused while any wrapped key in the store still uses it."""
        store = self.store
        actor = store.principal(
            actor,
            action="keys",
            audit_action="key_retire",
            extra={"op": "retire", "kek_version": int(version)},
        )
        store.require(actor, "keys", "key_retire", details={"kek_version": version})
        retire = getattr(store.keyring, "retire", None)
        if retire is None:
            raise ConfigError(
                "this keyring cannot retire versions from here; retire the key version in the KMS"
            )
        try:
            # Check and destroy under the store's write lock: writers wrap only inside a write
            # transaction after re-reading the keyring, so none can add a key under this
            # version between the check and the destruction, in this process or another.
            with store.backend.transaction():
                in_use = self.usage().get(int(version), 0)
                if in_use:
                    raise KeyMaterialError(
                        f"KEK version {version} still wraps {in_use} data key(s) in {store.home.store_path}; "
                        f"run `fedcustomer keys rotate` first, then retire it"
                    )
                retire(int(version))
        except FedCustomerError as exc:
            store.log(actor, "key_retire", "denied", reason=str(exc), details={"kek_version": version})
            raise
        store.log(actor, "key_retire", details={"kek_version": version})

    def _wrapped_keys(self) -> Iterator[tuple[str, tuple[Any, ...], int, bytes, bytes]]:
        """(table, row key, kek version, blob, context) of every wrapped key in the store."""
        backend = self.store.backend
        for ds, p, v, blob in backend.fetchall("SELECT dataset, pseudonym, kek_version, blob FROM data_keys"):
            yield "data_keys", (ds, p), v, bytes(blob), data_key_context(ds, p)
        for rid, ds, label, v, blob in backend.fetchall(
            "SELECT id, dataset, key_label, kek_version, wrapped_key FROM quarantine"
        ):
            yield "quarantine", (rid,), v, bytes(blob), data_key_context(ds, label)
        for v, blob in backend.fetchall("SELECT kek_version, blob FROM keycheck"):
            yield "keycheck", (1,), v, bytes(blob), data_key_context(KEYCHECK_DATASET, KEYCHECK_LABEL)
