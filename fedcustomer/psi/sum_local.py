"""Both parties of a private intersection-sum in one process, streamed through the chunked engine.

``fedcustomer psi --reveal sum --a FILE --b FILE`` runs the protocol of
:mod:`fedcustomer.psi.intersection_sum` with both partners' files on one machine. It used to
hold both id lists, every blinded value and every ciphertext in memory (about 2 KiB per id);
this module runs the same steps as two partner nodes' sessions (:mod:`fedcustomer.psi.sum_chunked`)
with the same engine (:class:`~fedcustomer.psi.stream.StreamingParty`, on-disk buckets, the pieces
of :mod:`fedcustomer.psi.sum_input`), so memory is one read batch, one chunk of values with
their ciphertexts and one bucket, whatever the file sizes:

1. each side's file is read in batches; its cells are parsed and kept by row on disk, its ids
   blinded into buckets (value holder A: clipped fixed-point values; predicate holder B: flags,
   then the ids its predicate rejects replaced by random elements, so its set keeps its size);
2. A's set goes to B chunk by chunk, each chunk's values encrypted under A's fresh Paillier key
   as it is handed out; B raises it to its secret and keeps each value with its ciphertext;
3. B's padded set goes to A, which raises it and answers it sorted by value (B cannot link the
   answers to its own order); B takes them back;
4. B matches bucket by bucket, sums the matches' ciphertexts with its noise share, pays its
   ledger; A decrypts, adds its own noise share, pays and releases.

No signatures: both parties are this process. The DP charge is the in-memory run's: both
budgets checked before any work, the same step key and mechanism, paid once by each, and
nothing charged when anything before the release fails. The work directory (0700, no id in it)
is removed on return, after success or failure.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.errors import BudgetExhausted, IntegrityError
from fedcustomer.privacy.dp.release import Mechanism, check
from fedcustomer.psi.bucket_files import VALUE, Buckets
from fedcustomer.psi.core import DEFAULT_MAX_SET_SIZE, POINT_BYTES, make_executor
from fedcustomer.psi.intersection_sum import (
    KEY_BITS,
    SUM_KIND,
    Payer,
    SumParams,
    SumResult,
    _ciphertext_bytes,
    _phe,
    make_rate,
    pay_sum,
    sum_step,
)
from fedcustomer.psi.release_audit import audited_check
from fedcustomer.psi.stream import StreamingParty
from fedcustomer.psi.sum_input import (
    FLAGS_FILE,
    ROLE_PREDICATE,
    ROLE_VALUE,
    VALUES_FILE,
    ColumnBatches,
    ColumnInput,
    chunk_ciphertexts,
    encrypted_sum,
    offer_dtype,
    selected_rows,
)

DEFAULT_LOCAL_CHUNK = 16_384  # ids per step: ~9 MB of ciphertexts in memory at a time


def run_intersection_sum_stream(
    batches_a: ColumnBatches,
    batches_b: ColumnBatches,
    *,
    payer_a: Payer,
    payer_b: Payer,
    params: SumParams | None = None,
    run_id: str | None = None,
    workers: int = 1,
    max_set_size: int = DEFAULT_MAX_SET_SIZE,
    chunk_size: int = DEFAULT_LOCAL_CHUNK,
    what: tuple[str, str] = ("value column", "predicate column"),
    workdir: Path | None = None,
) -> SumResult:
    """A's ``(ids, values)`` and B's ``(ids, flags)`` batches -> the released rate; each party pays.

    ``what`` names each side's column in errors (never a value). The work lives in a private
    directory inside ``workdir`` (the system temp directory by default)."""
    params = params or SumParams()
    session = secrets.token_hex(8)
    run_id = run_id or session
    step, mechanism = sum_step(run_id, session), params.mechanism()
    ledgers = {"a": payer_a.ledger(), "b": payer_b.ledger()}
    for side, payer in (("a", payer_a), ("b", payer_b)):
        try:
            audited_check(payer.home, ledgers[side], step, mechanism, kind=SUM_KIND)
        except BudgetExhausted as exc:  # say which of the two homes refused, not just "this partner"
            raise BudgetExhausted(
                f"party {side} (partner {payer.home.config().name!r}): {exc.reason}", exc.spend, exc.projected
            ) from exc
    tmp = Path(tempfile.mkdtemp(prefix="psi-sum-", dir=workdir))
    pool = make_executor(workers) if workers > 1 else None
    try:
        opts: dict[str, Any] = {"workers": workers, "executor": pool, "max_set_size": max_set_size}
        a = StreamingParty("initiator", tmp, side="a", **opts)
        b = StreamingParty("responder", tmp, side="b", **opts)
        a.blind(ColumnInput(batches_a, ROLE_VALUE, tmp / VALUES_FILE, params, what[0]).ids())
        b.blind(ColumnInput(batches_b, ROLE_PREDICATE, tmp / FLAGS_FILE, params, what[1]).ids())
        b.mask(selected_rows(tmp))
        public, private = _phe().generate_paillier_keypair(n_length=KEY_BITS)
        offers = _offer(a, b, tmp, public, chunk_size, workers)
        for blob in b.sealed_chunks(chunk_size):  # B's padded set, raised by A and answered sorted
            for _ in a.answer([blob]):
                pass
        a.write_sorted_answers()
        for start in range(0, b.set_size, chunk_size):
            b.accept_part(a.answer_chunk(start // chunk_size, chunk_size), start, ordered=False)

        def produce_b() -> tuple[dict[str, Any], Mechanism]:
            check(ledgers["b"], step, mechanism)
            sealed, matched = encrypted_sum(b, offers, public, _ciphertext_bytes(public), params)
            return {"sum": sealed.hex(), "count": max(0, matched + params.count_noise())}, mechanism

        paid_b = pay_sum(payer_b, ledgers["b"], step, produce_b)
        total, count = int.from_bytes(bytes.fromhex(paid_b["sum"]), "big"), int(paid_b["count"])

        def produce_a() -> tuple[dict[str, Any], Mechanism]:
            check(ledgers["a"], step, mechanism)
            fixed = int(private.decrypt(_phe().EncryptedNumber(public, total, 0)))
            noisy_sum, rate = make_rate(fixed + params.sum_noise(), count, params)
            return {"noisy_count": count, "noisy_sum": noisy_sum, "rate": rate}, mechanism

        out = pay_sum(payer_a, ledgers["a"], step, produce_a)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return SumResult.released(out, params, a, b, step=step)


def _offer(a: StreamingParty, b: StreamingParty, work: Path, public: Any, size: int, workers: int) -> Buckets:
    """A's set to B chunk by chunk with its values' ciphertexts; B keeps each raised value with its
    ciphertext in buckets on disk (what it matches later)."""
    width = _ciphertext_bytes(public)
    offers = Buckets(b.dir, "offers", b.buckets, offer_dtype(width))
    for k, blob in enumerate(a.sealed_chunks(size)):
        ciphertexts = chunk_ciphertexts(work, a, k, size, public.n, workers)
        raised = b"".join(b.answer([blob], keep=False))
        if len(ciphertexts) != width * (len(raised) // POINT_BYTES):
            raise IntegrityError("an intersection-sum chunk lost its ciphertexts; run it again")
        records = np.empty(len(raised) // POINT_BYTES, dtype=offers.dtype)
        records["v"] = np.frombuffer(raised, dtype=VALUE)
        records["c"] = np.frombuffer(ciphertexts, dtype=f"S{width}")
        offers.add(records)
        offers.flush()  # at once: a record is 17x a blinded value, the buffer must not grow to 2^17 of them
    return offers


__all__ = ["DEFAULT_LOCAL_CHUNK", "run_intersection_sum_stream"]
