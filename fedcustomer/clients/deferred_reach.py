"""A held reach record whose update for a round's entry runs while the node builds its reply.

A round's ``fl_round`` entry is appended, synced and signed under the audit lock; then its reach
(the entry and checkpoint recorded in ``store.db``, one transaction under the store's rollback
journal, four syncs) is committed. Nothing the node does next reads the reach: it reads the new
checkpoint for the reply's anchor and encodes the update. So the reach commit of that one entry
may run on a worker thread meanwhile, and :meth:`DeferredReach.wait` ends it before the reply
leaves, as before: a reply never carries an anchor whose reach is not committed.

Only an append made with ``defer`` set (the round handler's, see
:func:`fedcustomer.clients.round_audit.record_round`) runs on the worker; every other update,
read or close first waits for the pending one, so updates stay in order. A forked child never
uses the worker (it is the parent's); it updates inline, as :class:`HeldHomeReach` itself does.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fedcustomer.privacy.audit.reach import HeldHomeReach, Reach


class DeferredReach:
    """A :class:`HeldHomeReach` whose next update may run on a worker until :meth:`wait`."""

    def __init__(self, inner: HeldHomeReach) -> None:
        self.inner = inner
        self.defer = False  # set by the hold for one append whose caller waits before replying
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def recorded(self) -> Reach | None:
        self.wait()
        return self.inner.recorded()

    def record_entry(self, seq: int, entry_hash: str, end: int) -> None:
        self._run("record_entry", seq, entry_hash, end)

    def record_checkpoint(self, number: int, digest: str) -> None:
        self._run("record_checkpoint", number, digest)

    def record_entry_and_checkpoint(
        self, seq: int, entry_hash: str, end: int, number: int, digest: str
    ) -> None:
        self._run("record_entry_and_checkpoint", seq, entry_hash, end, number, digest)

    def _run(self, fn: str, *args: Any) -> None:
        self.wait()  # one update at a time, in order
        update = getattr(self.inner, fn)
        if not self.defer or self._pid != os.getpid():
            update(*args)
            return
        with self._lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reach")
            self._pending = self._worker.submit(update, *args)

    def wait(self) -> None:
        """End the pending update, if any; its error, if it had one, is raised here."""
        if self._pid != os.getpid():
            return  # the parent's worker and update: never waited on in a forked child
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the pending update, stop the worker and close the held connection."""
        try:
            self.wait()
        finally:
            if self._pid == os.getpid():
                with self._lock:
                    worker, self._worker = self._worker, None
                if worker is not None:
                    worker.shutdown(wait=True)
            self.inner.close()
