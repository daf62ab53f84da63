"""The coordinator's chain of exchanges: the label owner's comparison model in the joint job's idle slots.

Its charges stay its own (own run id) and leave room for the joint job's unpaid rounds, so a joint
charge is never refused because it paid first; it is refused on its own budget; an older label
owner gets it after the joint job, as before; a failed joint job or a lost coordinator resumes
it without paying twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.deploy.two_party import two_party_run_config
from fedcustomer.errors import FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.accounting import GaussianSteps
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.party import forget_sessions
from fedcustomer.vertical.protocol import ALONGSIDE_RECORD, NEXT_JOB_RECORD
from fedcustomer.vertical.spend import DPSGD_MECHANISM
from tests.vertical.conftest import RecordingGrid, pinned_party_homes

FINISH = "train.vertical_finish"
BEGIN = "train.vertical_begin"
FIT = "train.vertical_fit"
BANK, RETAILER = 1, 2  # node ids: the homes are given in this order


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=400, seed=2)


class ExchangeGrid(RecordingGrid):
    """Keeps every message of every exchange: ``exchanges[i]`` is the i-th exchange's messages."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[list[Message]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
        messages = list(messages)
        self.exchanges.append(messages)
        return super().send_and_receive(messages, timeout=timeout)

    def sent(self, node: int) -> list[tuple[str, str, int]]:
        """(message type, run id, round) of each message to ``node``, in order."""
        out = []
        for msgs in self.exchanges:
            for m in msgs:
                if m.metadata.dst_node_id == node:
                    cfg = _cfg(m)
                    out.append(
                        (m.metadata.message_type, str(cfg.get("run-id", "")), int(cfg.get("round", 0)))
                    )
        return out


def _cfg(m: Message) -> dict:
    return dict(m.content["config"]) if m.has_content() and "config" in m.content else {}


def _grid(homes, cls=ExchangeGrid, app: ClientApp | None = None, **kw) -> ExchangeGrid:
    return cls(app or party_app([str(h.root) for h in homes]), num_nodes=2, **kw)


def _raw(tmp_path, **kw):
    job = VerticalJob(
        **(
            {"out": str(tmp_path / "run"), "rounds": 2, "batch_size": 64, "steps_per_round": 1, "seed": 0}
            | kw
        )
    )
    return two_party_run_config(job, mode="vertical", wait_for_partners=5)


def _ledger(home: PartnerHome) -> BudgetLedger:
    cfg = home.config()
    return BudgetLedger(home.ledger_path, cfg.name, cfg.budget_for(cfg.name))


def _charges(home: PartnerHome, run_id: str) -> list:
    return [c for c in _ledger(home).all_charges() if c.run_id == run_id]


def _older_app(homes, strip_alongside: bool = True, strip_next_job: bool = True) -> ClientApp:
    """Nodes of an earlier release: their setup says nothing of running beside (and of a riding begin)."""
    app = party_app([str(h.root) for h in homes])

    def older(msg: Message, context: Context, call_next):
        if strip_next_job and msg.has_content() and NEXT_JOB_RECORD in msg.content:
            del msg.content[NEXT_JOB_RECORD]
        reply = call_next(msg, context)
        if strip_alongside and reply.has_content() and ALONGSIDE_RECORD in reply.content:
            del reply.content[ALONGSIDE_RECORD]
        return reply

    node = ClientApp(mods=[older])
    for action in ("vertical_hello", "vertical_setup", "vertical_check", "vertical_align"):
        node.query(action)(lambda msg, ctx: app(msg, ctx))
    for action in ("vertical_begin", "vertical_step", "vertical_backward", "vertical_fit", "vertical_finish"):
        node.train(action)(lambda msg, ctx: app(msg, ctx))
    for action in ("psi_blind", "psi_reblind", "psi_finish", "psi_abort"):
        node.query(action)(lambda msg, ctx: app(msg, ctx))
    return node


def test_the_comparison_model_runs_in_the_label_owners_idle_slots(homes, tmp_path):
    bank, _ = homes
    grid = _grid(homes)
    raw = _raw(tmp_path)
    base_id = raw["run-id"] + "-baseline"
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    assert summary["rounds_completed"] == 2 and summary["baseline"]["partners"][0]["rounds_trained"] == 2
    # hello 1, PSI 3, setup 1, the bank's first begin 1, 4 per round, finish 1: nothing of its own
    assert len(grid.exchanges) == 15
    beside = [(t, r) for t, run, r in grid.sent(BANK) if run == base_id]
    assert beside == [(BEGIN, 1), (FIT, 1), (FIT, 2)]  # each fit begins the next round or finishes
    for msgs in grid.exchanges:  # each rides with a message to the retailer, whose turn it is
        if any(_cfg(m).get("run-id") == base_id for m in msgs):
            assert {m.metadata.dst_node_id for m in msgs} == {BANK, RETAILER}
    finish = next(msgs for msgs in grid.exchanges if msgs[0].metadata.message_type == FINISH)
    assert all(NEXT_JOB_RECORD not in m.content for m in finish)  # nothing left to begin after the finish
    assert grid.sent(BANK)[-1][0] == FINISH
    joint, base = _charges(bank, raw["run-id"]), _charges(bank, base_id)
    assert [c.round for c in base] == [1, 2] and len(joint) == 3  # the label release and 2 rounds
    assert min(c.seq for c in base) < max(c.seq for c in joint)  # interleaved: the joint round 2 came later
    assert (bank.state_dir / "vertical" / f"run-{base_id}-active-final.pt").exists()
    row = summary["partners"][0]
    assert row["epsilon_spent_all_releases"] == pytest.approx(_ledger(bank).spent().epsilon)
    assert _ledger(bank).spent().epsilon <= _ledger(bank).budget.epsilon


