"""A partner's training matrix, decrypted once per job and kept in memory for that job only.

Reading through the governed store (policy check, decryption of every row under its
customer's key, one audit entry) costs far more than a round of local training on a small
model, so a node reads and prepares each (run, dataset, split, feature spec) once and
re-uses the tensors in the rounds that follow, as long as

- the store and the access policy are unchanged: :meth:`PartnerDataAccess.source_stamp`
  (ingests, erasures, data keys, rows, schema, policy file) is compared every round before
  the matrix is used, and any change means a fresh governed read (an erased customer is
  never trained on after the erasure);
- the job is running: the entry is dropped after the job's last planned round, after
  ``IDLE_SECONDS`` without use (a job that stopped early), when the cache is over its byte
  limit (least recently used first), and with the process.

Nothing here is ever written to disk. The read itself is audited once by the store; every
round records which read it used (:func:`take_use`, cited by the round's ``fl_round`` entry,
and by its ``fl_evaluate`` entry for the held-out read).
Where a Flower ClientApp process lives for one message only (deployment with subprocess
isolation), each round simply reads again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

IDLE_SECONDS = 900.0
DEFAULT_MAX_MB = 512
_ENV_MAX_MB = "FEDCUSTOMER_MATRIX_CACHE_MB"  # 0 turns the cache off

Loader = Callable[[], tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]]


@dataclass
class _Entry:
    X: torch.Tensor
    y: torch.Tensor
    stamp: tuple[Any, ...]
    read: dict[str, Any] | None
    last_used: float

    @property
    def nbytes(self) -> int:
        return int(self.X.numel() * self.X.element_size() + self.y.numel() * self.y.element_size())


@dataclass(frozen=True)
class MatrixUse:
    """Which governed read a round trained on, and whether it came from this job's cache."""

    read: dict[str, Any] | None
    cached: bool

    def audit_details(self) -> dict[str, Any]:
        return {"data_read": self.read, "data_cached": self.cached}


class JobMatrices:
    """Per-process cache of prepared matrices, keyed by home, run, dataset, split and spec."""

    def __init__(self, max_bytes: int | None = None, idle_seconds: float = IDLE_SECONDS) -> None:
        if max_bytes is None:
            max_bytes = int(float(os.environ.get(_ENV_MAX_MB, DEFAULT_MAX_MB)) * 2**20)
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()
        self._uses: OrderedDict[tuple[str, str, int, str], MatrixUse] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(home: str, run_id: str, dataset: str, split: str, spec: dict[str, Any]) -> tuple[str, ...]:
        return (home, run_id, dataset, split, json.dumps(spec, sort_keys=True))

    def get(
        self,
        key: tuple[str, ...],
        stamp: tuple[Any, ...] | None,
        load: Loader,
        *,
        round_: int,
        last: bool,
        record: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, MatrixUse]:
        """The matrices for ``key``: cached when ``stamp`` matches the one they were read under.

        ``stamp`` must be taken *before* ``load`` reads, so a change racing the read makes the
        next round read again. ``last`` drops the entry once handed out (the job's last round);
        ``record`` keeps the use for :meth:`take_use`, per split (a round's training and its
        evaluation each cite the read they used).
        """
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None and (stamp is None or entry.stamp != stamp):
                del self._entries[key]
                entry = None
        if entry is not None:
            entry.last_used = now
            use = MatrixUse(entry.read, cached=True)
            X, y = entry.X, entry.y
        else:
            X, y, read = load()
            use = MatrixUse(read, cached=False)
            if stamp is not None and not last and self.max_bytes > 0:
                entry = _Entry(X, y, stamp, read, now)
                if entry.nbytes <= self.max_bytes:
                    with self._lock:
                        self._entries[key] = entry
        with self._lock:
            if last:
                self._entries.pop(key, None)
            elif key in self._entries:
                self._entries.move_to_end(key)
            self._shrink()
            if record:
                self._uses[(key[0], key[1], round_, key[3])] = use
                while len(self._uses) > 4096:
                    self._uses.popitem(last=False)
        return X, y, use

    def take_use(self, home: str, run_id: str, round_: int, split: str = "train") -> MatrixUse | None:
        """The read a round trained on (``split`` "test": was evaluated on), once: the round's
        audit entry cites it."""
        with self._lock:
            return self._uses.pop((home, run_id, round_, split), None)

    def drop_run(self, run_id: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[1] == run_id]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._uses.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if now - e.last_used > self.idle_seconds]:
            del self._entries[key]

    def _shrink(self) -> None:
        total = self.nbytes
        while self._entries and total > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.nbytes


CACHE = JobMatrices()


def take_use(home: str, run_id: str, round_: int, split: str = "train") -> MatrixUse | None:
    """The read the node's last training (or, with ``split`` "test", evaluation) of ``round_`` in
    ``run_id`` used (see :class:`JobMatrices`)."""
    return CACHE.take_use(home, run_id, round_, split)
