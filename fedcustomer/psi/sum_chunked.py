"""One partner's side of the private intersection-sum over Flower, streamed in signed chunks.

The two sets travel as the chunked PSI's do (:mod:`fedcustomer.psi.chunked`: the same session
files, signed statements, order checks, claims and sorted answers), with the sum's roles on top:

* the value holder (``value``, A) blinds its ids and keeps its clipped fixed-point values by
  row beside them in the work directory, its Paillier key in the session state (0600); each
  chunk of its set carries its values' ciphertexts (encrypted as the chunk is handed out) and
  the public key, all under the chunk's signature;
* the predicate holder (``predicate``, B) blinds all its ids and replaces those its predicate
  does not select by random group elements (:meth:`StreamingParty.mask`), so its set has the
  size of its distinct customers whatever the predicate selects; A raises it to its secret and
  answers only once all of it has arrived, sorted by value (as count-only PSI does), so B
  cannot tell which of its values matched;
* B raises A's chunks to its secret and keeps each value with its ciphertext in buckets on its
  disk; once both sets are complete it matches bucket by bucket, sums the matches' ciphertexts
  under encryption with its share of noise, pays its ledger and answers one re-randomised
  ciphertext and a noisy count, signed over the chain of A's chunks it took;
* A checks that answer against the chain of the chunks it sent, pays, decrypts, adds its share
  of noise and releases the rate.

A party holds one chunk (values and ciphertexts) and one bucket in memory at a time, whatever
the set size. The DP charge is :mod:`fedcustomer.psi.intersection_sum`'s: the same step key and
mechanism on both ledgers, paid once each.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from fedcustomer.errors import AccessDenied, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi import signing
from fedcustomer.psi.bucket_files import VALUE, Buckets
from fedcustomer.psi.chunked import (
    VALUES_DIR,
    _Session,
    admit_peer_chunk,
    chunk_digest,
    load_session,
    note_peer_chunk,
    start_session,
    take_answer,
)
from fedcustomer.psi.core import POINT_BYTES
from fedcustomer.psi.intersection_sum import (
    KEY_BITS,
    Payer,
    SumParams,
    _ciphertext_bytes,
    _phe,
    make_rate,
    pay_sum,
    sum_step,
)
from fedcustomer.psi.state import drop_session, work_path
from fedcustomer.psi.stream import StreamingParty
from fedcustomer.psi.sum_input import (
    ROLE_PREDICATE,
    ROLE_VALUE,
    ColumnBatches,
    ColumnInput,
    chunk_ciphertexts,
    encrypted_sum,
    input_file,
    offer_dtype,
    public_key_bytes,
    selected_rows,
)

DEFAULT_SUM_CHUNK_SIZE = 100_000  # ids per message: ~54 MB with their 2048-bit Paillier ciphertexts
OFFERS = "offers"  # the predicate holder's buckets of the value holder's raised values and ciphertexts
OFFER_PARTS = ("ciphertexts", "public-key")


def params_of(state: dict[str, Any]) -> SumParams:
    return SumParams(epsilon=state["epsilon"], value_max=state["value_max"])


class SumSession(_Session):
    """An open intersection-sum session: the value holder's chunks carry their ciphertexts."""

    @property
    def role(self) -> str:
        return str(self.state["sum_role"])

    def public_key(self) -> Any:
        key = self.state["paillier"]
        return _phe().PaillierPublicKey(int(key["p"]) * int(key["q"]))

    def extras(self, party: StreamingParty, index: int) -> dict[str, bytes]:
        if self.role != ROLE_VALUE:
            return {}
        n, workers = self.public_key().n, int(self.state.get("workers", 1))
        return {
            "ciphertexts": chunk_ciphertexts(self.work, party, index, self.size, n, workers),
            "public-key": public_key_bytes(n),
        }

    def offers(self, party: StreamingParty) -> Buckets:
        dtype = offer_dtype(int(self.state["cipher_width"]))
        return Buckets(self.work / VALUES_DIR, OFFERS, party.buckets, dtype)


def load(home: PartnerHome, session: str, ttl_s: float, now: float, role: str | None = None) -> SumSession:
    """An open sum session (of ``role`` when given), else a refusal."""
    s = load_session(home, session, ttl_s, now, summing=True)
    opened = SumSession(home, session, s.state)
    if role is not None and opened.role != role:
        raise AccessDenied(f"intersection-sum session {session!r}: this partner is not the {role} holder")
    return opened


