"""The coordinator's chain of exchanges: the label owner's comparison model begun with the joint finish.

Its charges stay its own (own run id, after every charge of the joint job), it is refused on its
own budget, an older node gets its begin as a message of its own, and a resume pays nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedcustomer.clients.context import resolve_home
from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.errors import FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app, pin_each_other
from fedcustomer.vertical.party import forget_sessions
from fedcustomer.vertical.protocol import NEXT_JOB_RECORD
from tests.vertical.conftest import RecordingGrid, grid_for, pinned_party_homes

FINISH = "train.vertical_finish"


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=400, seed=2)


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


def _after_finish(grid: RecordingGrid, node: int) -> list[str]:
    """The message types sent to ``node`` after the joint job's finish."""
    at = next(i for i, (first, _) in enumerate(grid.log) if first.metadata.message_type == FINISH)
    return [m.metadata.message_type for m, _ in grid.log[at + 1 :] if m.metadata.dst_node_id == node]


def test_the_comparison_models_first_begin_rides_on_the_label_owners_finish(homes, tmp_path):
    bank, _ = homes
    grid = grid_for(list(homes))
    raw = _raw(tmp_path)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    finish = [m for m, _ in grid.log if m.metadata.message_type == FINISH]
    assert len(finish) == 1
    bank_node = finish[0].metadata.dst_node_id  # the first finish of the exchange is the label owner's
    assert NEXT_JOB_RECORD in finish[0].content
    assert _after_finish(grid, bank_node) == ["train.vertical_fit", "train.vertical_fit"]
    charges = _ledger(bank).all_charges()
    base = [c for c in charges if c.run_id == raw["run-id"] + "-baseline"]
    joint = [c for c in charges if c.run_id == raw["run-id"]]
    assert [c.round for c in base] == [1, 2] and len(joint) == 3  # the label release and 2 rounds
    assert max(c.seq for c in joint) < min(c.seq for c in base)  # paid after the joint job, as before


def test_the_comparison_model_is_refused_on_its_own_budget(homes, tmp_path):
    bank, _ = homes

    class SpentBeforeFinish(RecordingGrid):
        """Another release spends the label owner's budget just before the joint finish."""

        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
            messages = list(messages)
            if any(m.metadata.message_type == FINISH for m in messages):
                ledger = _ledger(bank)
                ledger.charge_approx(
                    "another-release",
                    ledger.spent().epsilon_remaining * 0.999,
                    0.0,
                    mechanism="laplace",
                    run_id="other",
                )
            return super().send_and_receive(messages, timeout=timeout)

    raw = _raw(tmp_path, max_noise_multiplier=5.0)  # what is left would need more noise than that
    summary = run_two_party(SpentBeforeFinish(party_app([str(h.root) for h in homes]), num_nodes=2), raw)
    assert summary["status"] == "completed"  # the joint job was paid before
    assert summary["baseline"]["status"] == "stopped" and "refused" in summary["baseline"]["stop_reason"]
    assert not [c for c in _ledger(bank).all_charges() if c.run_id == raw["run-id"] + "-baseline"]


def _strips_next_job(msg: Message, context: Context, call_next):
    """A node of a release before the riding begin: it never sees the record."""
    if msg.has_content() and NEXT_JOB_RECORD in msg.content:
        del msg.content[NEXT_JOB_RECORD]
    return call_next(msg, context)


def test_an_older_label_owner_gets_the_comparison_models_begin_as_a_message_of_its_own(homes, tmp_path):
    bank, _ = homes
    roots = [str(h.root) for h in homes]
    app = party_app(roots)
    older = ClientApp(mods=[_strips_next_job])
    for action in ("vertical_hello", "vertical_setup", "vertical_check", "vertical_align"):
        older.query(action)(lambda msg, ctx: app(msg, ctx))
    for action in ("vertical_begin", "vertical_step", "vertical_backward", "vertical_fit", "vertical_finish"):
        older.train(action)(lambda msg, ctx: app(msg, ctx))
    for action in ("psi_blind", "psi_reblind", "psi_finish", "psi_abort"):
        older.query(action)(lambda msg, ctx: app(msg, ctx))
    grid = RecordingGrid(older, num_nodes=2)
    raw = _raw(tmp_path)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed" and summary["baseline"]["status"] == "completed"
    bank_node = next(m for m, _ in grid.log if m.metadata.message_type == FINISH).metadata.dst_node_id
    assert _after_finish(grid, bank_node)[0] == "train.vertical_begin"
    assert [c.round for c in _ledger(bank).all_charges() if c.run_id == raw["run-id"] + "-baseline"] == [1, 2]


def test_a_coordinator_lost_after_the_finish_resumes_the_comparison_model_without_paying_twice(
    homes, tmp_path
):
    bank, _ = homes

    class LostAfterFinish(RecordingGrid):
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):
            if any(m.metadata.message_type == FINISH for m, _ in self.log):
                raise FederationError("the coordinator stopped")
            return super().send_and_receive(messages, timeout=timeout)

    raw = _raw(tmp_path)
    first = run_two_party(LostAfterFinish(party_app([str(h.root) for h in homes]), num_nodes=2), raw)
    assert first["status"] == "completed" and first["baseline"]["status"] == "failed"
    base_id = raw["run-id"] + "-baseline"
    assert [c.round for c in _ledger(bank).all_charges() if c.run_id == base_id] == [
        1
    ]  # begun with the finish
    forget_sessions()
    summary = run_two_party(grid_for(list(homes)), raw | {"resume": True})
    assert summary["baseline"]["status"] == "completed"
    assert [c.round for c in _ledger(bank).all_charges() if c.run_id == base_id] == [1, 2]  # round 1 once
