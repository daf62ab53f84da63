"""The streaming PSI's worker kernels and the ordered map that runs them in worker processes.

Why apart from :mod:`fedcustomer.psi.stream`: these are the only parts a worker process runs
(hash-to-group and blinding of a batch of ids, exponentiation of a peer's packed values), so
they are plain module-level functions over bytes, picklable by name, holding no session state.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from fedcustomer.errors import DataError, IntegrityError
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.psi.core import DOMAIN, POINT_BYTES, _sodium


def hash_blind_packed(ids: Sequence[str], secret: bytes, offset: int) -> bytes:
    """Normalise, hash to the group and blind a batch of ids; packed values, in input order."""
    s = _sodium()
    from_hash, mult, sha512 = (
        s.crypto_core_ristretto255_from_hash,
        s.crypto_scalarmult_ristretto255,
        hashlib.sha512,
    )
    out = bytearray()
    for k, raw in enumerate(ids):
        if not isinstance(raw, str):
            raise DataError(
                f"PSI input row {offset + k}: customer id must be a string, got {type(raw).__name__}"
            )
        norm = normalize_id(raw)
        if not norm:
            raise DataError(
                f"PSI input row {offset + k}: customer id is empty after normalisation; drop or fix that row"
            )
        out += mult(secret, from_hash(sha512(DOMAIN + norm.encode("utf-8")).digest()))
    return bytes(out)


def exponentiate_packed(blob: bytes, secret: bytes, offset: int) -> bytes:
    """Raise packed group elements to ``secret``, in order; an invalid element aborts the session."""
    mult = _sodium().crypto_scalarmult_ristretto255
    out = bytearray()
    for k in range(0, len(blob), POINT_BYTES):
        try:
            out += mult(secret, blob[k : k + POINT_BYTES])
        except ValueError:
            raise IntegrityError(
                f"PSI value #{offset + k // POINT_BYTES} received from the other party is not a valid "
                "ristretto255 element: the message was corrupted or the peer is misbehaving; abort this session"
            ) from None
    return bytes(out)


def ordered_map(
    executor: Executor | None,
    kernel: Callable[[Any, bytes, int], bytes],
    tasks: Iterable[tuple[object, int]],
    secret: bytes,
    depth: int,
) -> Iterator[bytes]:
    """``kernel(item, secret, offset)`` over ``tasks`` in order, at most ``depth`` tasks in flight."""
    if executor is None:
        for item, offset in tasks:
            yield kernel(item, secret, offset)
        return
    pending: deque[Future[bytes]] = deque()
    try:
        for item, offset in tasks:
            pending.append(executor.submit(kernel, item, secret, offset))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
