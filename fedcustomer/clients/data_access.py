"""How a partner node reaches its own customer data for federated work.

Only through the governed store: ``PartnerStore.read`` with the ``training_pipeline``
role and purpose ``training`` (``evaluation`` for the held-out rows a model is scored on),
which the access policy limits to feature and label fields of the public and sensitive
tiers, and which writes one audit entry per read.
Only the columns the job's feature spec names are requested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from fedcustomer.data.change_stamps import change_stamp
from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import ConfigError, DataError
from fedcustomer.partner.datasets import SPLITS
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor

# The purpose a split's read is made (and audited) for.
PURPOSE_OF_SPLIT = {"train": "training", "test": "evaluation"}


class PartnerDataAccess:
    """Reads a partner dataset's train or test split as a DataFrame of the spec's columns."""

    def __init__(self, home: PartnerHome, node_name: str | None = None) -> None:
        self.home = home
        self.actor = Actor(f"node:{node_name or home.root.name}", "training_pipeline")

    def training_frame(self, dataset: str, spec: FeatureSpec, split: str) -> pd.DataFrame:
        return self.training_read(dataset, spec, split)[0]

    def training_read(
        self, dataset: str, spec: FeatureSpec, split: str, *, run_id: str | None = None
    ) -> tuple[pd.DataFrame, dict[str, Any] | None]:
        """The split's frame and the audit entry (seq, hash) that recorded the read.

        The read is audited under the purpose it serves: ``training`` for the train split,
        ``evaluation`` for the held-out split (scoring a model, not fitting one), with the job's
        ``run_id`` and the split in the entry, so the audit log tells the two apart."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not self.home.store_path.exists():
            raise DataError(f"partner home {self.home.root} has no store; ingest the partner's data first")
        with PartnerStore.open(self.home) as store:
            if dataset not in store.datasets():
                raise DataError(
                    f"partner {store.name!r} holds no dataset {dataset!r} (it has: {', '.join(store.datasets()) or 'none'})"
                )
            spec.check_against(store.schema(dataset), store.name)
            context: dict[str, Any] = {"split": split}
            if run_id is not None:
                context["run_id"] = run_id
            frame = store.read(
                store.service_credential(self.actor.name, self.actor.role),
                PURPOSE_OF_SPLIT[split],
                fields=spec.columns(),
                dataset=dataset,
                sign=True,  # one read per handle: its checkpoint now, not a second commit at close
                context=context,
                split=split,  # only that split's customers are opened, returned and cited in the entry
            )
            entry = store.last_entry
        read = {"audit_seq": entry.seq, "audit_hash": entry.hash} if entry is not None else None
        return frame.reset_index(drop=True), read

    def source_stamp(self, dataset: str) -> tuple[Any, ...] | None:
        """Changes whenever what a training read of ``dataset`` returns may have changed.

        The store's counters (ingests, erasures, data keys, rows, schema) and the access
        policy in force (its file's bytes): an erased customer, a new file or a policy that
        no longer grants the fields all make a cached matrix stale. No customer data is read.
        """
        stamp = change_stamp(self.home.store_path, dataset)
        if stamp is None:
            return None
        policy_file = self.home.config().policy_file if self.home.config_path.exists() else None
        policy = "default"
        if policy_file:
            path = Path(policy_file) if Path(policy_file).is_absolute() else self.home.root / policy_file
            try:
                policy = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                return None
        return (*stamp, policy)

    def linkage_ids(self, dataset: str) -> list[str]:
        """Customer ids for private set intersection (purpose ``record_linkage``, audited).

        The ids are blinded on this node before anything leaves it; the policy grants the
        pipeline the id field alone for this purpose.
        """
        with PartnerStore.open(self.home) as store:
            if dataset not in store.datasets():
                raise DataError(f"partner {store.name!r} holds no dataset {dataset!r}")
            id_field = store.schema(dataset).id_field.name
            frame = store.read(
                store.service_credential(self.actor.name, self.actor.role),
                "record_linkage",
                fields=[id_field],
                dataset=dataset,
            )
        return [str(v) for v in frame[id_field].tolist()]

    def linkage_column(self, dataset: str, column: str) -> tuple[list[str], list[object]]:
        """Ids and one feature or label column, row for row, for a private intersection-sum.

        Two audited reads: the ids (purpose ``record_linkage``) and the column (purpose
        ``training``, which the policy limits to feature and label fields), joined on the
        store's pseudonyms. A customer without a value gets None (the sum refuses it by row).
        """
        ids = self.linkage_ids(dataset)
        with PartnerStore.open(self.home) as store:
            names = store.schema(dataset).names
            if column not in names:
                raise DataError(
                    f"dataset {dataset!r} has no column {column!r} (columns: {', '.join(list(names)[:12])})"
                )
            frame = store.read(
                store.service_credential(self.actor.name, self.actor.role),
                "training",
                fields=[column],
                dataset=dataset,
            )
        cells = frame[column].reindex(self.pseudonyms(ids))
        return ids, [None if pd.isna(v) else v for v in cells.tolist()]

    def linkage_column_batches(
        self, dataset: str, column: str, batch: int = 65_536
    ) -> Iterator[tuple[list[str], list[object]]]:
        """:meth:`linkage_column` in batches of at most ``batch`` rows, in bounded memory.

        The same two audited reads (each one audit entry, written before its first batch), taken
        batch by batch side by side and joined on the store's pseudonyms (both come in pseudonym
        order). The store stays open until the batches are consumed or the iterator is closed."""
        with PartnerStore.open(self.home) as store:
            if dataset not in store.datasets():
                raise DataError(f"partner {store.name!r} holds no dataset {dataset!r}")
            schema = store.schema(dataset)
            id_field = schema.id_field.name
            ids = store.read_batches(
                store.service_credential(self.actor.name, self.actor.role),
                "record_linkage",
                fields=[id_field],
                dataset=dataset,
                batch_size=batch,
            )
            if column not in schema.names:
                raise DataError(
                    f"dataset {dataset!r} has no column {column!r} (columns: {', '.join(list(schema.names)[:12])})"
                )
            cells = store.read_batches(
                store.service_credential(self.actor.name, self.actor.role),
                "training",
                fields=[column],
                dataset=dataset,
                batch_size=batch,
            )
            yield from _joined(ids, cells, id_field, column)

    def pseudonyms(self, ids: list[str]) -> list[str]:
        """The store's keyed pseudonyms of ``ids`` (what alignments keep instead of raw ids)."""
        from fedcustomer.privacy.crypto.pseudonym import Pseudonymizer

        return Pseudonymizer.open(self.home.keys_dir).pseudonyms(ids)


def _joined(
    ids: Iterator[pd.DataFrame], cells: Iterator[pd.DataFrame], id_field: str, column: str
) -> Iterator[tuple[list[str], list[object]]]:
    """Each batch of ids with its customers' values (None where the column read has no row), a merge
    of two frame streams sorted by pseudonym; holds at most about two batches of values."""
    pending: list[pd.Series] = []  # values read, not yet matched, in pseudonym order
    more = True
    for frame in ids:
        last = frame.index[-1]
        while more and (not pending or pending[-1].index[-1] < last):
            page = next(cells, None)
            more = page is not None
            if page is not None and len(page):
                pending.append(page[column])
        values = pd.concat(pending) if pending else pd.Series([], dtype=object)
        matched = values.reindex(frame.index)
        rest = values[values.index > last]
        pending = [rest] if len(rest) else []
        yield (
            [str(v) for v in frame[id_field].tolist()],
            [None if pd.isna(v) else v for v in matched.tolist()],
        )