def open_sum(
    home: PartnerHome,
    bound: dict[str, Any],
    batches: ColumnBatches,
    column: str,
    *,
    max_set_size: int,
    now: float,
) -> dict[str, Any]:
    """Blind and seal our ids (values or padding beside them); answer chunk 0 of our set.

    ``batches`` are ``(ids, cells)`` row for row (a governed store's batched read): each batch's
    cells are parsed and kept by row in the work directory, its ids blinded, so a session holds
    one batch in memory, whatever the set size."""
    role = str(bound["sum_role"])
    if role == ROLE_VALUE:
        private = _phe().generate_paillier_keypair(n_length=KEY_BITS)[1]
        bound = bound | {"paillier": {"p": int(private.p), "q": int(private.q)}}  # SECRET, 0600
    work = work_path(home, str(bound["session"]))
    cells = ColumnInput(batches, role, work / input_file(role), params_of(bound), f"column {column!r}")

    def prepare(party: StreamingParty, work: Path) -> None:
        if role == ROLE_PREDICATE:
            party.mask(selected_rows(work))

    return start_session(
        home, bound, cells.ids(), None, max_set_size=max_set_size, now=now, prepare=prepare, make=SumSession
    )


def take_offer(
    s: SumSession,
    blob: bytes,
    parts: dict[str, bytes],
    chunk: tuple[int, int, int],
    signature: object,
    *,
    max_set_size: int,
) -> dict[str, Any]:
    """Predicate holder: raise chunk ``index`` of the value holder's set to our secret and keep each
    value with its ciphertext (once, in order, signed over both and the key)."""
    if s.role != ROLE_PREDICATE:
        raise AccessDenied(f"intersection-sum session {s.session!r}: only the predicate holder takes offers")
    key, ciphertexts = parts["public-key"], parts["ciphertexts"]
    width = 0

    def check() -> None:
        nonlocal width
        known = s.state.get("peer_key")
        if known is not None and known != key.hex():
            raise IntegrityError("the value holder's Paillier key changed between chunks; refused")
        n = int.from_bytes(key, "big")
        if n.bit_length() < KEY_BITS - 8:
            raise IntegrityError(f"the peer's Paillier key has {n.bit_length()} bits, fewer than {KEY_BITS}")
        width = _ciphertext_bytes(_phe().PaillierPublicKey(n))
        if len(ciphertexts) != width * (len(blob) // POINT_BYTES):
            raise IntegrityError(
                f"chunk {chunk[0]} has {len(blob) // POINT_BYTES} blinded ids but {len(ciphertexts)} bytes of "
                f"ciphertexts (expected {width} per id); the message was truncated or corrupted"
            )

    covered = chunk_digest(blob, parts)
    admit_peer_chunk(s, covered, blob, chunk, signature, max_set_size=max_set_size, check=check)
    s.state |= {"peer_key": key.hex(), "cipher_width": width}
    party = s.party()
    raised = b"".join(party.answer([blob], keep=False))
    offers = s.offers(party)
    records = np.empty(len(raised) // POINT_BYTES, dtype=offers.dtype)
    records["v"] = np.frombuffer(raised, dtype=VALUE)
    records["c"] = np.frombuffer(ciphertexts, dtype=f"S{width}")
    offers.add(records)
    offers.flush()
    note_peer_chunk(s, covered, chunk)
    s.save(party)
    return {"index": chunk[0], "chunks": chunk[1]}


def answer_digest(total: bytes, count: int) -> bytes:
    """What the predicate holder's answer signature covers: the ciphertext and the noisy count."""
    return hashlib.sha256(total + b"|" + str(count).encode()).digest()


def _complete(s: SumSession, answered: int | None) -> None:
    """Refuse to pay unless all of both sets went both ways (a dropped chunk is missing here)."""
    peer_chunks, done = s.state["peer_chunks"], int(s.state["reblinded"])
    if peer_chunks is None or done != int(peer_chunks):
        raise IntegrityError(
            f"intersection-sum session {s.session!r}: {done} of the {peer_chunks or '?'} chunks of the "
            "peer's set arrived; chunks were dropped on the way, refused"
        )
    n = int(s.state["chunks"])
    if int(s.state["sent"]) != n or answered not in (None, n):
        raise IntegrityError(
            f"intersection-sum session {s.session!r}: {answered} of the {n} chunks of our set went out and "
            "came back answered; chunks were dropped on the way, refused"
        )


def answer_sum(s: SumSession, blob: bytes | None, index: int, signature: object) -> dict[str, Any]:
    """Predicate holder: the last answer chunk, then match, sum under encryption with our noise, pay,
    and answer one re-randomised ciphertext and the noisy count."""
    if s.role != ROLE_PREDICATE:
        raise AccessDenied(f"intersection-sum session {s.session!r}: only the predicate holder answers")
    if s.state.get("peer_key") is None:
        raise IntegrityError(f"intersection-sum session {s.session!r} has no offer to answer; refused")
    _complete(s, int(s.state["accepted"]) + (blob is not None))
    party = s.party()
    if blob is not None:
        take_answer(s, party, blob, index, signature)
    phe, params = _phe(), params_of(s.state)
    public = phe.PaillierPublicKey(int(s.state["peer_key"], 16))
    width = int(s.state["cipher_width"])

    def produce() -> tuple[dict[str, Any], Any]:
        sealed, matched = encrypted_sum(party, s.offers(party), public, width, params)
        count = max(0, matched + params.count_noise())
        return {"sum": sealed.hex(), "count": count}, params.mechanism()

    payer = Payer(s.home, str(s.state["dataset"]))
    step = sum_step(str(s.state["run_id"]), s.session)
    paid = pay_sum(payer, payer.ledger(), step, produce)
    total, count = bytes.fromhex(paid["sum"]), int(paid["count"])
    link = bytes.fromhex(str(s.state["peer_chain"]))  # the value holder's chunks, as we took them
    signed = signing.session_statement(
        "doubly", s.state, answer_digest(total, count), outgoing=True, answers=link
    )
    drop_session(s.home, s.session)
    s._log(f"answered the intersection-sum over {party.set_size:,} and {party.peer_set_size:,} values")
    return {"sum": total, "count": count, "signature": signing.sign(s.home, signed)}


def finish_sum(s: SumSession, total: bytes, count: int, signature: object) -> dict[str, Any]:
    """Value holder: check the answer is about the chunks we sent, pay, decrypt, add our noise, release."""
    if s.role != ROLE_VALUE:
        raise AccessDenied(f"intersection-sum session {s.session!r}: only the value holder finishes")
    _complete(s, None)
    if int(s.state["answers_sent"]) != int(s.state["peer_chunks"]):
        raise IntegrityError(
            f"intersection-sum session {s.session!r}: our answer to the peer's set went out in "
            f"{s.state['answers_sent']} of {s.state['peer_chunks']} chunks; refused"
        )
    link = bytes.fromhex(str(s.state["sent_chain"]))
    signed = signing.session_statement(
        "doubly", s.state, answer_digest(total, count), outgoing=False, answers=link
    )
    signing.check(s.home, str(s.state["peer"]), signature, signed, "answer")
    key, params = s.state["paillier"], params_of(s.state)
    phe = _phe()
    public = s.public_key()
    private = phe.PaillierPrivateKey(public, int(key["p"]), int(key["q"]))

    def produce() -> tuple[dict[str, Any], Any]:
        try:
            fixed = int(private.decrypt(phe.EncryptedNumber(public, int.from_bytes(total, "big"), 0)))
        except (TypeError, ValueError, OverflowError):
            raise IntegrityError("the intersection-sum answer is malformed; run a new session") from None
        noisy_sum, rate = make_rate(fixed + params.sum_noise(), count, params)
        return {"noisy_count": count, "noisy_sum": noisy_sum, "rate": rate}, params.mechanism()

    payer = Payer(s.home, str(s.state["dataset"]))
    step = sum_step(str(s.state["run_id"]), s.session)
    out = pay_sum(payer, payer.ledger(), step, produce)
    drop_session(s.home, s.session)
    s._log("released the intersection-sum")
    reply: dict[str, Any] = {"noisy-count": int(out["noisy_count"]), "noisy-sum": float(out["noisy_sum"])}
    if out["rate"] is not None:
        reply["rate"] = float(out["rate"])
    return reply


__all__ = ["DEFAULT_SUM_CHUNK_SIZE", "OFFER_PARTS", "ROLE_PREDICATE", "ROLE_VALUE", "SumSession"]
