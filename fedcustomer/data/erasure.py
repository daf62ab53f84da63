"""The right to be forgotten: crypto-shred one customer from an open store.

The customer's wrapped data keys, rows, quarantined rows and merge records are deleted
in one transaction (``secure_delete`` zeroes the freed pages; the ``-wal`` file, which still holds
the pages as they were, is then checkpointed and cut to zero bytes), the pseudonym is kept in
``erasures`` so a later file cannot bring the customer back, and the PSI state files,
which list pseudonyms too, forget them. Checked against the policy ('erase') and
audit-logged, allowed or denied.
"""

from __future__ import annotations

from typing import Any

from fedcustomer.data.ingest import utc_now
from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_db import UNSETTLED_ERASURE, settle_erasures, table_name
from fedcustomer.errors import DataError
from fedcustomer.psi.state import forget_customer


def erase_customer(
    store: StoreCore, actor: Credential, customer_id: str, *, held_only: bool = False
) -> dict[str, Any]:
    """Crypto-shred one customer in every dataset: data keys, rows, quarantine and merge records.

    A signed request names the customer by pseudonym, never by raw id. A customer the store
    does not hold is recorded too, so later ingests skip them (an erasure asked for before the
    data arrives); ``held_only`` refuses that instead, changing nothing, so that a mistyped id
    cannot silently block a real customer.
    """
    pseudonym = store.pseudonymizer.pseudonym(customer_id)
    actor = store.principal(actor, action="erase", audit_action="erase", extra={"pseudonym": pseudonym})
    store.require(actor, "erase", "erase", pseudonyms=[pseudonym])
    backend = store.backend
    result: dict[str, Any] = {"pseudonym": pseudonym, "datasets": {}}
    with backend.transaction():
        for ds in store.datasets():
            n = backend.execute(
                f"DELETE FROM {backend.quote(table_name(ds))} WHERE pseudonym = ?", (pseudonym,)
            )
            result["datasets"][ds] = n.rowcount
        for table in ("data_keys", "quarantine", "merges"):
            result[table] = backend.execute(f"DELETE FROM {table} WHERE pseudonym = ?", (pseudonym,)).rowcount
        backend.execute("INSERT OR REPLACE INTO erasures VALUES (?, ?)", (pseudonym, utc_now()))
        backend.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (UNSETTLED_ERASURE, utc_now()))
        result["found"] = bool(
            result["data_keys"] or result["quarantine"] or any(result["datasets"].values())
        )
        if held_only and not result["found"]:  # raised inside the transaction: nothing is changed
            raise DataError(
                f"no customer with that id (pseudonym {pseudonym[:16]}...) in any dataset: nothing erased. "
                "Check the id; to record an erasure for a customer whose data has not arrived yet, "
                "run again with --not-held"
            )
    # WAL keeps the pages as they were before this transaction until a checkpoint rewrites them
    result["wal_cleared"] = settle_erasures(backend)
    result["psi_state"] = forget_customer(store.home, pseudonym)
    store.log(
        actor,
        "erase",
        pseudonyms=[pseudonym],
        row_count=sum(result["datasets"].values()),
        details={k: v for k, v in result.items() if k != "pseudonym"},
    )
    return result
