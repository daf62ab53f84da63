"""A governed read handed over in batches, so a caller of millions of rows holds one batch at a time.

:func:`read_batches` is :meth:`PartnerStore.read_batches
<fedcustomer.data.store.PartnerStore.read_batches>`: the same steps as a whole read
(:mod:`fedcustomer.data.store_read`: authenticate, resolve, decide per field, open and mask) and
the same refusals, audited the same way. What changes is when rows leave and when the read is
logged:

* the checks run, and the read's ONE audit entry (same action, fields, tier, views, row count,
  first pseudonyms and customer set as a whole read of the same rows; the set is streamed from
  the table's pseudonyms, one chunk held at a time) is written, before the first batch
  leaves: no row reaches the caller unlogged, even if it stops half-way or its process dies;
* rows are then opened a page at a time in pseudonym order (the whole read's order), each page
  one short query after the last pseudonym handed over, so no SQL cursor or lock is held between
  batches. A failure while opening a page is audited as a failed read, as in a whole read.

The batches are a snapshot of each page, not of the whole table: a customer erased while the
batches are taken is not handed over after their erasure (the entry's row count, taken at the
start, then counts them). No ``where`` filter: the callers are PSI sessions, which read a
whole dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

import pandas as pd

from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_customers import CHUNK, record_customers
from fedcustomer.data.store_db import table_name
from fedcustomer.data.store_read import (
    _MAX_AUDIT_PSEUDONYMS,
    _Plan,
    _Read,
    decrypted_fields,
    start_read,
)
from fedcustomer.errors import ConfigError

MAX_BATCH = 1_000_000


def read_batches(
    store: StoreCore,
    actor: Credential,
    purpose: str,
    fields: Sequence[str] | None,
    *,
    dataset: str | None,
    batch_size: int,
    approval_id: str | None = None,
    now: datetime | None = None,
) -> Iterator[pd.DataFrame]:
    """Check, audit once, then return the frames of ``batch_size`` rows (the last may be shorter).

    Every refusal is raised here, before the iterator is returned; nothing is read until it is
    iterated. The frames, concatenated, are the frame :meth:`PartnerStore.read` would return."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH:
        raise ConfigError(f"a batched read needs a batch size from 1 to {MAX_BATCH:,}, got {batch_size!r}")
    read, plan = start_read(
        store, actor, purpose, fields, None, dataset=dataset, approval_id=approval_id, now=now
    )
    table = store.backend.quote(table_name(plan.schema.dataset))
    rows = int(store.backend.scalar(f"SELECT COUNT(*) FROM {table}"))
    first: list[str] = []
    if decrypted_fields(plan):
        sql = f"SELECT pseudonym FROM {table} ORDER BY pseudonym LIMIT {_MAX_AUDIT_PSEUDONYMS}"
        first = [str(r[0]) for r in store.backend.fetchall(sql)]
    customers = record_customers(store.backend, plan.schema.dataset, _pseudonyms(store, table))
    read.audit_rows(plan, rows, first, customers)
    return _pages(read, plan, batch_size)


def _pseudonyms(store: StoreCore, table: str) -> Iterator[str]:
    """Every pseudonym of the table in order, a page at a time (no cursor held across writes)."""
    after = ""
    while True:
        page = store.backend.fetchall(
            f"SELECT pseudonym FROM {table} WHERE pseudonym > ? ORDER BY pseudonym LIMIT {CHUNK}", [after]
        )
        yield from (str(r[0]) for r in page)
        if len(page) < CHUNK:
            return
        after = str(page[-1][0])


def _pages(read: _Read, plan: _Plan, size: int) -> Iterator[pd.DataFrame]:
    after: str | None = None
    while True:
        frame = read.fetch(plan, (after, size))
        if len(frame):
            yield frame
        if len(frame) < size:
            return
        after = str(frame.index[-1])
