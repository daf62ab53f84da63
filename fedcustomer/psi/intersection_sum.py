"""Private intersection-sum: a DP rate over the customers two partners share, and nothing about which.

Example: the default rate among the bank's customers who are also in the retailer's top RFM
segment, where neither side learns which customers are shared. The protocol follows the
"private join and compute" shape (ECDH PSI with the values riding under additively
homomorphic encryption, Paillier from python-paillier ``phe``):

Parties
    The *value holder* (A, e.g. the bank: a numeric column such as ``default``) owns a fresh
    Paillier key pair. The *predicate holder* (B, e.g. the retailer: a boolean column such as
    ``top_segment``) never sees a value in the clear.

Messages (the same bytes whether both run in one process or over the wire)
    1. A -> B ``offer``: the public key, and for each of A's distinct ids ``H(a)^x`` with
       ``Enc(v_a)`` beside it, in a secret shuffled order (values clipped to ``[0, value_max]``
       and fixed-point encoded).
    2. B -> A ``blinded``: ``H(b)^y`` for B's ids whose predicate holds, padded with random
       group elements to the number of B's distinct ids (so A learns B's set size, never how
       many satisfy the predicate), shuffled.
    3. A -> B ``doubly``: B's values raised to ``x`` and shuffled again, so B cannot link them to
       its own order.
    4. B -> A ``answer``: B raises A's points to ``y``, matches them against the ``H(b)^yx``
       set, multiplies the ciphertexts of the matches (homomorphic sum), adds its own share of
       sum noise under encryption, re-randomises the result (so A cannot find which of its
       ciphertexts went in), and returns it with a noisy count. A decrypts, adds its own
       share of sum noise and releases ``rate = noisy sum / noisy count``.

DP (epsilon split): the run's ``epsilon`` is split evenly, ``epsilon/2`` for the count
(sensitivity 1, discrete Laplace drawn by B, who alone knows the exact count) and
``epsilon/2`` for the sum (sensitivity ``value_max``; discrete Laplace drawn once by EACH party,
since each knows its own draw: B's protects B's predicate from A, A's protects A's values from
B once the rate is shared). The rate is post-processing. Like the count-only PSI count, the
one released result is about both parties' customers, so both ledgers pay the full
``epsilon`` once per (run, session), through :func:`fedcustomer.privacy.dp.release.release`.

Who sees what (semi-honest): A sees B's set size, the noisy count and the noisy sum; B sees A's
set size, ciphertexts, and the exact number of matches (as in count-only PSI); a relaying
coordinator sees only blinded points, ciphertexts, set sizes and the noisy count. No id, no
per-customer value and no membership is in any message or output.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustomer.errors import ConfigError, DataError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_keys import psi_key
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.privacy.dp.release import Mechanism, PaidResults, Step, check
from fedcustomer.psi.core import (
    DEFAULT_MAX_SET_SIZE,
    POINT_BYTES,
    PSIParty,
    hash_to_group,
    make_executor,
    pack,
    secure_shuffle,
    unpack,
)
from fedcustomer.psi.noisy_count import discrete_laplace
from fedcustomer.psi.release_audit import audited_check, audited_release

MECHANISM = "psi_sum_discrete_laplace"
SCALE = 10_000  # fixed-point: values are sent as round(v * SCALE), 4 decimals
KEY_BITS = 2048  # Paillier modulus; smaller keys are refused
TRUE_WORDS, FALSE_WORDS = (
    frozenset({"1", "true", "yes", "y", "t"}),
    frozenset({"0", "false", "no", "n", "f", ""}),
)


def _phe() -> Any:
    try:
        import phe
    except ImportError:
        raise ConfigError("the private intersection-sum needs python-paillier: `pip install phe`") from None
    return phe


# --- input checks: errors name the row, never the value ------------------------------------
def check_epsilon(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 10:
        raise ConfigError(f"intersection-sum epsilon must be a number in (0, 10], got {value!r}")
    return float(value)


def check_value_max(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1e9:
        raise ConfigError(f"value bound must be a number in (0, 1e9], got {value!r}")
    return float(value)


def parse_values(raw: Sequence[object], what: str = "value column", offset: int = 0) -> list[float]:
    """Numbers of the value column; a non-numeric or non-finite cell is a DataError naming its row
    (``offset`` + its place in ``raw``: a batch's first row)."""
    out: list[float] = []
    for k, cell in enumerate(raw, start=offset):
        try:
            number = float(cell)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"{what}, row {k}: not a number; every row needs a numeric value") from None
        if not math.isfinite(number):
            raise DataError(f"{what}, row {k}: not a finite number")
        out.append(number)
    return out


