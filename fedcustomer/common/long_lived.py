"""A job's run with the objects that were alive before it left out of Python's full collections.

A coordinator or partner process holds millions of long-lived objects (the modules of torch,
pandas, Flower and their caches). The cycle collector's full (oldest-generation) pass walks
all of them, about 0.2 s on the benchmark machine, and a job's first round leaves enough new
objects behind to trigger one, so a job paid for that walk in one of its rounds.

:func:`long_lived_frozen` moves every object alive when a job starts into the collector's
permanent generation (``gc.freeze``) for the job's duration and gives them back when it ends
(``gc.unfreeze``): the job's own objects are collected as before, and a cycle among the older
ones that becomes garbage meanwhile is collected after the job, so nothing is kept for good.
Jobs that overlap in one process share one freeze; the last to end gives the objects back.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()
_ACTIVE = 0


@contextmanager
def long_lived_frozen() -> Iterator[None]:
    """Freeze the objects alive now for the block (shared by overlapping blocks); unfreeze after."""
    global _ACTIVE
    with _LOCK:
        if _ACTIVE == 0:
            gc.freeze()
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                gc.unfreeze()
