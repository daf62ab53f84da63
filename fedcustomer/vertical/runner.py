"""The coordinator's side of split learning, and a one-machine runner with run outputs.

:func:`run_vertical_on_grid` drives the protocol of :mod:`fedcustomer.vertical.protocol`
over any Flower ``Grid`` (in-process, simulation engine, SuperLink) and writes the run
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

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcustomer.errors import FederationError
from fedcustomer.jobs.run_dir import RunDir
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.anchor_grid import AnchorGrid, AnchorLog
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.checkpoint import RoundCheckpoint, VerticalRound
from fedcustomer.vertical.data import (
    ACTIVE,
    OWN,
    PASSIVE,
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

log = logging.getLogger(__name__)


class _Wire:
    """Sends messages to nodes and returns their reply contents, or raises FederationError.

    ``ask_all`` sends independent messages (to different nodes) in one exchange: on the
    Deployment Engine each sequential exchange costs a round trip through the SuperLink.
    """

    def __init__(self, grid: Grid, timeout: float) -> None:
        self.grid, self.timeout = grid, timeout
        self.names: dict[int, str] = {}

    def ask(
        self, node: int, action: str, config: dict[str, Any], arrays: dict[str, torch.Tensor] | None = None
    ) -> RecordDict:
        content = RecordDict({"config": ConfigRecord(config)})
        if arrays is not None:
            content["arrays"] = ArrayRecord(arrays)
        msg = Message(content=content, dst_node_id=node, message_type=message_type(action))
        replies = list(self.grid.send_and_receive([msg], timeout=self.timeout))
        return self._content(replies[0] if replies else None, node, action)

    def ask_all(self, asks: list[tuple[int, str, dict[str, Any]]]) -> list[RecordDict]:
        """``(node, action, config)`` for distinct nodes, in one exchange; the contents in the order asked."""
        msgs = [
            Message(
                RecordDict({"config": ConfigRecord(cfg)}), dst_node_id=node, message_type=message_type(act)
            )
            for node, act, cfg in asks
        ]
        replies = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(msgs, timeout=self.timeout)}
        return [self._content(replies.get(node), node, act) for node, act, _ in asks]

    def _content(self, reply: Message | None, node: int, action: str) -> RecordDict:
        who = self.names.get(node, f"node {node}")
        if reply is None:
            raise FederationError(
                f"partner {who} did not answer {action} (node lost or timed out); the vertical job "
                "cannot go on without both parties"
            )
        if reply.has_error():
            raise FederationError(f"partner {who} failed at {action}: {reply.error.reason}")
        return reply.content


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


def _session_config(
    job: VerticalJob, plan: PartyPlan, peer: str, passive_dim: int, reserve_epsilon: float = 0.0
) -> dict[str, Any]:
    # A preset names the party's spec; a party on its own data reads the one it declared at home.
    spec = {} if plan.spec is None else {"feature-spec": json.dumps(plan.spec.to_dict())}
    return spec | {
        "run-id": job.run_id,
        "role": plan.role,
        "name": plan.name,
        "peer": peer,
        "dataset": plan.dataset,
        "task": job.task,
        "rounds": job.rounds,
        "batch-size": job.batch_size,
        "lr": job.lr,
        "optimizer": job.optimizer,
        "embed-dim": job.embed_dim,
        "hidden": job.hidden,
        "passive-embed-dim": passive_dim,
        "dp": job.dp,
        "max-grad-norm": job.max_grad_norm,
        "label-dp": job.label_dp,
        "label-epsilon": job.label_epsilon,
        "label-bound": job.label_bound,
        "embedding-noise": job.embedding_noise,
        "embedding-clip": job.embedding_clip,
        "max-noise-multiplier": job.max_noise_multiplier,
        "test-fraction": job.test_fraction,
        "seed": job.seed,
        "steps-per-round": 0,
        "sample-rate": 0.0,
        "reserve-epsilon": reserve_epsilon,
    }


def drive(
    grid: Grid,
    job: VerticalJob,
    active: PartyPlan,
    passive: PartyPlan | None,
    *,
    peer_of_active: str | None = None,
    reserve_epsilon: float = 0.0,
    checkpoint: RoundCheckpoint | None = None,
    nodes: dict[str, int] | None = None,
) -> DriveResult:
    """Run the split-learning rounds; ``passive=None`` trains the label owner's features alone.

    ``reserve_epsilon`` is left unspent in the label owner's budget (for the baseline).
    ``checkpoint`` keeps the trained rounds, so a restarted coordinator goes on after the last
    one (a half-done round is asked again: the parties charge once per round and take each
    step once, so nothing is paid or released twice). ``nodes`` (partner name -> node id, from a
    hello the caller has just made on this grid) saves asking again.
    """
    wire = _Wire(grid, job.round_timeout)
    if nodes is None:
        ids = list(grid.get_node_ids())
        hellos = wire.ask_all([(n, "vertical_hello", {}) for n in ids])
        nodes = {str(dict(hello["partner"])["name"]): node for node, hello in zip(ids, hellos)}
    wire.names = {node: name for name, node in nodes.items()}
    wanted = [active.name] + ([passive.name] if passive else [])
    absent = [n for n in wanted if n not in nodes]
    if absent:
        raise FederationError(
            f"partner(s) {', '.join(absent)} are not connected (connected: {', '.join(nodes) or 'none'})"
        )
    cfg = {
        ACTIVE: _session_config(
            job,
            active,
            peer_of_active or (passive.name if passive else active.name),
            job.embed_dim if passive else 0,
            reserve_epsilon,
        )
    }
    if passive:
        cfg[PASSIVE] = _session_config(job, passive, active.name, job.embed_dim)
    node_of = {ACTIVE: nodes[active.name]} | ({PASSIVE: nodes[passive.name]} if passive else {})
    setups = wire.ask_all([(node_of[role], "vertical_setup", cfg[role]) for role in node_of])  # one exchange
    sizes = {k: float(v) for k, v in dict(setups[0]["metrics"]).items()}
    if passive:
        other = dict(setups[1]["metrics"])
        if int(other["aligned"]) != int(sizes["aligned"]):
            raise FederationError(
                f"the parties hold different aligned sets ({int(sizes['aligned'])} vs "
                f"{int(other['aligned'])} customers); run the PSI again"
            )
    q = min(1.0, job.batch_size / sizes["train"])
    steps = job.steps_per_round or max(1, int(1 / q))
    for c in cfg.values():
        c.update({"sample-rate": q, "steps-per-round": steps})
    roles = [PASSIVE, ACTIVE] if passive else [ACTIVE]
    name_of = {ACTIVE: active.name} | ({PASSIVE: passive.name} if passive else {})
    rounds: list[VerticalRound] = checkpoint.load() if checkpoint is not None else []
    for rnd in range(len(rounds) + 1, job.rounds + 1):
        t0 = time.perf_counter()
        report = VerticalRound(rnd, "refused")
        for phase in (
            "vertical_check",
            "vertical_begin",
        ):  # check both first (one exchange: nothing is charged), so a refusal costs nobody anything
            asks = [(node_of[role], phase, cfg[role] | {"round": rnd}) for role in roles]
            checks = wire.ask_all(asks) if phase == "vertical_check" else None
            for i, role in enumerate(roles):  # begin: one party after the other, each charged once
                reply = checks[i] if checks is not None else wire.ask(*asks[i])
                decision = dict(reply["decision"])
                metrics = dict(reply["metrics"])
                if "epsilon-total" in metrics:
                    report.epsilon[name_of[role]] = float(metrics["epsilon-total"])
                    report.epsilon_target[name_of[role]] = float(metrics["epsilon-target"])
                if not decision["ok"]:  # every party asked in this exchange that refused is on record
                    report.refusals[name_of[role]] = str(decision["reason"])
                    if phase == "vertical_begin":
                        break
                elif phase == "vertical_begin" and role == ACTIVE and passive:
                    arrays = reply["arrays"].to_torch_state_dict()
                    batches = torch.split(arrays["batch-positions"], arrays["batch-sizes"].tolist())
            if report.refusals:
                report.refused_by, report.reason = next(iter(report.refusals.items()))
                report.wall_time_s = time.perf_counter() - t0
                rounds.append(report)
                return DriveResult(
                    "stopped",
                    rounds,
                    f"round {rnd}: {report.refused_by} refused: {report.reason}"
                    + "".join(
                        f"; {name} refused too: {why}" for name, why in list(report.refusals.items())[1:]
                    ),
                    _finish(wire, node_of, cfg, rnd),
                    sizes,
                )
        all_emb = None
        if passive:
            for t, pos in enumerate(batches):  # passive phase: public batches, gradients from the label head
                step_cfg = {"round": rnd, "step": t}
                emb = wire.ask(
                    node_of[PASSIVE], "vertical_forward", cfg[PASSIVE] | step_cfg, {"positions": pos}
                )["arrays"].to_torch_state_dict()["embeddings"]
                grads = wire.ask(
                    node_of[ACTIVE], "vertical_step", cfg[ACTIVE] | step_cfg, {"embeddings": emb}
                )["arrays"].to_torch_state_dict()["gradients"]
                last = {"then-embed": True} if t == len(batches) - 1 else {}  # saves the embed exchange
                back = wire.ask(
                    node_of[PASSIVE],
                    "vertical_backward",
                    cfg[PASSIVE] | step_cfg | last,
                    {"positions": pos, "gradients": grads},
                )
                if "arrays" in back:
                    all_emb = back["arrays"].to_torch_state_dict()["embeddings"]
        if passive and all_emb is None:  # no step this round (or a party that sends them on their own)
            all_emb = wire.ask(node_of[PASSIVE], "vertical_embed", cfg[PASSIVE] | {"round": rnd})["arrays"]
            all_emb = all_emb.to_torch_state_dict()["embeddings"]
        # joint phase: the label owner's DP-SGD on batches it draws privately, then held-out metrics
        metrics = wire.ask(
            node_of[ACTIVE],
            "vertical_fit",
            cfg[ACTIVE] | {"round": rnd},
            {"embeddings": all_emb} if all_emb is not None else None,
        )["metrics"]
        report.status, report.metrics, report.steps = (
            "trained",
            {k: float(v) for k, v in dict(metrics).items()},
            steps,
        )
        report.wall_time_s = time.perf_counter() - t0
        rounds.append(report)
        if checkpoint is not None:
            checkpoint.save(rounds)
        log.info(
            "vertical round %s/%s: %s",
            rnd,
            job.rounds,
            ", ".join(f"{k} {v:.4g}" for k, v in report.metrics.items()),
        )
    return DriveResult("completed", rounds, None, _finish(wire, node_of, cfg, job.rounds), sizes)


def _finish(
    wire: _Wire, node_of: dict[str, int], cfg: dict[str, dict[str, Any]], rnd: int
) -> dict[str, dict[str, Any]]:
    out = {}
    asks = [(node, "vertical_finish", cfg[role] | {"round": rnd}) for role, node in node_of.items()]
    for reply in wire.ask_all(asks):  # both parties in one exchange
        out[str(dict(reply["partner"])["name"])] = json.loads(str(dict(reply["accounting"])["json"]))
    return out


def run_vertical_on_grid(
    grid: Grid,
    job: VerticalJob,
    *,
    baseline_grid: Grid | None = None,
    psi_size: int | None = None,
    checkpoints: Path | None = None,
    nodes: dict[str, int] | None = None,
    plans: tuple[PartyPlan, PartyPlan] | None = None,
) -> dict[str, Any]:
    """Run the vertical job (and, given ``baseline_grid``, the label owner alone) and write the run directory.

    The baseline is another release about the label owner's customers: ``baseline_grid``
    must reach the label owner's real home, so it is charged to the real ledger; the joint
    job leaves ``job.baseline_epsilon`` for it.

    Raises FederationError when a party drops out, after writing a summary with status
    ``failed`` (no party keeps a final model part for a failed job). ``checkpoints`` (a
    directory) keeps the trained rounds of both drives, for a restarted coordinator. ``nodes``:
    the partners' node ids on ``grid`` if the caller has just asked them (see :func:`drive`);
    ``plans`` the parties, if the caller has planned them (from the same hello, ``--data own``).
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
    if baseline_grid is not None:
        baseline_grid = grid.sharing_log(baseline_grid)
    try:
        result = drive(
            grid,
            job,
            active,
            passive,
            reserve_epsilon=reserve,
            checkpoint=_checkpoint(checkpoints, "joint"),
            nodes=nodes,
        )
    except FederationError as exc:
        done = _checkpoint(checkpoints, "joint")  # what was trained (and paid) before the stop
        failed = DriveResult("failed", done.load() if done is not None else [], str(exc))
        write_outputs(out, job, failed, None, active, passive, psi_size)
        raise
    baseline = None
    if baseline_grid is not None:
        base_job = VerticalJob.from_dict(job.to_dict() | {"run_id": job.run_id + "-baseline"})
        try:
            baseline = drive(
                baseline_grid,
                base_job,
                active,
                None,
                peer_of_active=passive.name,
                checkpoint=_checkpoint(checkpoints, "baseline"),
                nodes=baseline_nodes,
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


def prepare_vertical(job: VerticalJob, anchors: AnchorLog | None = None) -> VerticalSetup:
    """Give each party a home with its rows in its governed store, run the PSI, keep each side's alignment.

    ``anchors`` records the parties' audit anchors sent with their PSI replies. With
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
    size = align_by_psi(
        homes[active.name], active, homes[passive.name], passive, seed=job.seed, anchors=anchors
    )
    # The comparison model trains on the label owner's real home and is paid from its real
    # ledger (the joint job leaves job.baseline_epsilon for it): no copied budget.
    baseline = homes[active.name] if job.baseline else None
    return VerticalSetup(homes[active.name], homes[passive.name], baseline, size, (active, passive))


def run_vertical_local(job: VerticalJob) -> dict[str, Any]:
    """Set up both parties and run the job through the in-process Flower grid."""
    torch.set_num_threads(int(os.environ.get("FEDCUSTOMER_THREADS", "1")))
    anchors = AnchorLog(job.out, job.run_id)
    setup = prepare_vertical(job, anchors)
    homes = [str(setup.active.root), str(setup.passive.root)]
    grid = AnchorGrid(LocalGrid(party_app(homes), num_nodes=2), anchors)
    baseline_grid = None
    if setup.baseline is not None:
        baseline_grid = grid.sharing_log(LocalGrid(party_app([str(setup.baseline.root)]), num_nodes=1))
    return run_vertical_on_grid(
        grid, job, baseline_grid=baseline_grid, psi_size=setup.psi_size, plans=setup.plans
    )