def parse_flags(raw: Sequence[object], what: str = "predicate column", offset: int = 0) -> list[bool]:
    """Booleans of the predicate column (1/0, true/false, yes/no); anything else names its row."""
    out: list[bool] = []
    for k, cell in enumerate(raw, start=offset):
        if isinstance(cell, bool):
            out.append(cell)
            continue
        word = str(cell).strip().lower()
        if word in ("1.0", "0.0"):
            word = word[0]
        if word not in TRUE_WORDS and word not in FALSE_WORDS:
            raise DataError(f"{what}, row {k}: not a boolean (use 1/0, true/false or yes/no)")
        out.append(word in TRUE_WORDS)
    return out


def _first_of_each(ids: Sequence[str], extra: Sequence[Any]) -> tuple[list[str], list[Any], int]:
    """De-duplicate by normalised id, keeping the first row's companion value."""
    if len(ids) != len(extra):
        raise DataError(f"{len(ids)} ids but {len(extra)} values; they must pair up")
    seen: set[str] = set()
    keep_ids, keep_extra = [], []
    for k, (raw, value) in enumerate(zip(ids, extra, strict=True)):
        if not isinstance(raw, str):
            raise DataError(f"row {k}: customer id must be a string, got {type(raw).__name__}")
        norm = normalize_id(raw)
        if not norm:
            raise DataError(f"row {k}: customer id is empty after normalisation; drop or fix that row")
        if norm in seen:
            continue
        seen.add(norm)
        keep_ids.append(norm)
        keep_extra.append(value)
    return keep_ids, keep_extra, len(ids) - len(keep_ids)


