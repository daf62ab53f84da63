"""The one release path: refusal, one charge per (run, step), re-send of the paid result, crash safety."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedcustomer.errors import BudgetExhausted
from fedcustomer.privacy.dp import accounting
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.privacy.dp.ledger import BudgetLedger, Charge
from fedcustomer.privacy.dp.release import (
    Mechanism,
    PaidResults,
    Step,
    calibrate_noise,
    check,
    release,
)

ROUND = GaussianSteps(noise_multiplier=1.1, sample_rate=0.05, steps=20)


class JsonCodec:
    suffix = ".json"

    def dump(self, path: Path, result: dict[str, Any], paid: bool) -> None:
        path.write_text(json.dumps({"result": result, "paid": paid}))

    def load(self, path: Path) -> tuple[dict[str, Any], bool]:
        blob = json.loads(path.read_text())
        return blob["result"], blob["paid"]


def _ledger(tmp_path: Path, epsilon: float = 3.0) -> BudgetLedger:
    return BudgetLedger(tmp_path / "ledger.db", "loans", DatasetBudget(epsilon, 1e-5))


def _step(rnd: int = 1, run: str = "r1") -> Step:
    return Step(f"run:{run}:round:{rnd}", f"round {rnd}", run, rnd)


class Producer:
    """Counts how often a result was computed (each call is a fresh noisy draw)."""

    def __init__(self, mechanism: Mechanism | None = None) -> None:
        self.calls = 0
        self.mechanism = mechanism or Mechanism("dpsgd", gaussian=ROUND, details={"partner": "p"})

    def __call__(self) -> tuple[dict[str, Any], Mechanism]:
        self.calls += 1
        return {"draw": self.calls}, self.mechanism


def _settle(result: dict[str, Any], charge: Charge) -> dict[str, Any]:
    return {**result, "epsilon_total": charge.epsilon_total}


def test_release_charges_once_and_keeps_the_paid_result(tmp_path: Path) -> None:
    ledger, results, produce = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec()), Producer()
    out = release(ledger, _step(), results, produce, _settle)
    assert not out.resent and out.result["draw"] == 1
    (row,) = ledger.charges()
    assert (row.charge_key, row.mechanism, row.run_id, row.round) == ("run:r1:round:1", "dpsgd", "r1", 1)
    assert (row.noise_multiplier, row.sample_rate, row.steps) == (1.1, 0.05, 20)
    assert row.details == {"partner": "p"}
    assert out.result["epsilon_total"] == pytest.approx(ledger.spent().epsilon)
    assert results.load(_step()) == (out.result, True)


def test_repeated_step_resends_the_paid_result_without_a_new_draw_or_charge(tmp_path: Path) -> None:
    ledger, results, produce = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec()), Producer()
    first = release(ledger, _step(), results, produce, _settle)
    spent = ledger.spent().epsilon
    again = release(ledger, _step(), results, produce, _settle)
    assert again.resent and again.charge.already_paid
    assert again.result == first.result and produce.calls == 1
    assert len(ledger.charges()) == 1 and ledger.spent().epsilon == spent
    # another step of the same run is a new release
    other = release(ledger, _step(2), results, produce, _settle)
    assert not other.resent and produce.calls == 2 and len(ledger.charges()) == 2


def test_paid_step_whose_result_is_gone_is_refused_not_paid_again(tmp_path: Path) -> None:
    ledger, results, produce = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec()), Producer()
    release(ledger, _step(), results, produce, _settle)
    results.drop(_step())
    with pytest.raises(BudgetExhausted, match="round 1 was already paid for and its result is gone"):
        release(ledger, _step(), results, produce, _settle)
    assert produce.calls == 1 and len(ledger.charges()) == 1


def test_step_past_the_target_is_refused_recorded_and_costs_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, epsilon=1.0)
    big = Mechanism("dpsgd", gaussian=GaussianSteps(0.5, 0.1, 200))
    with pytest.raises(BudgetExhausted) as refused:
        check(ledger, _step(3), big)
    exc = refused.value
    assert isinstance(exc, BudgetExhausted)  # callers that catch the ledger's refusal still do
    assert exc.projected is not None and exc.projected > 1.0
    assert exc.reason == f"round 3 would bring epsilon to {exc.projected:.3f}, past this partner's target 1"
    assert exc.spend.epsilon == 0.0 and ledger.charges() == []
    (row,) = ledger.refusals()
    assert row["charge_key"] == "run:r1:round:3" and row["mechanism"] == "dpsgd"
    assert row["reason"] == "round 3 of run r1 would exceed the target"


def test_check_counts_pending_releases_and_returns_the_projection(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    small = Mechanism("dpsgd", gaussian=ROUND)
    label = Mechanism("labels", epsilon_delta=(2.9, 0.0))
    alone = check(ledger, _step(), small)
    assert alone == pytest.approx(accounting.epsilon([ROUND], 1e-5))
    with pytest.raises(BudgetExhausted):
        check(ledger, _step(), small, pending=[label])


def test_refusal_inside_produce_keeps_and_charges_nothing(tmp_path: Path) -> None:
    ledger, results = _ledger(tmp_path, epsilon=1.0), PaidResults(tmp_path / "kept", JsonCodec())
    big = Mechanism("dpsgd", gaussian=GaussianSteps(0.5, 0.1, 200))

    def produce() -> tuple[dict[str, Any], Mechanism]:
        check(ledger, _step(), big)
        raise AssertionError("a refused step must not be computed")

    with pytest.raises(BudgetExhausted):
        release(ledger, _step(), results, produce)
    assert ledger.charges() == [] and not results.path(_step()).exists()


def test_charge_refused_by_the_ledger_drops_the_pending_result(tmp_path: Path) -> None:
    """The pre-check passed, but a concurrent release took the budget before the charge."""
    ledger, results = _ledger(tmp_path, epsilon=1.0), PaidResults(tmp_path / "kept", JsonCodec())
    produce = Producer(Mechanism("dpsgd", gaussian=GaussianSteps(0.5, 0.1, 200)))
    with pytest.raises(BudgetExhausted, match="past the target 1"):
        release(ledger, _step(), results, produce)
    assert ledger.charges() == [] and len(ledger.refusals()) == 1
    assert not results.path(_step()).exists()


def test_crash_between_charge_and_release_resends_on_retry_without_charging_again(tmp_path: Path) -> None:
    ledger, results, produce = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec()), Producer()

    def crash(result: dict[str, Any], charge: Charge) -> dict[str, Any]:
        raise KeyboardInterrupt  # the process dies after the charge, before the release

    with pytest.raises(KeyboardInterrupt):
        release(ledger, _step(), results, produce, crash)
    (row,) = ledger.charges()  # the ledger holds exactly the one charge
    assert ledger.spent().epsilon == pytest.approx(row.epsilon_total)
    assert results.load(_step()) == ({"draw": 1}, False)  # kept, not yet marked paid

    again = release(ledger, _step(), results, produce, _settle)  # the restarted process
    assert again.resent and produce.calls == 1
    assert again.result == {"draw": 1, "epsilon_total": row.epsilon_total}
    assert len(ledger.charges()) == 1
    assert results.load(_step()) == (again.result, True)


def test_crash_before_the_charge_leaves_nothing_paid_and_the_retry_draws_afresh(tmp_path: Path) -> None:
    ledger, results, produce = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec()), Producer()
    results.keep(_step(), {"draw": 0}, paid=False)  # kept by a process that died before charging
    out = release(ledger, _step(), results, produce, _settle)
    assert not out.resent and out.result["draw"] == 1 and len(ledger.charges()) == 1


class CountingCodec(JsonCodec):
    """Counts the writes of kept results."""

    def __init__(self) -> None:
        self.writes = 0

    def dump(self, path: Path, result: dict[str, Any], paid: bool) -> None:
        self.writes += 1
        super().dump(path, result, paid)


def test_results_written_once_are_kept_before_the_charge_and_settled_from_it_every_time(
    tmp_path: Path,
) -> None:
    codec = CountingCodec()
    ledger, results, produce = (
        _ledger(tmp_path),
        PaidResults(tmp_path / "kept", codec, rewrite_paid=False),
        Producer(),
    )
    out = release(ledger, _step(), results, produce, _settle)
    (row,) = ledger.charges()
    assert out.result == {"draw": 1, "epsilon_total": row.epsilon_total}
    assert codec.writes == 1 and results.load(_step()) == ({"draw": 1}, False)  # the ledger row pays it
    again = release(ledger, _step(), results, produce, _settle)
    assert again.resent and again.result == out.result and produce.calls == 1
    assert codec.writes == 1 and len(ledger.charges()) == 1


def test_results_written_once_survive_a_crash_on_either_side_of_the_charge(tmp_path: Path) -> None:
    ledger, results, produce = (
        _ledger(tmp_path),
        PaidResults(tmp_path / "kept", JsonCodec(), rewrite_paid=False),
        Producer(),
    )

    def crash(result: dict[str, Any], charge: Charge) -> dict[str, Any]:
        raise KeyboardInterrupt  # dies after the charge

    with pytest.raises(KeyboardInterrupt):
        release(ledger, _step(), results, produce, crash)
    (row,) = ledger.charges()
    again = release(ledger, _step(), results, produce, _settle)  # the restarted process re-sends the draw
    assert again.resent and again.result == {"draw": 1, "epsilon_total": row.epsilon_total}
    assert produce.calls == 1 and len(ledger.charges()) == 1

    def dies_charging(*args: Any, **kwargs: Any) -> Charge:
        raise KeyboardInterrupt  # dies before the charge is committed

    original = ledger.charge_gaussian
    ledger.charge_gaussian = dies_charging  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        release(ledger, _step(2), results, produce, _settle)
    ledger.charge_gaussian = original  # type: ignore[method-assign]
    assert len(ledger.charges()) == 1 and not results.path(_step(2)).exists()  # as it was
    fresh = release(ledger, _step(2), results, produce, _settle)
    assert not fresh.resent and fresh.result["draw"] == 3 and len(ledger.charges()) == 2


def test_calibration_spends_what_remains_of_a_partly_spent_ledger(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, epsilon=3.0)
    ledger.charge_gaussian("earlier", ROUND)
    fresh = _ledger(tmp_path / "fresh", epsilon=3.0)
    sigma = calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0)
    assert sigma > calibrate_noise(fresh, 0.05, 20, 3, sigma_max=50.0)  # less left, more noise
    total = accounting.epsilon([ROUND] + [GaussianSteps(sigma, 0.05, 20)] * 3, 1e-5)
    assert 0.99 * 3.0 < total <= 3.0
    # room kept for a pending release and a reserve
    pending = Mechanism("labels", epsilon_delta=(0.5, 0.0))
    tighter = calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0, pending=[pending], reserve_epsilon=0.5)
    rest = accounting.epsilon([ROUND] + [GaussianSteps(tighter, 0.05, 20)] * 3, 1e-5)
    assert rest == pytest.approx(2.0, rel=1e-2) and rest <= 2.0


def test_a_run_keeps_the_noise_of_its_first_charge(tmp_path: Path) -> None:
    ledger, run = _ledger(tmp_path), ("run-1", "dpsgd")
    sigma = calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0, run=run)
    assert calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0, run=run) == sigma  # nothing charged: the same
    ledger.charge_gaussian("run-1:round-1", GaussianSteps(sigma, 0.05, 20), mechanism="dpsgd", run_id="run-1")
    ledger.charge_gaussian("meanwhile", ROUND)  # spending elsewhere does not move the run's noise
    assert ledger.run_noise("run-1", "dpsgd") == sigma
    assert calibrate_noise(ledger, 0.05, 20, 2, sigma_max=50.0, run=run) == sigma
    assert calibrate_noise(ledger, 0.05, 20, 2, sigma_max=50.0) > sigma  # unpinned: less left, more noise
    # another run, another mechanism or another dataset of the same ledger file are not this run
    assert ledger.run_noise("run-2", "dpsgd") is None and ledger.run_noise("run-1", "labels") is None
    other = BudgetLedger(ledger.path, "other", ledger.budget)
    assert other.run_noise("run-1", "dpsgd") is None
    assert list(tmp_path.rglob("*.json")) == []  # no file written or synced for it


def test_a_noise_pinned_in_a_file_by_an_earlier_version_is_still_read(tmp_path: Path) -> None:
    ledger, pin = _ledger(tmp_path), tmp_path / "noise.json"
    pin.write_text(json.dumps({"noise_multiplier": 1.2345, "sample_rate": 0.05, "round_steps": 20}))
    assert calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0, pin=pin, run=("run-1", "dpsgd")) == 1.2345
    pin.unlink()
    assert calibrate_noise(ledger, 0.05, 20, 3, sigma_max=50.0, pin=pin) != 1.2345
    assert not pin.exists()  # read, never written


def test_spent_ledger_calibrates_to_the_cap(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, epsilon=0.5)
    ledger.charge_approx("all", 0.5, 0.0, mechanism="laplace")
    assert calibrate_noise(ledger, 0.05, 20, 3, sigma_max=7.0) == 7.0


def test_approx_mechanism_is_recorded_as_such(tmp_path: Path) -> None:
    ledger, results = _ledger(tmp_path), PaidResults(tmp_path / "kept", JsonCodec())
    step = Step("query:q1", "query q1", query_id="q1", cache_name="q1")
    produce = Producer(Mechanism("laplace", epsilon_delta=(0.5, 0.0), details={"kind": "count"}))
    release(ledger, step, results, produce)
    (row,) = ledger.charges()
    assert (row.mechanism, row.epsilon, row.delta, row.query_id) == ("laplace", 0.5, 0.0, "q1")
    assert (tmp_path / "kept" / "q1.json").exists()
    with pytest.raises(ValueError):
        Mechanism("both", gaussian=ROUND, epsilon_delta=(0.5, 0.0))


class JsonBytes:
    def dumps(self, result: dict[str, Any]) -> bytes:
        return json.dumps(result).encode()

    def loads(self, data: bytes, what: str) -> dict[str, Any]:
        return dict(json.loads(data))


def test_a_result_charged_results_keeps_commits_with_its_charge_and_is_resent(tmp_path: Path) -> None:
    from fedcustomer.privacy.dp.release import ChargedResults

    ledger, produce = _ledger(tmp_path), Producer()
    results = ChargedResults(ledger, JsonBytes())
    first = release(ledger, _step(), results, produce, _settle)
    assert not first.resent and first.result == {"draw": 1, "epsilon_total": first.charge.epsilon_total}
    assert json.loads(ledger.kept("run:r1:round:1") or b"") == {"draw": 1}  # kept unsettled, in the ledger
    assert not any(tmp_path.glob("*.json"))  # no file of its own
    again = release(ledger, _step(), ChargedResults(_ledger(tmp_path), JsonBytes()), produce, _settle)
    assert again.resent and again.result == first.result and produce.calls == 1  # no second draw
    assert len(ledger.charges()) == 1


def test_a_failed_charge_leaves_neither_charge_nor_kept_result(tmp_path: Path, monkeypatch) -> None:
    from fedcustomer.privacy.dp.release import ChargedResults

    ledger = _ledger(tmp_path)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt  # stopped between the charge's writes and its commit

    monkeypatch.setattr(BudgetLedger, "_spend_of", broken)
    with pytest.raises(KeyboardInterrupt):
        release(ledger, _step(), ChargedResults(ledger, JsonBytes()), Producer(), _settle)
    monkeypatch.undo()
    assert ledger.charges() == [] and ledger.kept("run:r1:round:1") is None


def test_a_step_paid_meanwhile_by_another_caller_releases_that_callers_result(tmp_path: Path) -> None:
    from fedcustomer.privacy.dp.release import ChargedResults

    ledger = _ledger(tmp_path)
    other, first = Producer(), []

    def mine() -> tuple[dict[str, Any], Mechanism]:
        # while this caller trains, another process pays the same step with its own draw
        first.append(
            release(_ledger(tmp_path), _step(), ChargedResults(_ledger(tmp_path), JsonBytes()), other)
        )
        return {"draw": "mine"}, other.mechanism

    late = release(ledger, _step(), ChargedResults(ledger, JsonBytes()), mine, _settle)
    assert late.resent and late.result == {"draw": 1, "epsilon_total": late.charge.epsilon_total}
    assert first[0].result == {"draw": 1}  # never a second, different result for one charge
    assert len(ledger.charges()) == 1 and json.loads(ledger.kept("run:r1:round:1") or b"") == {"draw": 1}


def test_only_gaussian_releases_keep_their_result_in_the_ledger(tmp_path: Path) -> None:
    from fedcustomer.privacy.dp.release import ChargedResults

    ledger = _ledger(tmp_path)
    laplace = Producer(Mechanism("laplace", epsilon_delta=(0.5, 0.0)))
    with pytest.raises(ValueError, match="only a Gaussian release"):
        release(ledger, _step(), ChargedResults(ledger, JsonBytes()), laplace, _settle)
    assert ledger.charges() == []
