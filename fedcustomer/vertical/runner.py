"""The coordinator's side of split learning, and a one-machine runner with run outputs.

:func:`run_vertical_on_grid` drives the protocol of :mod:`fedcustomer.vertical.protocol`
(the chain of exchanges: :mod:`fedcustomer.vertical.rounds`) over any Flower ``Grid`` (in-process, simulation engine, SuperLink) and writes the run
directory: ``config.json summary.json metrics.csv feature_specs.json anchors.jsonl plots/*.png``
(``anchors.jsonl``: the parties' audit anchors, sent with every reply, see
:mod:`fedcustomer.server.anchor_grid`). The
coordinator never holds a model: each party keeps its final part at home
(``state/vertical/run-<id>-<role>-final.pt``), written only when the job ends cleanly,
so a failed job leaves no part that could be mistaken for a final model.

:func:`run_vertical_local` sets up both parties' homes (governed stores, a messaged PSI)
and runs the job on the in-process grid, plus the label owner's features-only baseline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcustomer.errors import FederationError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.anchor_grid import AnchorGrid, AnchorLog
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.align import PendingAlignment
from fedcustomer.vertical.checkpoint import RoundCheckpoint
from fedcustomer.vertical.data import (
    OWN,
    PartyPlan,
    party_frames,
    plan_parties,
    provision_party,
)
from fedcustomer.vertical.declaration import load_declaration, own_party_homes, public_view
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.outputs import DriveResult, write_outputs
from fedcustomer.vertical.parties import align_by_psi, party_app, pin_each_other
from fedcustomer.vertical.protocol import message_type
from fedcustomer.vertical.rounds import FollowingJob, drive

log = logging.getLogger(__name__)


def partner_hellos(grid: Grid, timeout: float | None) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Each connected node's partner name (it says it itself), and what it declared of its own data.

    A node that answers with an error is left out (it is not a vertical party).
    """
    msgs = [
        Message(
            RecordDict({"config": ConfigRecord({})}),
            dst_node_id=n,
            message_type=message_type("vertical_hello"),
        )
        for n in grid.get_node_ids()
    ]
    nodes: dict[str, int] = {}
    declared: dict[str, dict[str, Any]] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            continue
        name = str(dict(reply.content["partner"])["name"])
        nodes[name] = reply.metadata.src_node_id
        if "declared" in reply.content:
            declared[name] = dict(reply.content["declared"])
    return nodes, declared