def _ciphertext_bytes(public_key: Any) -> int:
    return int((public_key.nsquare.bit_length() + 7) // 8)


def _pack_ciphertexts(numbers: Sequence[Any], width: int) -> bytes:
    return b"".join(int(c.ciphertext(be_secure=False)).to_bytes(width, "big") for c in numbers)


def _encrypt_chunk(n: int, fixed: Sequence[int]) -> bytes:
    """Paillier ciphertexts of whole numbers, fixed width, packed (module level: worker processes run it)."""
    public = _phe().PaillierPublicKey(n)
    return _pack_ciphertexts([public.encrypt(v) for v in fixed], _ciphertext_bytes(public))


def encrypt_all(n: int, fixed: Sequence[int], workers: int = 1, chunk: int = 512) -> bytes:
    """Encrypt in order; in worker processes when there are enough values (encryption is the cost)."""
    if workers <= 1 or len(fixed) <= chunk:
        return _encrypt_chunk(n, fixed)
    parts = [fixed[i : i + chunk] for i in range(0, len(fixed), chunk)]
    with make_executor(workers) as pool:
        return b"".join(pool.map(_encrypt_chunk, [n] * len(parts), parts))


@dataclass
class SumParams:
    """What both parties agreed to release: the total epsilon (split evenly) and the value bound."""

    epsilon: float = 1.0
    value_max: float = 1.0

    def __post_init__(self) -> None:
        self.epsilon = check_epsilon(self.epsilon)
        self.value_max = check_value_max(self.value_max)

    @property
    def count_epsilon(self) -> float:
        return self.epsilon / 2

    @property
    def sum_epsilon(self) -> float:
        return self.epsilon / 2

    @property
    def sensitivity(self) -> int:
        """One customer more or less moves the fixed-point sum by at most this."""
        return max(1, round(self.value_max * SCALE))

    def sum_noise(self) -> int:
        return discrete_laplace(self.sum_epsilon / self.sensitivity)

    def count_noise(self) -> int:
        return discrete_laplace(self.count_epsilon)

    def mechanism(self) -> Mechanism:
        return Mechanism(
            MECHANISM,
            epsilon_delta=(self.epsilon, 0.0),
            details={
                "count_epsilon": self.count_epsilon,
                "sum_epsilon": self.sum_epsilon,
                "count_sensitivity": 1,
                "sum_sensitivity": self.value_max,
            },
        )


def to_fixed(values: Sequence[float], params: SumParams) -> list[int]:
    """Values clipped to ``[0, value_max]`` and fixed-point encoded: what is encrypted and summed."""
    top = params.sensitivity
    return [min(top, max(0, round(float(v) * SCALE))) for v in values]


class ValueHolder:
    """Party A: its ids with one numeric value each; owns the Paillier key, decrypts the one sum."""

    def __init__(
        self,
        ids: Sequence[str],
        values: Sequence[float],
        params: SumParams,
        *,
        workers: int = 1,
        max_set_size: int = DEFAULT_MAX_SET_SIZE,
        key_bits: int = KEY_BITS,
    ) -> None:
        if key_bits < KEY_BITS:
            raise ConfigError(f"a Paillier key needs at least {KEY_BITS} bits, got {key_bits}")
        norm, kept, self.duplicates_removed = _first_of_each(ids, values)
        self.params, self.workers = params, workers
        self._fixed = to_fixed(kept, params)
        self._party = PSIParty(
            norm,
            role="initiator",
            labels=[str(k) for k in range(len(norm))],
            workers=workers,
            max_set_size=max_set_size,
        )
        self._public, self._private = _phe().generate_paillier_keypair(n_length=key_bits)

    @property
    def set_size(self) -> int:
        return self._party.set_size

    def to_state(self) -> dict[str, Any]:
        """What a node keeps on its own disk (0600) between messages: SECRETS (scalar, Paillier key)."""
        key = self._private
        return {"party": self._party.session_state(), "fixed": self._fixed, "p": key.p, "q": key.q,
                "duplicates": self.duplicates_removed}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any], params: SumParams, max_set_size: int) -> ValueHolder:
        self = cls.__new__(cls)
        self.params, self.workers, self.duplicates_removed = params, 1, int(state["duplicates"])
        self._fixed = [int(v) for v in state["fixed"]]
        self._party = PSIParty.restore(state["party"], max_set_size=max_set_size)
        p, q = int(state["p"]), int(state["q"])
        self._public = _phe().PaillierPublicKey(p * q)
        self._private = _phe().PaillierPrivateKey(self._public, p, q)
        return self

    def offer(self) -> dict[str, bytes]:
        """Message 1: public key, blinded ids and their encrypted values, in the party's shuffled order."""
        points = self._party.blinded()
        order = [int(label) for label in self._party.session_state()["labels"]]
        n = self._public.n
        ciphertexts = encrypt_all(n, [self._fixed[k] for k in order], self.workers)
        return {
            "public-key": n.to_bytes((n.bit_length() + 7) // 8, "big"),
            "blinded": pack(points),
            "ciphertexts": ciphertexts,
        }

    def reblind(self, message: dict[str, bytes]) -> dict[str, bytes]:
        """Message 3: B's padded values raised to our secret, shuffled so B cannot link them back."""
        doubly = self._party.reblind(unpack(message["blinded"]))
        secure_shuffle(doubly)
        return {"doubly": pack(doubly)}

    def decrypt(self, answer: dict[str, Any]) -> tuple[int, int]:
        """The fixed-point sum B returned (B's noise included) plus our own noise share, and B's noisy count."""
        try:
            number = _phe().EncryptedNumber(self._public, int.from_bytes(answer["sum"], "big"), 0)
            total = int(self._private.decrypt(number))
            count = int(answer["count"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise IntegrityError("the intersection-sum answer is malformed; run a new session") from None
        return total + self.params.sum_noise(), count


@dataclass
class SumResult:
    """What is released: the noisy count, the noisy sum (in value units) and their ratio."""

    noisy_count: int
    noisy_sum: float
    rate: float | None  # None when the noisy count is not positive
    epsilon: float
    count_epsilon: float
    sum_epsilon: float
    value_max: float
    set_size_a: int = 0
    set_size_b: int = 0
    duplicates_a: int = 0
    duplicates_b: int = 0
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)
    step: Step | None = None  # the charge both ledgers paid: ties the result to its rows and audit entries

    @classmethod
    def released(
        cls,
        out: dict[str, Any],
        params: Any,
        a: Any,
        b: Any,
        messages: list[tuple[str, dict[str, Any]]] | None = None,
        step: Step | None = None,
    ) -> SumResult:
        """The result of a paid release ``out``, with the job's DP ``params`` and the two sides' set sizes."""
        return cls(
            noisy_count=int(out["noisy_count"]),
            noisy_sum=float(out["noisy_sum"]),
            rate=None if out["rate"] is None else float(out["rate"]),
            epsilon=params.epsilon,
            count_epsilon=params.count_epsilon,
            sum_epsilon=params.sum_epsilon,
            value_max=params.value_max,
            set_size_a=a.set_size,
            set_size_b=b.set_size,
            duplicates_a=a.duplicates_removed,
            duplicates_b=b.duplicates_removed,
            messages=messages or [],
            step=step,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "noisy_count": self.noisy_count,
            "noisy_sum": self.noisy_sum,
            "rate": self.rate,
            "epsilon": {"total": self.epsilon, "count": self.count_epsilon, "sum": self.sum_epsilon},
            "value_max": self.value_max,
        }
        if self.step is not None:  # what budget show, budget verify and the psi_release entries name
            out |= {
                "run_id": self.step.run_id,
                "session": self.step.query_id,
                "charge_key": self.step.charge_key,
            }
        return out


def make_rate(fixed_sum: int, count: int, params: SumParams) -> tuple[float, float | None]:
    """The noisy sum in value units and the rate, clipped to [0, value_max]; no rate without a positive count."""
    total = fixed_sum / SCALE
    if count <= 0:
        return total, None
    return total, min(params.value_max, max(0.0, total / count))


class PredicateHolder:
    """Party B: its ids with one boolean each; matches, sums under encryption and adds its noise."""

    def __init__(
        self,
        ids: Sequence[str],
        where: Sequence[bool],
        params: SumParams,
        *,
        workers: int = 1,
        max_set_size: int = DEFAULT_MAX_SET_SIZE,
    ) -> None:
        norm, flags, self.duplicates_removed = _first_of_each(ids, where)
        self.set_size = len(norm)
        if self.set_size > max_set_size:
            raise DataError(f"{self.set_size} distinct ids, more than this party's maximum of {max_set_size}")
        self.params = params
        selected = [n for n, flag in zip(norm, flags, strict=True) if flag]
        self._party = PSIParty(
            selected,
            role="responder",
            labels=[str(k) for k in range(len(selected))],
            workers=workers,
            max_set_size=max_set_size,
        )
        self.max_set_size = max_set_size
        self.exact_count: int | None = None  # known to B alone; never sent

    def to_state(self) -> dict[str, Any]:
        """What a node keeps on its own disk (0600) between messages: the SECRET scalar, no id."""
        return {"party": self._party.session_state(), "set_size": self.set_size,
                "duplicates": self.duplicates_removed}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any], params: SumParams, max_set_size: int) -> PredicateHolder:
        self = cls.__new__(cls)
        self.params, self.max_set_size, self.exact_count = params, max_set_size, None
        self.set_size, self.duplicates_removed = int(state["set_size"]), int(state["duplicates"])
        self._party = PSIParty.restore(state["party"], max_set_size=max_set_size)
        return self

    def blinded(self) -> dict[str, bytes]:
        """Message 2: blinded ids of the customers the predicate selects, padded with random points."""
        points = self._party.blinded()
        # a random 256-bit string hashed to the group is a uniform element that matches no one
        points += [hash_to_group(secrets.token_hex(32)) for _ in range(self.set_size - len(points))]
        secure_shuffle(points)
        return {"blinded": pack(points)}

    def answer(self, offer: dict[str, bytes], doubly: dict[str, bytes]) -> dict[str, Any]:
        """Message 4: the re-randomised encrypted noisy sum of the matches' values and a noisy count."""
        phe = _phe()
        try:
            n = int.from_bytes(offer["public-key"], "big")
            public = phe.PaillierPublicKey(n)
            points = unpack(offer["blinded"])
            width = _ciphertext_bytes(public)
            blob = offer["ciphertexts"]
            returned = unpack(doubly["doubly"])
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the intersection-sum offer is malformed; run a new session") from None
        mine = set(returned)
        if len(mine) != len(returned) or len(returned) != self.set_size:
            raise IntegrityError(
                f"the peer returned {len(returned)} values ({len(mine)} distinct) for the {self.set_size} "
                "we sent; the session is inconsistent, run a new one"
            )
        if n.bit_length() < KEY_BITS - 8:
            raise IntegrityError(f"the peer's Paillier key has {n.bit_length()} bits, fewer than {KEY_BITS}")
        if len(blob) != width * len(points):
            raise IntegrityError(
                f"the offer has {len(points)} blinded ids but {len(blob)} bytes of ciphertexts "
                f"(expected {width} per id); the message was truncated or corrupted"
            )
        if len(points) > self.max_set_size:
            raise IntegrityError(f"the peer sent {len(points)} values, more than this party's maximum")
        theirs = self._party.reblind(points)
        total = public.encrypt(self.params.sum_noise(), r_value=1)  # our noise share; obfuscated below
        matched = 0
        for k, point in enumerate(theirs):
            if point in mine:
                cipher = int.from_bytes(blob[k * width : (k + 1) * width], "big")
                total = total + phe.EncryptedNumber(public, cipher, 0)
                matched += 1
        self.exact_count = matched
        total.obfuscate()  # fresh randomness: A cannot tell which of its ciphertexts went in
        return {
            "sum": int(total.ciphertext(be_secure=False)).to_bytes(width, "big"),
            "count": max(0, matched + self.params.count_noise()),
        }