def test_the_comparison_models_noise_is_the_same_beside_the_joint_job_as_after_it(tmp_path):
    """Calibrated against the joint job's planned rounds, it pays what it paid after them: same quality."""
    noise = {}
    for older in (False, True):
        root = tmp_path / ("older" if older else "new")
        homes = pinned_party_homes(root, customers=400, seed=2)
        raw = _raw(root)
        app = _older_app(homes) if older else None
        summary = run_two_party(_grid(homes, app=app), raw)
        assert summary["baseline"]["status"] == "completed"
        base = _charges(homes[0], raw["run-id"] + "-baseline")
        noise[older] = [c.noise_multiplier for c in base]
        joint = _charges(homes[0], raw["run-id"])
        if older:  # the earlier order: every charge of the joint job first
            assert max(c.seq for c in joint) < min(c.seq for c in base)
        forget_sessions()
    assert noise[False] == pytest.approx(noise[True], rel=1e-6)


def test_an_older_label_owner_gets_the_comparison_model_after_the_joint_job(homes, tmp_path):
    bank, _ = homes
    grid = _grid(homes, app=_older_app(homes))
    raw = _raw(tmp_path)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    base_id = raw["run-id"] + "-baseline"
    after = [t for t, run, _ in grid.sent(BANK) if run == base_id]
    assert after == [BEGIN, FIT, FIT]  # its begin as a message of its own, after the finish
    assert len(grid.exchanges) == 15 + 3
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]


def test_a_label_owner_without_the_riding_begin_but_able_to_run_beside_needs_neither(homes, tmp_path):
    grid = _grid(homes, app=_older_app(homes, strip_alongside=False, strip_next_job=True))
    summary = run_two_party(grid, _raw(tmp_path))
    assert summary["baseline"]["status"] == "completed" and len(grid.exchanges) == 15


def test_the_comparison_model_is_refused_rather_than_take_the_joint_jobs_next_round(homes, tmp_path):
    """Another release leaves room for the joint job's round 2 only: the comparison model is refused."""
    bank, _ = homes
    raw = _raw(tmp_path, max_noise_multiplier=5.0)
    base_id = raw["run-id"] + "-baseline"

    class SpentBeforeTheComparison(ExchangeGrid):
        spent = False

        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
            messages = list(messages)
            if not self.spent and any(_cfg(m).get("run-id") == base_id for m in messages):
                self.spent = True
                ledger = _ledger(bank)
                first = next(c for c in _charges(bank, raw["run-id"]) if c.mechanism == DPSGD_MECHANISM)
                round2 = GaussianSteps(first.noise_multiplier, first.sample_rate, first.steps)
                room = ledger.budget.epsilon - ledger.project([round2], []).epsilon
                ledger.charge_approx(
                    "another-release", room * 0.999, 0.0, mechanism="laplace", run_id="other"
                )
            return super().send_and_receive(messages, timeout=timeout)

    summary = run_two_party(_grid(homes, cls=SpentBeforeTheComparison), raw)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2  # never refused for it
    assert summary["baseline"]["status"] == "stopped" and "refused" in summary["baseline"]["stop_reason"]
    assert not _charges(bank, base_id)
    assert [c.round for c in _charges(bank, raw["run-id"]) if c.mechanism == DPSGD_MECHANISM] == [1, 2]
    assert _ledger(bank).spent().epsilon <= _ledger(bank).budget.epsilon


