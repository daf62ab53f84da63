"""Private set intersection (PSI): align the customers two partners share, and nothing more.

Before a bank and a retailer train a joint (vertical) model they must find their shared
customers without either side learning who the other's *other* customers are. This module
is the two-party Diffie-Hellman PSI over the ristretto255 prime-order group.

Group and library
    ristretto255 from libsodium (>= 1.0.18, the system library) through the ``pysodium``
    binding: ``crypto_core_ristretto255_from_hash`` (hash to group, two Elligator maps),
    ``crypto_scalarmult_ristretto255`` and ``crypto_core_ristretto255_scalar_random``.
    Ristretto gives a prime-order group with canonical encodings, so there is no cofactor
    to clear and a malformed peer value is rejected by libsodium instead of leaking bits of
    our secret. (PyNaCl's bundled libsodium is built without the ristretto functions, and
    ``cryptography``'s X25519 has neither hash-to-curve nor unclamped scalars.)

Protocol (one session, parties A = initiator and B = responder; the coordinator relays)
    1. Each side normalises its ids (:func:`~fedcustomer.privacy.crypto.pseudonym.normalize_id`),
       drops duplicates, hashes each id to the group with a domain-separation label
       (``SHA-512(DOMAIN || id)`` -> ``from_hash``), raises it to a fresh secret scalar
       (``x`` for A, ``y`` for B) and sends the values in a ``secrets``-shuffled order.
    2. Each side raises the values it received to its own secret and returns them in the
       order received: A gets ``H(a)^xy`` in A's own order, B gets ``H(b)^yx`` in B's.
    3. Each side intersects its own doubly-blinded values with the ones it computed for
       the other side. A shared customer has the same ``H(id)^xy`` on both sides, so both
       list their shared customers sorted by that value: one canonical row order that the
       two sides agree on without ever exchanging an id.

Who learns what (semi-honest model: both parties follow the protocol but may study
what they see)
    * Each party learns the intersection as row alignment (its own local ids of the shared
      customers, in the agreed order), its size, and the other side's de-duplicated set size.
    * About the other side's non-shared customers a party learns nothing: it only holds
      ``H(b)^y`` and ``H(b)^yx`` for them, which under the decisional Diffie-Hellman
      assumption (hash modelled as a random oracle) look like random group elements.
    * The coordinator relays only blinded values; it learns both set sizes and, because it
      sees both doubly-blinded lists (and the parties report it), the intersection size.
      Fresh scalars per session make values from different sessions unlinkable.
    * A malicious party can: substitute its input (e.g. a dictionary of candidate national
      IDs, learning which are the other's customers: bound this by capping set sizes and
      auditing sessions); return wrong values so the other side computes a wrong or empty
      intersection (the parties' alignment digests then differ, which the coordinator
      checks); or stop mid-session. A malicious coordinator can drop or replace values
      (caught by the digest check when it changes the shared set), permute a party's returned
      values (NOT caught: that party would mislabel its shared rows), or impersonate a
      partner, since the parties do not authenticate each other's messages; signing each
      message with pinned partner keys would close these and is not done here.

Failed sessions leave nothing behind but what the caller chooses to store; secret scalars
live only in the :class:`PSIParty` object (and in node-local state for the Flower protocol,
see :mod:`fedcustomer.psi.protocol`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fedcustomer.errors import AccessDenied, ConfigError, DataError, IntegrityError
from fedcustomer.privacy.crypto.pseudonym import normalize_id

DOMAIN = b"fedcustomer/psi/v1/ristretto255/sha512:"  # domain-separation label for hash-to-group
POINT_BYTES = 32
ROLES = ("initiator", "responder")
DEFAULT_CHUNK = 4096  # values per worker task: large enough to hide IPC, small enough to balance
# Most distinct ids one side brings or accepts from its peer in one session. Bounds the CPU a
# peer (or a coordinator) can make a party spend and how many guesses one session can test;
# raise it per node (``psi-max-set-size``) or per run (``fedcustomer psi --max-ids``).
DEFAULT_MAX_SET_SIZE = 1_000_000


def _sodium() -> Any:
    """pysodium loaded lazily, so a missing system libsodium is a clear error, not an import crash."""
    try:
        import pysodium
    except (ImportError, OSError, ValueError) as exc:
        raise ConfigError(
            "private set intersection needs libsodium >= 1.0.18 and the pysodium binding "
            f"({exc}); install the system library (e.g. apt install libsodium23) and `pip install pysodium`"
        ) from None
    if not pysodium.sodium_version_check(1, 0, 18):
        raise ConfigError(
            "private set intersection needs libsodium >= 1.0.18 (ristretto255); upgrade libsodium"
        )
    return pysodium


def new_secret() -> bytes:
    """A fresh uniformly random non-zero scalar from libsodium's CSPRNG; one per session."""
    return _sodium().crypto_core_ristretto255_scalar_random()