# --- both parties in one process, charged to both ledgers ----------------------------------
class _JsonCodec:
    suffix = ".json"

    def dump(self, path: Path, result: dict[str, Any], paid: bool) -> None:
        from fedcustomer.common.files import atomic_write_text

        atomic_write_text(path, json.dumps({"result": result, "paid": paid}) + "\n", mode=0o600)

    def load(self, path: Path) -> tuple[dict[str, Any], bool]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return dict(doc["result"]), bool(doc["paid"])


@dataclass(frozen=True)
class Payer:
    """A party's partner home and the dataset its ledger records the charge under."""

    home: PartnerHome
    dataset: str

    def ledger(self) -> Any:
        return self.home.ledger(self.dataset, self.home.config().budget_for(self.dataset))


SUM_KIND = "intersection_sum"  # the kind of its ``psi_release`` audit entries


def sum_step(run_id: str, session: str) -> Step:
    """The charge of one session: the same key on both ledgers, paid once each."""
    return Step(
        charge_key=psi_key("sum", run_id, session),
        label=f"PSI intersection-sum of session {session}",
        run_id=run_id,
        query_id=session,
    )


def paid_results(payer: Payer) -> PaidResults[dict[str, Any]]:
    """Where a party keeps what it released for a step, so a re-sent request gets the same answer."""
    return PaidResults(payer.home.state_dir / "psi" / "sums", _JsonCodec())