def test_a_failed_joint_job_keeps_the_comparisons_paid_rounds_and_a_resume_pays_none_twice(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path)
    base_id = raw["run-id"] + "-baseline"
    # the retailer answers up to round 2's begin, then drops at round 2's backward (the comparison
    # model's first begin rode on round 1's backward, its first fit and second begin on round 2's begin)
    with pytest.raises(FederationError, match="retailer did not answer"):
        run_two_party(_grid(homes, dead_after={RETAILER: 7}), raw)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["model"]["final"] is False and summary["metrics"] == {}
    base = summary["baseline"]
    assert base["status"] == "failed" and base["stop_reason"].startswith("stopped with the joint job")
    assert base["metrics"] == {} and summary["comparison"][f"vertical_{summary['primary_metric']}"] is None
    # it trained round 1 and paid round 2 (begun with its fit), which the summary counts
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]
    assert base["partners"][0]["rounds_trained"] == 1
    assert base["partners"][0]["epsilon_spent"] == pytest.approx(
        max(c.epsilon_total for c in _charges(bank, base_id))
    )
    for home in homes:
        assert not list((home.state_dir / "vertical").glob(f"run-{raw['run-id']}-*-final.pt"))
    forget_sessions()
    summary = run_two_party(_grid(homes), raw | {"resume": True})
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]  # round 2 once
    for home in homes:
        rounds = [c.round for c in _charges(home, raw["run-id"]) if c.mechanism == DPSGD_MECHANISM]
        assert rounds == [1, 2]


def test_a_coordinator_lost_mid_job_resumes_both_jobs_without_paying_twice(homes, tmp_path):
    bank, _ = homes
    raw = _raw(tmp_path)
    base_id = raw["run-id"] + "-baseline"

    class LostAtTheComparisonsLastFit(ExchangeGrid):
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
            for m in messages:
                cfg = _cfg(m)
                if cfg.get("run-id") == base_id and m.metadata.message_type == FIT and cfg.get("round") == 2:
                    raise FederationError("the coordinator stopped")
            return super().send_and_receive(messages, timeout=timeout)

    with pytest.raises(FederationError):
        run_two_party(_grid(homes, cls=LostAtTheComparisonsLastFit), raw)
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]  # round 2 begun with round 1's fit
    ckpt = tmp_path / "run" / "checkpoint" / raw["run-id"] / "baseline-rounds.json"
    assert [r["round"] for r in json.loads(ckpt.read_text())["rounds"]] == [1]
    forget_sessions()
    grid = _grid(homes)
    summary = run_two_party(grid, raw | {"resume": True})
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]  # each once
    assert [c.round for c in _charges(bank, raw["run-id"]) if c.mechanism == DPSGD_MECHANISM] == [1, 2]
    assert [(t, r) for t, run, r in grid.sent(BANK) if run == base_id] == [(BEGIN, 2), (FIT, 2)]


def test_a_job_beside_one_that_paid_nothing_or_beside_itself_is_refused_with_a_clear_error(homes, tmp_path):
    bank, _ = homes
    grid = _grid(homes)
    raw = _raw(tmp_path, baseline=False)
    run_two_party(grid, raw)
    begin = next(m for msgs in grid.exchanges for m in msgs if m.metadata.message_type == BEGIN)
    own = _cfg(begin) | {"passive-embed-dim": 0, "round": 1, "alongside-rounds": 2}
    spent = _ledger(bank).spent().epsilon
    for run, beside, why in (
        ("alone", "never-ran", "has paid no round yet"),
        ("itself", "itself", "another job of the same party"),
    ):
        msg = Message(
            RecordDict({"config": ConfigRecord(own | {"run-id": run, "alongside-run": beside})}),
            dst_node_id=BANK,
            message_type=BEGIN,
        )
        (reply,) = grid.send_and_receive([msg])
        assert reply.has_error() and why in reply.error.reason
    assert _ledger(bank).spent().epsilon == spent and not _charges(bank, "alone") + _charges(bank, "itself")


def test_a_joint_job_stopped_by_a_refusal_leaves_the_comparison_model_to_finish_after_it(
    homes, tmp_path, monkeypatch
):
    from fedcustomer.vertical.spend import PartySpend, RoundDecision

    real_check = PartySpend.check_round

    def retailer_keeps_round_2(self, rnd):
        if self.cfg.role == "passive" and rnd == 2:
            return RoundDecision(
                False, "budget kept for another study", {"epsilon-total": 1.0, "epsilon-target": 8.0}
            )
        return real_check(self, rnd)

    monkeypatch.setattr(PartySpend, "check_round", retailer_keeps_round_2)
    bank, _ = homes
    grid = _grid(homes)
    raw = _raw(tmp_path)
    base_id = raw["run-id"] + "-baseline"
    summary = run_two_party(grid, raw)
    assert summary["status"] == "stopped" and summary["rounds_completed"] == 1
    assert summary["baseline"]["status"] == "completed"
    assert summary["baseline"]["partners"][0]["rounds_trained"] == 2
    sent = grid.sent(BANK)
    at = next(i for i, (t, run, _) in enumerate(sent) if t == FINISH and run == raw["run-id"])
    # round 1 begun on round 1's backward (the first slot left for its calibration); the rest after the finish
    assert [(t, r) for t, run, r in sent[:at] if run == base_id] == [(BEGIN, 1)]
    assert [(t, r) for t, run, r in sent[at + 1 :] if run == base_id] == [(FIT, 1), (FIT, 2)]
    assert [c.round for c in _charges(bank, base_id)] == [1, 2]
    assert [c.round for c in _charges(bank, raw["run-id"]) if c.mechanism == DPSGD_MECHANISM] == [1]
