"""A partner's ledger kept warm for the rounds of a job: its write-ahead log held between charges.

Every DP round charges the partner's ledger once, in its own durable SQLite transaction. With
no other connection open, closing that transaction's connection also checkpointed the ledger's
write-ahead log into ``ledger.db`` and deleted it, three more syncs per round. A node therefore
holds one connection per (home, run) (:class:`~fedcustomer.privacy.dp.ledger_file.WalHold`)
from the first round of a job it serves to the job's last planned round, a refusal or a failed
round, after ``IDLE_SECONDS`` without use (a job that stopped early), and with the process; each
round's ledger borrows that connection for its reads and its charge, so a charge no longer opens a
connection whose first commit also syncs the ledger's folder. Durability is unchanged: each charge still commits with a sync of the log before the update
leaves. Nothing here touches customer data.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from fedcustomer.clients.job_matrices import IDLE_SECONDS
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.ledger_file import WalHold

log = logging.getLogger(__name__)


class LedgerHolds:
    """Per-process holds, keyed by (home, run id)."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._holds: dict[tuple[str, str], tuple[WalHold, float]] = {}
        self._lock = threading.Lock()

    def hold(self, key: tuple[str, str], ledger: BudgetLedger) -> WalHold | None:
        """Hold ``ledger``'s write-ahead log for ``key`` (once; a later call marks it used) and lend
        the held connection to ``ledger``; None when no hold could be made (the round goes on without)."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, (_, used) in self._holds.items() if now - used > self.idle_seconds]
            dropped = [self._holds.pop(k)[0] for k in stale]
            held = self._holds.get(key)
            if held is not None:
                self._holds[key] = (held[0], now)
        for hold in dropped:
            hold.close()
        if held is not None:
            ledger.use_hold(held[0])
            return held[0]
        try:
            new = ledger.hold_wal()
        except sqlite3.Error as exc:  # a hold only saves syncs: the round goes on without it
            log.debug("ledger %s not held between rounds: %s", ledger.path, exc)
            return None
        with self._lock:
            kept = self._holds.get(key)
            if kept is None:
                self._holds[key], other = (new, now), None
            else:
                other = new
        if other is not None:  # another thread held it meanwhile: use that one
            other.close()
            assert kept is not None
            ledger.use_hold(kept[0])
            return kept[0]
        return new

    def current(self, key: tuple[str, str]) -> WalHold | None:
        """The hold of ``key`` if one is open, to lend a round's ledger from its construction (its
        schema check then opens no connection); :meth:`hold` still marks it used."""
        with self._lock:
            held = self._holds.get(key)
        return held[0] if held is not None else None

    def release(self, key: tuple[str, str]) -> None:
        """Close the hold of ``key``, if any (the last connection checkpoints the log)."""
        with self._lock:
            held = self._holds.pop(key, None)
        if held is not None:
            held[0].close()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._holds


HOLDS = LedgerHolds()