def hash_to_group(normalised_id: str) -> bytes:
    """H(id): the group element of an already-normalised id (domain-separated SHA-512 -> from_hash)."""
    digest = hashlib.sha512(DOMAIN + normalised_id.encode("utf-8")).digest()
    return _sodium().crypto_core_ristretto255_from_hash(digest)


# --- batch kernels (module level so worker processes can run them) -----------------------
def _hash_and_blind(ids: Sequence[str], secret: bytes, offset: int = 0) -> list[bytes]:
    s = _sodium()
    from_hash, mult, sha512 = (
        s.crypto_core_ristretto255_from_hash,
        s.crypto_scalarmult_ristretto255,
        hashlib.sha512,
    )
    return [mult(secret, from_hash(sha512(DOMAIN + i.encode("utf-8")).digest())) for i in ids]


def _exponentiate(points: Sequence[bytes], secret: bytes, offset: int = 0) -> list[bytes]:
    mult = _sodium().crypto_scalarmult_ristretto255
    out = []
    for k, p in enumerate(points):
        try:
            out.append(mult(secret, p))
        except ValueError:
            raise IntegrityError(
                f"PSI value #{offset + k} received from the other party is not a valid ristretto255 element: "
                "the message was corrupted or the peer is misbehaving; abort this session"
            ) from None
    return out


def _chunks(items: Sequence, size: int) -> tuple[list[Sequence], list[int]]:
    starts = list(range(0, len(items), size))
    return [items[i : i + size] for i in starts], starts


