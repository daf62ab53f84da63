"""Private intersection-sum: the noisy rate is right within its noise, the messages and the release
hold no id, no per-customer value and no membership, and a refusal leaves both ledgers as they were."""

from __future__ import annotations

import hashlib
import math

import pytest

from fedcustomer.errors import BudgetExhausted, ConfigError, DataError, IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.partner.ledger_audit import check_ledger_against_audit, log_entries
from fedcustomer.privacy.audit.records import ACTION_PSI_RELEASE
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.psi.core import unpack
from fedcustomer.psi.intersection_sum import (
    MECHANISM,
    SCALE,
    Payer,
    PredicateHolder,
    SumParams,
    ValueHolder,
    parse_flags,
    parse_values,
    run_intersection_sum_local,
)

# 150 customers in both files; the retailer's predicate holds for 90 of them (and for 40 of its own).
SHARED = [f"CU{i:05d}x" for i in range(150)]
ONLY_A = [f"BA{i:05d}y" for i in range(60)]
ONLY_B = [f"RE{i:05d}z" for i in range(80)]
IDS_A = SHARED + ONLY_A
IDS_B = [s.lower() for s in SHARED] + ONLY_B  # spelled differently: matched after normalisation
WHERE_B = [i < 90 for i in range(150)] + [i < 40 for i in range(80)]
# The value is 0.8 exactly for the shared customers the predicate selects, 0.1234 for everyone else:
# a sum over the wrong set (all shared, all of A) gives a visibly different rate.
VALUES_A = [0.8 if i < 90 else 0.1234 for i in range(150)] + [0.1234] * 60
TRUE_COUNT, TRUE_SUM = 90, 72.0


def _payers(tmp_path, eps_a: float = 20.0, eps_b: float = 20.0) -> tuple[Payer, Payer]:
    bank = PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(eps_a, 1e-5))
    shop = PartnerHome.create(tmp_path / "shop", "shop", budget=DatasetBudget(eps_b, 1e-5))
    return Payer(bank, "accounts"), Payer(shop, "loyalty")


def _charges(payer: Payer) -> list[tuple[str, float]]:
    return [(c.charge_key, c.epsilon) for c in payer.home.ledger(payer.dataset).charges()]


def test_noisy_rate_matches_the_plain_computation_within_its_noise(tmp_path):
    pa, pb = _payers(tmp_path)
    params = SumParams(epsilon=4.0, value_max=1.0)
    res = run_intersection_sum_local(IDS_A, VALUES_A, IDS_B, WHERE_B, payer_a=pa, payer_b=pb, params=params)
    # count: one discrete Laplace draw of scale 1/2; sum: two draws of scale value_max/2 (one per party).
    # 12 noise scales: a miss has probability below 1e-5, a wrong set misses by far more.
    assert abs(res.noisy_count - TRUE_COUNT) <= 12 / params.count_epsilon
    assert abs(res.noisy_sum - TRUE_SUM) <= 2 * 12 * params.value_max / params.sum_epsilon
    assert res.rate is not None and abs(res.rate - 0.8) < 0.15
    assert (res.set_size_a, res.set_size_b) == (210, 230)
    # both parties paid the whole epsilon once, with the split stated in the charge
    for payer in (pa, pb):
        charges = [c for c in payer.home.ledger(payer.dataset).charges() if c.mechanism == MECHANISM]
        assert len(charges) == 1 and charges[0].epsilon == pytest.approx(4.0)
        assert charges[0].details["count_epsilon"] == charges[0].details["sum_epsilon"] == 2.0
        # and logged the release with what it cost; the ledger row agrees with the entry
        with payer.home.open_audit_log() as log:
            (entry,) = log.query(action=ACTION_PSI_RELEASE)
        assert entry.details["kind"] == "intersection_sum" and entry.decision == "allowed"
        assert entry.details["charge_key"] == charges[0].charge_key
        assert entry.details["epsilon_total"] == pytest.approx(charges[0].epsilon_total)
        all_charges = payer.home.ledger(payer.dataset).all_charges()
        report = check_ledger_against_audit(all_charges, log_entries(payer.home.audit_dir))
        assert report.ok and report.checked_by_kind == {"psi_release": 1}


def test_messages_and_release_hold_no_id_no_value_and_no_membership(tmp_path):
    pa, pb = _payers(tmp_path)
    res = run_intersection_sum_local(
        IDS_A, VALUES_A, IDS_B, WHERE_B, payer_a=pa, payer_b=pb, keep_messages=True
    )
    messages = dict(res.messages)
    assert list(messages) == ["offer", "blinded", "doubly", "answer"]
    wire = b"".join(
        v if isinstance(v, bytes) else str(v).encode() for m in res.messages for v in m[1].values()
    )
    for raw in IDS_A + IDS_B:
        for form in (raw, normalize_id(raw)):
            assert form.encode() not in wire
            assert hashlib.sha512(form.encode()).digest()[:16] not in wire
    # per-customer values travel only as Paillier ciphertexts, fresh randomness each: equal values
    # (0.1234 for 120 customers) give 210 different ciphertexts, none holding the fixed-point value
    offer = messages["offer"]
    width = len(offer["ciphertexts"]) // len(unpack(offer["blinded"]))
    assert width >= 512
    cts = [offer["ciphertexts"][k * width : (k + 1) * width] for k in range(210)]
    assert len(set(cts)) == 210
    for fixed in (round(0.1234 * SCALE), round(0.8 * SCALE)):
        assert not any(int.from_bytes(c, "big") == fixed for c in cts)
    # the predicate holder sends as many values as it has customers: how many match its predicate
    # (130) is hidden by random padding
    assert len(unpack(messages["blinded"]["blinded"])) == 230
    # what comes back is only one ciphertext and one noisy count; the release is aggregates only
    assert set(messages["answer"]) == {"sum", "count"} and len(messages["answer"]["sum"]) == width
    # aggregates only, and the names of the charge they were paid under (random session, run id)
    released = {"noisy_count", "noisy_sum", "rate", "epsilon", "value_max"}
    assert set(res.to_dict()) == released | {"run_id", "session", "charge_key"}