def pay_sum(
    payer: Payer, ledger: Any, step: Step, produce: Callable[[], tuple[dict[str, Any], Mechanism]]
) -> dict[str, Any]:
    """A party's side of the session's release: paid once from its ledger, kept, and audited."""
    return audited_release(payer.home, ledger, step, paid_results(payer), produce, kind=SUM_KIND).result


def run_intersection_sum_local(
    ids_a: Sequence[str],
    values_a: Sequence[float],
    ids_b: Sequence[str],
    where_b: Sequence[bool],
    *,
    payer_a: Payer,
    payer_b: Payer,
    params: SumParams | None = None,
    run_id: str | None = None,
    workers: int = 1,
    max_set_size: int = DEFAULT_MAX_SET_SIZE,
    keep_messages: bool = False,
) -> SumResult:
    """Both sides of one intersection-sum session in this process; each pays its own ledger.

    Both budgets are checked before any work, so a refusal leaves both ledgers as they were.
    ``keep_messages`` keeps the four messages (bytes) on the result, for inspection.
    """
    params = params or SumParams()
    session = secrets.token_hex(8)
    run_id = run_id or session
    step, mechanism = sum_step(run_id, session), params.mechanism()
    ledgers = {"a": payer_a.ledger(), "b": payer_b.ledger()}
    for payer, ledger in ((payer_a, ledgers["a"]), (payer_b, ledgers["b"])):
        audited_check(payer.home, ledger, step, mechanism, kind=SUM_KIND)
    a = ValueHolder(ids_a, values_a, params, workers=workers, max_set_size=max_set_size)
    b = PredicateHolder(ids_b, where_b, params, workers=workers, max_set_size=max_set_size)
    offer, padded = a.offer(), b.blinded()
    doubly = a.reblind(padded)

    def produce_b() -> tuple[dict[str, Any], Mechanism]:
        check(ledgers["b"], step, mechanism)
        reply = b.answer(offer, doubly)
        return {"sum": reply["sum"].hex(), "count": reply["count"]}, mechanism

    paid_b = pay_sum(payer_b, ledgers["b"], step, produce_b)
    answer = {"sum": bytes.fromhex(paid_b["sum"]), "count": int(paid_b["count"])}

    def produce_a() -> tuple[dict[str, Any], Mechanism]:
        check(ledgers["a"], step, mechanism)
        fixed, count = a.decrypt(answer)
        noisy_sum, rate = make_rate(fixed, count, params)
        return {"noisy_count": count, "noisy_sum": noisy_sum, "rate": rate}, mechanism

    out = pay_sum(payer_a, ledgers["a"], step, produce_a)
    messages: list[tuple[str, dict[str, Any]]] = [
        ("offer", offer),
        ("blinded", padded),
        ("doubly", doubly),
        ("answer", answer),
    ]
    return SumResult.released(out, params, a, b, messages if keep_messages else None, step=step)


__all__ = [
    "KEY_BITS",
    "MECHANISM",
    "POINT_BYTES",
    "Payer",
    "PredicateHolder",
    "SumParams",
    "SumResult",
    "ValueHolder",
    "make_rate",
    "parse_flags",
    "parse_values",
    "run_intersection_sum_local",
]