def _run_batched(
    kernel: Callable[[Sequence, bytes, int], list[bytes]],
    items: Sequence,
    secret: bytes,
    workers: int,
    executor: Executor | None,
    chunk: int,
) -> list[bytes]:
    """Apply ``kernel`` to ``items`` in order, in worker processes when that pays off."""
    if executor is None and (workers <= 1 or len(items) <= chunk):
        return kernel(items, secret)
    parts, starts = _chunks(items, max(1, min(chunk, -(-len(items) // max(workers, 1)))))
    if executor is not None:
        results = executor.map(kernel, parts, [secret] * len(parts), starts)
        return [v for part in results for v in part]
    with make_executor(workers) as pool:
        results = pool.map(kernel, parts, [secret] * len(parts), starts)
        return [v for part in results for v in part]


def make_executor(workers: int) -> ProcessPoolExecutor:
    """A process pool for PSI batches; ``forkserver`` so it is safe inside threaded (Flower, torch) processes."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


def secure_shuffle(items: list) -> None:
    """Fisher-Yates in place with ``secrets``: the send order reveals nothing about input order."""
    for i in range(len(items) - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        items[i], items[j] = items[j], items[i]


def pack(points: Sequence[bytes]) -> bytes:
    """Concatenate fixed-size group elements for the wire."""
    return b"".join(points)


def unpack(blob: bytes) -> list[bytes]:
    """Split a packed blob into group elements; a ragged length means a corrupted message."""
    if len(blob) % POINT_BYTES:
        raise IntegrityError(
            f"PSI message of {len(blob)} bytes is not a whole number of {POINT_BYTES}-byte group elements; "
            "the message was truncated or corrupted"
        )
    return [blob[i : i + POINT_BYTES] for i in range(0, len(blob), POINT_BYTES)]


@dataclass
class PSIResult:
    """What one side learns: the shared customers as its own local ids, in the agreed order.

    ``local_ids[k]`` on one side and ``local_ids[k]`` on the other are the same customer.
    ``digest`` (SHA-256 over the sorted doubly-blinded values) is equal on both sides exactly
    when they agree on the alignment; it reveals nothing about ids and may be shared.
    """

    size: int
    local_ids: list[str | None]  # None: the customer was erased after the session
    duplicates_removed: int
    set_size: int = 0
    peer_set_size: int = 0
    digest: str = ""

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "local_ids": list(self.local_ids),
            "duplicates_removed": self.duplicates_removed,
            "set_size": self.set_size,
            "peer_set_size": self.peer_set_size,
            "digest": self.digest,
        }


@dataclass
class _Prepared:
    send_order: list[str] = field(default_factory=list)  # normalised ids in the order sent
    local_of: dict[str, str] = field(default_factory=dict)  # normalised id -> first local spelling
    duplicates: int = 0


def check_max_set_size(value: object) -> int:
    """A positive whole number of ids, or ConfigError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"the PSI maximum set size must be a whole number >= 1, got {value!r}")
    return value


def _prepare(ids: Sequence[str], labels: Sequence[str] | None = None) -> _Prepared:
    if labels is not None and len(labels) != len(ids):
        raise DataError(f"PSI input has {len(ids)} ids but {len(labels)} local labels; they must pair up")
    prep = _Prepared()
    for k, raw in enumerate(ids):
        if not isinstance(raw, str):
            raise DataError(f"PSI input row {k}: customer id must be a string, got {type(raw).__name__}")
        norm = normalize_id(raw)
        if not norm:
            raise DataError(
                f"PSI input row {k}: customer id is empty after normalisation; drop or fix that row"
            )
        if norm in prep.local_of:
            prep.duplicates += 1
            continue
        prep.local_of[norm] = raw if labels is None else labels[k]
    prep.send_order = list(prep.local_of)
    secure_shuffle(prep.send_order)
    return prep


class PSIParty:
    """One side of one PSI session: a fresh secret scalar, its ids in a secret shuffled order.

    ``labels`` (optional, parallel to ``ids``) is what the result lists for each shared
    customer instead of the id itself, e.g. the store's pseudonym or a row number, so the
    alignment kept on disk need not hold raw ids. Duplicates keep their first label.

    The ids themselves are needed only until they are blinded: :meth:`session_state`
    (what a node keeps on disk between messages) holds the labels and the blinded values,
    never an id, and a restored party works from those alone.

    ``max_set_size`` caps this side's distinct ids and the number of values it accepts
    from its peer, so one session cannot cost unbounded CPU or test unbounded guesses.

    Never reuse a party for a second session: a new object draws a new secret, so blinded
    values from two sessions cannot be linked.
    """

    def __init__(
        self,
        ids: Sequence[str],
        *,
        role: str,
        labels: Sequence[str] | None = None,
        workers: int = 1,
        executor: Executor | None = None,
        chunk: int = DEFAULT_CHUNK,
        max_set_size: int = DEFAULT_MAX_SET_SIZE,
        _secret: bytes | None = None,
        _labels: list[str | None] | None = None,
        _blinded: list[bytes] | None = None,
        _duplicates: int = 0,
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"PSI role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers!r}")
        self.role = role
        self.workers = workers
        self.chunk = chunk
        self.max_set_size = check_max_set_size(max_set_size)
        self._executor = executor
        self._send_order: list[str] | None = None  # normalised ids, in memory only until blinded
        self._labelled = labels is not None or _labels is not None
        if _labels is not None:  # restored from node-local state (see psi_protocol)
            self._labels, self.duplicates_removed = _labels, _duplicates
        else:
            if len(ids) > self.max_set_size:  # checked before any per-id work
                raise DataError(
                    f"PSI input has {len(ids)} ids, more than this party's maximum of "
                    f"{self.max_set_size}; raise the PSI maximum set size or split the dataset"
                )
            prep = _prepare(ids, labels)
            self._send_order, self.duplicates_removed = prep.send_order, prep.duplicates
            self._labels = [prep.local_of[n] for n in prep.send_order]
        self._secret = _secret if _secret is not None else new_secret()
        self._blinded: list[bytes] | None = _blinded
        self.peer_set_size = 0

    def session_state(self) -> dict:
        """Everything needed to resume this session in another process: the role, the SECRET
        scalar, this side's labels and blinded values in send order. No customer id: keep it
        on the partner's own disk (0600) and delete it when the session ends.

        Refused for a party built without ``labels``: its labels are the raw ids themselves."""
        if not self._labelled:
            raise ConfigError(
                "a PSI party without local labels lists raw ids and cannot be saved to disk; "
                "give it labels (e.g. pseudonyms or row numbers)"
            )
        blinded = self.blinded()
        return {
            "role": self.role,
            "secret": self._secret.hex(),
            "labels": list(self._labels),
            "duplicates": self.duplicates_removed,
            "blinded": pack(blinded).hex(),
        }

    @classmethod
    def restore(cls, state: dict, *, workers: int = 1, max_set_size: int = DEFAULT_MAX_SET_SIZE) -> PSIParty:
        """The party saved by :meth:`session_state` (same secret, same labels, same blinded values)."""
        try:
            labels = state["labels"]
            if not isinstance(labels, list) or not all(x is None or isinstance(x, str) for x in labels):
                raise TypeError("labels must be a list of strings")
            blinded = unpack(bytes.fromhex(state["blinded"]))
            if len(blinded) != len(labels):
                raise ValueError(f"{len(blinded)} blinded values for {len(labels)} labels")
            party = cls(
                (),
                role=state["role"],
                workers=workers,
                max_set_size=max_set_size,
                _secret=bytes.fromhex(state["secret"]),
                _labels=list(labels),
                _blinded=blinded,
                _duplicates=int(state["duplicates"]),
            )
        except (KeyError, TypeError, ValueError, IntegrityError) as exc:
            raise IntegrityError(
                f"PSI session state is damaged ({type(exc).__name__}: {exc}); start a new session"
            ) from None
        return party

    @property
    def set_size(self) -> int:
        """Number of distinct (normalised) ids this side brings."""
        return len(self._labels)

    def blinded(self) -> list[bytes]:
        """H(id)^secret for every distinct id, in this session's shuffled order (computed once)."""
        if self._blinded is None:
            assert self._send_order is not None  # a restored party always carries its blinded values
            self._blinded = _run_batched(
                _hash_and_blind, self._send_order, self._secret, self.workers, self._executor, self.chunk
            )
            self._send_order = None  # the ids are not needed any more
        return list(self._blinded)

    def reblind(self, others_blinded: Sequence[bytes]) -> list[bytes]:
        """Raise the other side's values to our secret, keeping their order."""
        if len(others_blinded) > self.max_set_size:
            raise AccessDenied(
                f"the other party sent {len(others_blinded)} PSI values, more than this party's "
                f"maximum of {self.max_set_size}; refused"
            )
        bad = next((k for k, p in enumerate(others_blinded) if len(p) != POINT_BYTES), None)
        if bad is not None:
            raise IntegrityError(
                f"PSI value #{bad} from the other party has {len(others_blinded[bad])} bytes, "
                f"expected {POINT_BYTES}; abort this session"
            )
        self.peer_set_size = len(others_blinded)
        return _run_batched(
            _exponentiate, list(others_blinded), self._secret, self.workers, self._executor, self.chunk
        )

    def intersect(self, my_doubly: Sequence[bytes], their_doubly: Sequence[bytes]) -> PSIResult:
        """Match our values (doubly blinded by the peer, in our send order) with theirs (blinded by us).

        Returns our local ids of the shared customers sorted by their doubly-blinded value,
        which both sides compute identically.
        """
        if len(my_doubly) != len(self._labels):
            raise IntegrityError(
                f"the other party returned {len(my_doubly)} doubly-blinded values for the {len(self._labels)} "
                "we sent; the session is inconsistent, run it again"
            )
        theirs = set(their_doubly)
        if len(theirs) != len(their_doubly):
            raise IntegrityError(
                "the other party's blinded values contain repeats, which honest de-duplicated "
                "input never produces; abort this session"
            )
        shared = sorted((d, k) for k, d in enumerate(my_doubly) if d in theirs)
        digest = hashlib.sha256(b"".join(d for d, _ in shared)).hexdigest()
        return PSIResult(
            size=len(shared),
            local_ids=[self._labels[k] for _, k in shared],
            duplicates_removed=self.duplicates_removed,
            set_size=self.set_size,
            peer_set_size=len(their_doubly),
            digest=digest,
        )


def run_psi_local(
    ids_a: Sequence[str],
    ids_b: Sequence[str],
    *,
    workers: int = 1,
    chunk: int = DEFAULT_CHUNK,
    labels_a: Sequence[str] | None = None,
    labels_b: Sequence[str] | None = None,
    max_set_size: int = DEFAULT_MAX_SET_SIZE,
) -> tuple[PSIResult, PSIResult]:
    """Run both sides of one session in this process (tests, CLI, benchmark); same maths as the wire.

    ``labels_a`` / ``labels_b`` are what each side's result lists instead of its ids.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    pool = make_executor(workers) if workers > 1 else None
    try:
        a = PSIParty(
            ids_a,
            role="initiator",
            labels=labels_a,
            workers=workers,
            executor=pool,
            chunk=chunk,
            max_set_size=max_set_size,
        )
        b = PSIParty(
            ids_b,
            role="responder",
            labels=labels_b,
            workers=workers,
            executor=pool,
            chunk=chunk,
            max_set_size=max_set_size,
        )
        blind_a, blind_b = a.blinded(), b.blinded()
        a_doubly_by_b = b.reblind(blind_a)  # returned to A, in A's order
        b_doubly_by_a = a.reblind(blind_b)  # returned to B, in B's order
        return a.intersect(a_doubly_by_b, b_doubly_by_a), b.intersect(b_doubly_by_a, a_doubly_by_b)
    finally:
        if pool is not None:
            pool.shutdown()
