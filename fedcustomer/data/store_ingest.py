"""Ingest into the store: validate, de-duplicate, seal and upsert a file in one transaction.

Every value, the row's timestamp and digest included, is sealed under the customer's
data key (:mod:`fedcustomer.privacy.crypto.envelope`); stored rows are opened with their
own key to compare. Invalid rows go to the encrypted quarantine with reasons, and merges
are recorded with their timestamps sealed. A failed ingest is audited and leaves the
store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcustomer.data.ingest import (
    ColumnMapper,
    IngestReport,
    NothingValid,
    PreparedChunk,
    check_columns,
    file_sha256,
    prepare_chunk,
    read_chunks,
    utc_now,
)
from fedcustomer.data.schema import Schema
from fedcustomer.data.store_core import Credential, StoreCore
from fedcustomer.data.store_db import (
    MERGE_FIELD,
    QUARANTINE_FIELD,
    batches,
    open_row,
    open_row_key,
    seal_row,
    table_name,
)
from fedcustomer.errors import FedCustomerError, IntegrityError, SchemaError
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.envelope import RecordKey, seal_record

Merge = tuple[str, str, str, str]  # (pseudonym, outcome, kept timestamp, dropped timestamp)


def ingest_file(
    store: StoreCore, actor: Credential, schema: Schema, path: Path, *, chunk_rows: int, id_from_row: bool
) -> IngestReport:
    """Ingest ``path`` as ``schema`` (see :meth:`PartnerStore.ingest`); failures are audited too."""
    path = Path(path)
    actor = store.principal(
        actor, action="ingest", audit_action="ingest", dataset=schema.dataset, extra={"file": path.name}
    )
    store.require(actor, "ingest", "ingest", dataset=schema.dataset, details={"file": path.name})
    try:
        return _ingest(store, actor, schema, path, chunk_rows, id_from_row)
    except Exception as exc:  # a failed ingest is audited too; the store is unchanged
        reason = str(exc) if isinstance(exc, FedCustomerError) else f"unexpected {type(exc).__name__}"
        try:
            store.log(
                actor,
                "ingest",
                "denied",
                dataset=schema.dataset,
                reason=f"ingest failed: {reason}",
                details={"file": path.name, "outcome": "failed"},
            )
        except FedCustomerError:
            pass  # the log refused the entry; the next action's log check reports why
        raise


def _ingest(
    store: StoreCore, actor: Actor, schema: Schema, path: Path, chunk_rows: int, id_from_row: bool
) -> IngestReport:
    sha = file_sha256(path)
    report = IngestReport(
        dataset=schema.dataset,
        file=path.name,
        sha256=sha,
        field_tiers={f.name: f.tier for f in schema.fields},
    )
    prior = store.backend.fetchone(
        "SELECT id FROM ingests WHERE dataset = ? AND sha256 = ?", (schema.dataset, sha)
    )
    if prior is not None:
        # The same file again adds nothing, but a schema whose tiers or types changed since must not
        # pass as done: the change would silently not apply.
        store.check_compatible(schema)
        report.skipped_file = True
        report.ingest_id = int(prior[0])
        report.finished_at = utc_now()
        store.log(
            actor,
            "ingest",
            dataset=schema.dataset,
            row_count=0,
            details={"file": path.name, "sha256": sha, "skipped": "already ingested"},
        )
        return report
    with store.write_transaction():
        store.register(schema)
        ingest_id = int(store.backend.scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM ingests"))
        report.ingest_id = ingest_id
        writer = ChunkWriter(store, schema, ingest_id, report)
        first = True
        columns = ColumnMapper(schema, str(path), store.pseudonymizer, id_from_row)
        for chunk in read_chunks(path, chunk_rows):
            chunk = columns(chunk)
            if first:
                report.ignored_columns = check_columns(schema, chunk, str(path))
                first = False
            prepared, stats = prepare_chunk(schema, chunk, store.pseudonymizer)
            report.add(stats)
            writer.write(prepared)
        if first:
            raise SchemaError(
                f"{path}: the file has no header row; expected columns {', '.join(schema.names)}"
            )
        if report.read and not report.valid:
            # rolled back: quarantining a whole file that does not fit its schema helps nobody, and
            # recording it would make the same file, ingested again under a fixed schema, a no-op
            report.finished_at, report.ingest_id = utc_now(), None  # no ingest was recorded
            report.locate_invalid_rows(path)
            raise NothingValid(report)
        report.finished_at = utc_now()
        store.backend.execute(
            "INSERT INTO ingests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ingest_id,
                schema.dataset,
                path.name,
                sha,
                actor.name,
                report.read,
                report.inserted,
                report.updated,
                report.unchanged,
                report.stale,
                report.duplicates,
                report.invalid,
                report.suppressed,
                report.started_at,
                report.finished_at,
            ),
        )
    report.locate_invalid_rows(path)
    store.log(
        actor,
        "ingest",
        dataset=schema.dataset,
        fields=schema.names,
        row_count=report.read,
        details={"file": path.name, "sha256": sha, "ingest_id": ingest_id, "rows": report.to_dict()["rows"]},
    )
    return report


class ChunkWriter:
    """Upserts prepared chunks of one ingest: newest timestamp wins against what is stored."""

    def __init__(self, store: StoreCore, schema: Schema, ingest_id: int, report: IngestReport) -> None:
        self.store = store
        self.backend = store.backend
        self.schema = schema
        self.ingest_id = ingest_id
        self.report = report
        self.cipher = FieldCipher(schema.dataset)
        self.core_names = [f.name for f in schema.fields if f.is_core]
        self.plain_names = [f.name for f in schema.fields if not f.is_core]

    def write(self, chunk: PreparedChunk) -> None:
        """Quarantine the chunk's invalid rows, then insert, update or merge each valid one."""
        self._quarantine(chunk, utc_now())
        in_file: list[Merge] = [
            (p, "duplicate_in_file", kept, dropped) for p, kept, dropped in chunk.duplicates
        ]
        if not len(chunk):
            self._write_merges(in_file, {}, set())
            return
        existing, keys, erased = self._stored(chunk.pseudonyms)
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        new_keys: list[tuple[Any, ...]] = []
        merges: list[Merge] = []
        for i, p in enumerate(chunk.pseudonyms):
            if p in erased:
                self.report.suppressed += 1
                continue
            ts, digest = chunk.timestamps[i], chunk.digests[i]
            old = existing.get(p)
            if old is not None and not self._supersedes(p, old, ts, digest, merges):
                continue
            values = {n: chunk.core[n][i] for n in self.core_names}
            present = {n: v for n, v in values.items() if v is not None}
            if old is None:
                sealed = seal_record(self.store.keyring, self.cipher, p, present)
                key = keys[p] = sealed.key
                tokens = sealed.tokens
                new_keys.append((self.schema.dataset, p, sealed.wrapped.kek_version, sealed.wrapped.blob))
            else:
                key = keys[p]
                tokens = key.seal(present)
            plain = {n: chunk.plain[n][i] for n in self.plain_names}
            row = [
                self.ingest_id,
                seal_row(key, ts, digest, plain),
                *(tokens.get(n) for n in self.core_names),
            ]
            if old is None:
                inserts.append((p, *row))
                self.report.inserted += 1
            else:
                updates.append((*row, p))
                self._count_replacement(p, old, ts, merges)
            existing[p] = (self.ingest_id, ts, digest)
        self._upsert(new_keys, inserts, updates)
        self._write_merges(in_file + merges, keys, erased)

    def _stored(
        self, pseudonyms: Sequence[str]
    ) -> tuple[dict[str, tuple[int, str, str]], dict[str, RecordKey], set[str]]:
        """The chunk's customers already stored (ingest, ts, digest), their opened keys, and the erased ones."""
        table = self.backend.quote(table_name(self.schema.dataset))
        existing: dict[str, tuple[int, str, str]] = {}
        keys: dict[str, RecordKey] = {}
        erased: set[str] = set()
        for batch in batches(pseudonyms):
            marks = ",".join("?" * len(batch))
            for p, ing, sealed, version, blob in self.backend.fetchall(
                f"SELECT t.pseudonym, t.ingest_id, t.sealed, k.kek_version, k.blob FROM {table} t "
                f"LEFT JOIN data_keys k ON k.dataset = ? AND k.pseudonym = t.pseudonym "
                f"WHERE t.pseudonym IN ({marks})",
                [self.schema.dataset, *batch],
            ):
                keys[p] = open_row_key(self.store.keyring, self.cipher, p, version, blob)
                row = open_row(keys[p], sealed)
                existing[p] = (ing, row["ts"], row["digest"])
            erased.update(
                r[0]
                for r in self.backend.fetchall(
                    f"SELECT pseudonym FROM erasures WHERE pseudonym IN ({marks})", batch
                )
            )
        return existing, keys, erased

    def _supersedes(
        self, p: str, old: tuple[int, str, str], ts: str, digest: str, merges: list[Merge]
    ) -> bool:
        """Whether a row replaces the stored one; counts (and records the merge of) one that does not."""
        old_ingest, old_ts, old_digest = old
        same_file = old_ingest == self.ingest_id
        if digest == old_digest:
            if same_file:
                self.report.duplicates += 1
                merges.append((p, "duplicate_in_file", old_ts, ts))
            else:
                self.report.unchanged += 1
            return False
        if self.schema.timestamp_field is None:
            newer = True  # a later file's row replaces the stored one
        elif same_file:
            newer = (ts, digest) > (old_ts, old_digest)  # rows of one file: the same winner in any order
        else:
            newer = (
                ts >= old_ts
            )  # a later file with the same time corrects the stored row; only older is stale
        if not newer:
            if same_file:
                self.report.duplicates += 1
            else:
                self.report.stale += 1
            merges.append((p, "duplicate_in_file" if same_file else "kept_stored", old_ts, ts))
            return False
        return True

    def _count_replacement(self, p: str, old: tuple[int, str, str], ts: str, merges: list[Merge]) -> None:
        if old[0] == self.ingest_id:
            self.report.duplicates += 1
            merges.append((p, "duplicate_in_file", ts, old[1]))
        else:
            self.report.updated += 1
            merges.append((p, "replaced_stored", ts, old[1]))

    def _upsert(
        self,
        new_keys: list[tuple[Any, ...]],
        inserts: list[tuple[Any, ...]],
        updates: list[tuple[Any, ...]],
    ) -> None:
        q = self.backend.quote
        table = q(table_name(self.schema.dataset))
        cols = ["ingest_id", "sealed", *self.core_names]
        self.backend.executemany("INSERT INTO data_keys VALUES (?, ?, ?, ?)", new_keys)
        self.backend.executemany(
            f"INSERT INTO {table} (pseudonym, {', '.join(q(c) for c in cols)}) "
            f"VALUES ({','.join('?' * (len(cols) + 1))})",
            inserts,
        )
        self.backend.executemany(
            f"UPDATE {table} SET {', '.join(q(c) + ' = ?' for c in cols)} WHERE pseudonym = ?", updates
        )

    def _write_merges(self, merges: Sequence[Merge], keys: dict[str, RecordKey], erased: set[str]) -> None:
        """Record merges with their timestamps sealed under the customer's data key.

        An erased customer's duplicates are not recorded at all: nothing about them is
        written again after the erasure.
        """
        rows = []
        for p, outcome, kept, dropped in merges:
            if p in erased:
                continue
            key = keys.get(p)
            if key is None:
                key = keys[p] = self._stored_key(p)
            sealed = key.seal_value(MERGE_FIELD, json.dumps([kept, dropped]))
            rows.append((self.schema.dataset, self.ingest_id, p, outcome, sealed))
        self.backend.executemany("INSERT INTO merges VALUES (NULL, ?, ?, ?, ?, ?)", rows)

    def _quarantine(self, chunk: PreparedChunk, now: str) -> None:
        """Store invalid rows encrypted (they may hold core values) under their own data key."""
        pseudonymizer = self.store.pseudonymizer
        rows: list[tuple[Any, ...]] = []
        for bad in chunk.invalid:
            payload_text = json.dumps(bad.raw, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            digest = pseudonymizer.pseudonym("quarantine:" + payload_text.encode("utf-8").hex())
            pseudonym = pseudonymizer.pseudonym(bad.id_value) if bad.id_value else None
            label = pseudonym or f"row:{digest}"
            sealed = seal_record(self.store.keyring, self.cipher, label, {QUARANTINE_FIELD: payload_text})
            rows.append(
                (
                    self.schema.dataset,
                    self.ingest_id,
                    bad.row,
                    pseudonym,
                    label,
                    digest,
                    json.dumps(bad.reasons),
                    sealed.wrapped.kek_version,
                    sealed.wrapped.blob,
                    sealed.tokens[QUARANTINE_FIELD],
                    now,
                )
            )
        self.backend.executemany(
            "INSERT OR IGNORE INTO quarantine (dataset, ingest_id, source_row, pseudonym, key_label, row_digest, "
            "reasons, kek_version, wrapped_key, payload, quarantined_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _stored_key(self, pseudonym: str) -> RecordKey:
        row = self.backend.fetchone(
            "SELECT kek_version, blob FROM data_keys WHERE dataset = ? AND pseudonym = ?",
            (self.schema.dataset, pseudonym),
        )
        if row is None:
            raise IntegrityError(
                f"customer {pseudonym} of dataset {self.schema.dataset!r} has stored fields but no data key; "
                f"the store was altered"
            )
        return open_row_key(self.store.keyring, self.cipher, pseudonym, row[0], row[1])
