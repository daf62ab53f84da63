"""Keeping a PSI's order as the vertical alignment: the check riding on the PSI's last message, the
save riding on the setup, the fallback for a node that answers neither, and their refusals."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.clients.context import resolve_home
from fedcustomer.clients.linkage import register_governed_psi_handlers
from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.deploy.two_party import prepare_party_home, two_party_run_config
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.vertical.align import ALIGN_ERROR_CODE, CHECK_RECORD, KEEP_RECORD, align_check_mod
from fedcustomer.vertical.data import alignment_path
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import pin_each_other
from fedcustomer.vertical.protocol import register_vertical_handlers
from fedcustomer.vertical.runner import prepare_vertical
from tests.vertical.conftest import RecordingGrid, grid_for, pinned_party_homes


@pytest.fixture
def homes(tmp_path):
    return pinned_party_homes(tmp_path, customers=400, seed=2)


def _raw(tmp_path, name="run", seed=0, **kw):
    job = VerticalJob(
        out=str(tmp_path / name), rounds=1, batch_size=64, steps_per_round=1, seed=seed, baseline=False, **kw
    )
    return two_party_run_config(job, mode="vertical", wait_for_partners=5)


def _types(grid: RecordingGrid) -> list[str]:
    return [first.metadata.message_type for first, _ in grid.log]


def _charged(home: PartnerHome) -> list[str]:
    cfg = home.config()
    return [
        c.charge_key for c in BudgetLedger(home.ledger_path, cfg.name, cfg.budget_for(cfg.name)).charges()
    ]


def _older_app(homes: list[PartnerHome]) -> ClientApp:
    """A party app of a release before the riding steps: it ignores records it does not know."""

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, [str(h.root) for h in homes])

    app = ClientApp(mods=[packed_mod, anchor_mod(home_of)])
    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)
    return app


def test_the_check_rides_on_the_psis_last_message_and_the_save_on_the_setup(homes, tmp_path):
    bank, retail = homes
    grid = grid_for([bank, retail])
    raw = _raw(tmp_path)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed"
    types = _types(grid)
    assert "query.vertical_align" not in types
    assert types[:5] == [
        "query.vertical_hello",
        "query.psi_blind",
        "query.psi_reblind",
        "query.psi_finish",
        "query.vertical_setup",
    ]
    finish = next(replies for first, replies in grid.log if first.metadata.message_type == "query.psi_finish")
    assert all(r.content.metric_records[CHECK_RECORD]["earlier"] == 0.0 for r in finish)
    setup = next(
        replies for first, replies in grid.log if first.metadata.message_type == "query.vertical_setup"
    )
    sizes = {int(r.content.metric_records[KEEP_RECORD]["size"]) for r in setup}
    assert sizes == {summary["psi_size"]}
    for home, (dataset, peer) in ((bank, ("bank", "retailer")), (retail, ("retailer", "bank"))):
        kept = json.loads(alignment_path(home, dataset, peer).read_text())
        assert len(kept["pseudonyms"]) == summary["psi_size"] and kept["seed"] == 0
    psi_state = tmp_path / "run" / "checkpoint" / raw["run-id"] / "psi.json"
    assert json.loads(psi_state.read_text())["psi_size"] == summary["psi_size"]


def test_a_node_of_an_older_release_gets_the_check_and_the_save_as_messages_of_their_own(homes, tmp_path):
    bank, retail = homes
    grid = RecordingGrid(_older_app([bank, retail]), num_nodes=2)
    summary = run_two_party(grid, _raw(tmp_path))
    assert summary["status"] == "completed"
    types = _types(grid)
    assert types[3:7] == [
        "query.psi_finish",
        "query.vertical_align",
        "query.vertical_align",
        "query.vertical_setup",
    ]
    setup = next(first for first, _ in grid.log if first.metadata.message_type == "query.vertical_setup")
    assert KEEP_RECORD not in setup.content  # never asked of a node that did not answer the riding check


def test_a_later_job_with_another_seed_is_refused_at_the_setup_with_nothing_kept_or_charged(homes, tmp_path):
    bank, retail = homes
    run_two_party(grid_for([bank, retail]), _raw(tmp_path, "first", seed=0))
    path = alignment_path(bank, "bank", "retailer")
    before, charged = path.read_text(), {h.root: _charged(h) for h in homes}
    raw = _raw(tmp_path, "second", seed=1)
    with pytest.raises(ConfigError, match="--seed 0") as refused:
        run_two_party(grid_for([bank, retail]), raw)
    assert "failed at" not in str(refused.value)  # what to change, not a network fault
    assert path.read_text() == before
    assert {h.root: _charged(h) for h in homes} == charged
    assert not (
        tmp_path / "second" / "checkpoint" / raw["run-id"] / "psi.json"
    ).exists()  # a resume re-runs the PSI


def test_the_in_process_runner_keeps_the_order_before_it_returns(tmp_path):
    job = VerticalJob(customers=400, out=str(tmp_path / "r"), homes=str(tmp_path / "homes"), seed=3)
    setup = prepare_vertical(job)
    kept = json.loads(alignment_path(setup.active, "bank", "retailer").read_text())
    assert len(kept["pseudonyms"]) == setup.psi_size > 0


def _ask(app: ClientApp, homes, message_type: str, records: dict[str, ConfigRecord]) -> Message:
    grid = RecordingGrid(app, num_nodes=2)
    node = next(iter(grid.get_node_ids()))
    msg = Message(RecordDict(records), dst_node_id=node, message_type=message_type)
    return list(grid.send_and_receive([msg]))[0]


def test_a_malformed_riding_check_is_refused_before_the_carrying_step(homes):
    bank, retail = homes
    seen: list[str] = []

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, [str(bank.root), str(retail.root)])

    app = ClientApp(mods=[align_check_mod(home_of)])

    @app.query("probe")
    def probe(msg: Message, context: Context) -> Message:
        seen.append(sorted(msg.content.keys()))
        return Message(RecordDict({"out": ConfigRecord({"ok": True})}), reply_to=msg)

    reply = _ask(app, homes, "query.probe", {CHECK_RECORD: ConfigRecord({"dataset": 3})})
    assert (
        reply.has_error()
        and reply.error.code == ALIGN_ERROR_CODE
        and "malformed alignment check" in reply.error.reason
    )
    assert seen == []
    reply = _ask(
        app,
        homes,
        "query.probe",
        {"x": ConfigRecord({}), CHECK_RECORD: ConfigRecord({"dataset": "bank", "peer": "retailer"})},
    )
    assert not reply.has_error() and reply.content.metric_records[CHECK_RECORD]["earlier"] == 0.0
    assert seen == [["x"]]  # the carrying step never sees the check


def test_an_alignment_to_keep_rides_only_on_the_setup(homes):
    bank, retail = homes
    app = grid_for([bank, retail])
    node = next(iter(app.get_node_ids()))
    msg = Message(
        RecordDict({"config": ConfigRecord({"round": 1}), KEEP_RECORD: ConfigRecord({"dataset": "bank"})}),
        dst_node_id=node,
        message_type="query.vertical_check",
    )
    reply = list(app.send_and_receive([msg]))[0]
    assert reply.has_error() and "only vertical_setup may carry an alignment to keep" in reply.error.reason


def test_the_one_machine_runner_leaves_the_order_to_the_setup_on_the_jobs_own_grid(tmp_path):
    """As deployed: the PSI runs on its own grid, the setup (on the job's grid) keeps its order, by party name."""
    from fedcustomer.vertical.data import plan_parties
    from fedcustomer.vertical.parties import align_by_psi
    from fedcustomer.vertical.runner import run_vertical_on_grid

    bank, retail = pinned_party_homes(tmp_path, customers=400, seed=2)
    job = VerticalJob(
        out=str(tmp_path / "run"), rounds=1, batch_size=64, steps_per_round=1, seed=0, baseline=False
    )
    active, passive = plan_parties(job)
    size, pending = align_by_psi(bank, active, retail, passive, seed=0, with_setup=True)
    assert pending is not None and pending.size == size > 0
    assert not alignment_path(bank, "bank", "retailer").exists()  # nothing kept before the setup
    grid = grid_for([retail, bank])  # the job's grid reaches the parties under other node ids
    summary = run_vertical_on_grid(grid, job, psi_size=size, plans=(active, passive), alignment=pending)
    assert summary["status"] == "completed" and "query.vertical_align" not in _types(grid)
    for home, (dataset, peer) in ((bank, ("bank", "retailer")), (retail, ("retailer", "bank"))):
        assert len(json.loads(alignment_path(home, dataset, peer).read_text())["pseudonyms"]) == size