def run_vertical_on_grid(
    grid: Grid,
    job: VerticalJob,
    *,
    baseline_grid: Grid | None = None,
    psi_size: int | None = None,
    checkpoints: Path | None = None,
    nodes: dict[str, int] | None = None,
    plans: tuple[PartyPlan, PartyPlan] | None = None,
    alignment: PendingAlignment | None = None,
) -> dict[str, Any]:
    """Run the vertical job (and, given ``baseline_grid``, the label owner alone) and write the run directory.

    The baseline is another release about the label owner's customers: ``baseline_grid``
    must reach the label owner's real home, so it is charged to the real ledger; the joint
    job leaves ``job.baseline_epsilon`` for it. It runs in the label owner's idle slots of the
    joint job on ``grid`` (whose label owner is that home) when the label owner can; what is
    left of it runs on ``baseline_grid`` after the joint finish.

    Raises FederationError when a party drops out, after writing a summary with status
    ``failed`` (no party keeps a final model part for a failed job). ``checkpoints`` (a
    directory) keeps the trained rounds of both drives, for a restarted coordinator. ``nodes``:
    the partners' node ids on ``grid`` if the caller has just asked them (see :func:`drive`);
    ``plans`` the parties, if the caller has planned them (from the same hello, ``--data own``);
    ``alignment`` a PSI's order the parties keep with their setup (see :func:`drive`).
    """
    if plans is None and job.data == OWN:  # the parties say what they declared
        nodes, declared = partner_hellos(grid, job.round_timeout)
        plans = plan_parties(job, declared)
    active, passive = plans or plan_parties(job)
    out = Path(job.out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    files = RunDir(out)
    files.write_config(job)
    specs = {  # a party on its own data keeps its spec at home: recorded as declared there
        p.name: {
            "role": p.role,
            "dataset": p.dataset,
            "feature_spec": p.spec.to_dict() if p.spec is not None else None,
            "declared_by_party": p.spec is None,
        }
        for p in (active, passive)
    }
    files.write_json("feature_specs.json", specs)
    reserve = job.baseline_epsilon if baseline_grid is not None and job.dp else 0.0
    baseline_nodes = nodes if baseline_grid is grid else None
    grid = AnchorGrid.around(grid, out, job.run_id)  # the parties' audit anchors: anchors.jsonl
    following = None
    base_job = VerticalJob.from_dict(job.to_dict() | {"run_id": job.run_id + "-baseline"})
    if baseline_grid is not None:
        baseline_grid = grid.sharing_log(baseline_grid)
        base_done = _checkpoint(checkpoints, "baseline")  # rounds trained before a restart: not begun again
        first = len(base_done.load()) + 1 if base_done is not None else 1
        following = FollowingJob(base_job, active, passive.name, first, base_done)  # beside the joint job
    try:
        result = drive(
            grid,
            job,
            active,
            passive,
            reserve_epsilon=reserve,
            checkpoint=_checkpoint(checkpoints, "joint"),
            nodes=nodes,
            alignment=alignment,
            following=following,
        )
    except FederationError as exc:
        done = _checkpoint(checkpoints, "joint")  # what was trained (and paid) before the stop
        failed = DriveResult("failed", done.load() if done is not None else [], str(exc))
        # the comparison model's rounds paid beside it stay paid (a --resume goes on without paying again)
        base_failed = following.interrupted(str(exc)) if following is not None else None
        write_outputs(out, job, failed, base_failed, active, passive, psi_size)
        raise
    baseline = None
    if following is not None and following.completed:  # it ran in the joint job's idle slots
        assert following.companion is not None
        baseline = following.companion.result(result.sizes)
    elif baseline_grid is not None:
        try:
            baseline = drive(
                baseline_grid,
                base_job,
                active,
                None,
                peer_of_active=passive.name,
                checkpoint=_checkpoint(checkpoints, "baseline"),
                nodes=baseline_nodes,
                sizes=result.sizes,  # the label owner's own counts (same home, dataset, peer): no second setup
                opened=following.answer if following is not None else None,
            )
        except FederationError as exc:
            baseline = DriveResult("failed", [], str(exc))
    return write_outputs(out, job, result, baseline, active, passive, psi_size)


def _checkpoint(directory: Path | None, name: str) -> RoundCheckpoint | None:
    return None if directory is None else RoundCheckpoint(directory / f"{name}-rounds.json")


# ------------------------------------------------------------------------- one machine
@dataclass
class VerticalSetup:
    """Provisioned homes of a local run."""

    active: PartnerHome
    passive: PartnerHome
    baseline: PartnerHome | None
    psi_size: int
    plans: tuple[PartyPlan, PartyPlan] | None = None
    alignment: PendingAlignment | None = None  # the PSI's order, for the parties' setup to keep


def prepare_vertical(
    job: VerticalJob, anchors: AnchorLog | None = None, *, keep_with_setup: bool = False
) -> VerticalSetup:
    """Give each party a home with its rows in its governed store, run the PSI, keep each side's alignment.

    ``anchors`` records the parties' audit anchors sent with their PSI replies. With
    ``keep_with_setup`` the parties keep the PSI's order with their setup, as deployed
    (``alignment`` in the result, for :func:`run_vertical_on_grid`). With
    ``--data own`` nothing is provisioned: the two homes in ``--homes`` already hold each
    party's own dataset, and each declared what it trains on (checked here, before the PSI).
    """
    if job.data == OWN:
        homes = own_party_homes(job.homes)
        active, passive = plan_parties(job, {n: public_view(load_declaration(h)) for n, h in homes.items()})
    else:
        active, passive = plan_parties(job)
        frames = party_frames(job)
        root = Path(job.homes) if job.homes else Path(job.out) / "partners"
        budget = DatasetBudget(job.epsilon, job.delta)
        homes = {p.name: provision_party(root / p.name, p, frames[p.name], budget) for p in (active, passive)}
    pin_each_other(homes[active.name], homes[passive.name])
    size, pending = align_by_psi(
        homes[active.name],
        active,
        homes[passive.name],
        passive,
        seed=job.seed,
        anchors=anchors,
        with_setup=keep_with_setup,
    )
    # The comparison model trains on the label owner's real home and is paid from its real
    # ledger (the joint job leaves job.baseline_epsilon for it): no copied budget.
    baseline = homes[active.name] if job.baseline else None
    return VerticalSetup(homes[active.name], homes[passive.name], baseline, size, (active, passive), pending)


def run_vertical_local(job: VerticalJob) -> dict[str, Any]:
    """Set up both parties and run the job through the in-process Flower grid."""
    torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
    anchors = AnchorLog(job.out, job.run_id)
    setup = prepare_vertical(job, anchors, keep_with_setup=True)  # the same messages as deployed
    homes = [str(setup.active.root), str(setup.passive.root)]
    grid = AnchorGrid(LocalGrid(party_app(homes), num_nodes=2), anchors)
    baseline_grid = None
    if setup.baseline is not None:
        baseline_grid = grid.sharing_log(LocalGrid(party_app([str(setup.baseline.root)]), num_nodes=1))
    return run_vertical_on_grid(
        grid,
        job,
        baseline_grid=baseline_grid,
        psi_size=setup.psi_size,
        plans=setup.plans,
        alignment=setup.alignment,
    )
