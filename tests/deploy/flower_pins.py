"""Pinned Flower internals: the short digest of a function's or class's source, to fail a test on upgrade.

The deployment hooks a few Flower 1.42 functions (the SuperLink's message store and Fleet pull, the
SuperNode's loop); a test pins each by the digest of its source, so a Flower upgrade that changes one
fails a test to re-read, not a deployment.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect


def source_digest(module: str, qualname: str) -> str:
    """The first 20 hex digits of the SHA-256 of ``module.qualname``'s source."""
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    source = inspect.getsource(obj)  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:20]