def test_the_returned_values_are_shuffled_and_the_sum_carries_the_peer_noise(tmp_path):
    params = SumParams(epsilon=1.0)
    a = ValueHolder(IDS_A, VALUES_A, params)
    b = PredicateHolder(IDS_B, WHERE_B, params)
    offer, padded = a.offer(), b.blinded()
    doubly = a.reblind(padded)
    in_order = a._party.reblind(unpack(padded["blinded"]))  # what an unshuffled answer would be
    got = unpack(doubly["doubly"])
    assert sorted(got) == sorted(in_order) and got != in_order  # B cannot map them to its own order
    answer = b.answer(offer, doubly)
    assert b.exact_count == TRUE_COUNT
    from phe import EncryptedNumber

    raw = a._private.decrypt(EncryptedNumber(a._public, int.from_bytes(answer["sum"], "big"), 0))
    assert raw != round(TRUE_SUM * SCALE)  # B's noise share is in before A ever decrypts


def test_sum_noise_has_the_stated_scale():
    params = SumParams(epsilon=1.0, value_max=2.0)  # sum epsilon 0.5, sensitivity 2: scale 4
    draws = [params.sum_noise() / SCALE for _ in range(4000)]
    variance = 2 * (params.value_max / params.sum_epsilon) ** 2  # of a Laplace of that scale
    var = sum(d * d for d in draws) / len(draws)
    assert 0.85 * variance < var < 1.15 * variance


def test_exhausted_budget_is_refused_before_any_work_and_leaves_both_ledgers(tmp_path):
    pa, pb = _payers(tmp_path, eps_a=20.0, eps_b=0.5)
    before = _charges(pa), _charges(pb)
    with pytest.raises(BudgetExhausted, match="intersection-sum"):
        run_intersection_sum_local(
            IDS_A, VALUES_A, IDS_B, WHERE_B, payer_a=pa, payer_b=pb, params=SumParams(1.0)
        )
    assert (_charges(pa), _charges(pb)) == before == ([], [])
    # the refusing party's log says so; the other party's has nothing about the session
    with pb.home.open_audit_log() as log:
        (refused,) = log.query(action=ACTION_PSI_RELEASE)
    assert refused.decision == "denied" and refused.details["kind"] == "intersection_sum"
    with pa.home.open_audit_log() as log:
        assert list(log.query(action=ACTION_PSI_RELEASE)) == []
    assert not (pa.home.state_dir / "psi" / "sums").exists() or not any(
        (pa.home.state_dir / "psi" / "sums").iterdir()
    )


def test_bad_values_and_flags_name_the_row_never_the_value():
    with pytest.raises(DataError, match="row 2: not a number") as err:
        parse_values(["1", "0.5", "secret-4411"])
    assert "secret-4411" not in str(err.value)
    with pytest.raises(DataError, match="row 1: not a finite"):
        parse_values(["1", "inf"])
    assert parse_flags(["1", "0", "TRUE", "no", "1.0", True]) == [True, False, True, False, True, True]
    with pytest.raises(DataError, match="row 1: not a boolean") as err:
        parse_flags(["yes", "platinum-77"])
    assert "platinum-77" not in str(err.value)


def test_bad_parameters_and_a_malformed_offer_are_clear_errors():
    for bad in (0, -1, 11, math.nan, "1", True):
        with pytest.raises(ConfigError):
            SumParams(epsilon=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SumParams(value_max=0)
    with pytest.raises(ConfigError, match="at least 2048"):
        ValueHolder(["a"], [1.0], SumParams(), key_bits=1024)
    with pytest.raises(DataError, match="pair up"):
        ValueHolder(["a", "b"], [1.0], SumParams())
    a = ValueHolder(IDS_A[:20], VALUES_A[:20], SumParams())
    b = PredicateHolder(IDS_B[:20], WHERE_B[:20], SumParams())
    offer, doubly = a.offer(), a.reblind(b.blinded())
    with pytest.raises(IntegrityError, match="truncated or corrupted"):
        b.answer({**offer, "ciphertexts": offer["ciphertexts"][:-1]}, doubly)
    with pytest.raises(IntegrityError, match="malformed"):
        b.answer({"blinded": offer["blinded"]}, doubly)
    with pytest.raises(IntegrityError, match="inconsistent"):
        b.answer(offer, {"doubly": doubly["doubly"][:-32]})
    with pytest.raises(IntegrityError, match="malformed"):
        a.decrypt({"sum": b"", "count": "many"})
