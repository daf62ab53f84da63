"""The coordinator's side of split-learning rounds: the shortest chain of exchanges the protocol allows.

On the Deployment Engine every sequential exchange (coordinator -> SuperLink -> node -> back)
costs a round trip of Flower's transport, so each message also carries what its party can do
next without waiting for the other party (see :mod:`fedcustomer.vertical.protocol`):

* a round opens with both parties' checks (nothing charged; the first round's ride on the
  parties' ``vertical_setup``), then the label owner's ``vertical_begin`` (charged; it reveals
  the public batches);
* the passive party's ``vertical_begin`` carries batch 0: it charges, then returns the batch's
  embeddings;
* ``vertical_backward`` of step t carries step t+1's positions and returns its embeddings; the
  round's last one returns the embeddings of all aligned customers and the passive party's
  check of the next round (``then-embed``, ``then-check``);
* the label owner's ``vertical_fit`` of round r opens round r+1 at the label owner when the
  passive party's check passed (``then-begin``), or only checks it (``then-check``), so every
  refusal is on record as before. A job of the label owner alone has no check (its begin
  refuses by itself) and ends with its last fit (``then-finish``);
* the parties' setup first keeps the PSI's order as their alignment (:mod:`.align`);
* the label owner's own comparison model (its own run id and session) rides in the label
  owner's idle slots: while the passive party is asked its begin or a backward, the same
  exchange carries the comparison model's next message to the label owner (:mod:`.companion`).
  What is left of it when the joint job ends (all of it, with a label owner of an earlier
  release, whose setup reply does not say it can) begins with the label owner's finish
  (``next-job``) and goes on with messages of its own.

What is charged is unchanged: both parties' checks pass before either pays, each party pays
once per round, before it releases anything of that round. One order changed: the label owner
pays before the passive party (its batches must reach the passive party's first forward). The
comparison model's charges now interleave with the joint job's: its noise, and each of its
charges, leave room for the joint job's unpaid rounds (:mod:`.spend`), so a joint charge is never
refused because the comparison model paid first. A drive that resumes after a
coordinator restart opens its first round afresh (checks, then begin: the parties answer a
repeated begin without charging again).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.vertical.align import ALIGN_ERROR_CODE, KEEP_RECORD, PendingAlignment
from fedcustomer.vertical.checkpoint import RoundCheckpoint, VerticalRound
from fedcustomer.vertical.companion import COMPLETED, Companion
from fedcustomer.vertical.data import ACTIVE, PASSIVE, PartyPlan
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.outputs import DriveResult
from fedcustomer.vertical.protocol import ALONGSIDE_RECORD, NEXT_JOB_RECORD, PRECALIBRATE_RECORD, message_type
from fedcustomer.vertical.replies import Decision
from fedcustomer.vertical.replies import accounting as _accounting
from fedcustomer.vertical.replies import batches as _batches
from fedcustomer.vertical.replies import decision as _decision
from fedcustomer.vertical.replies import numbers as _numbers
from fedcustomer.vertical.replies import record as _record
from fedcustomer.vertical.replies import tensors as _tensors
from fedcustomer.vertical.spend import public_sampling

log = logging.getLogger(__name__)


class Wire:
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
        return self.content(replies[0] if replies else None, node, action)

    def ask_all(
        self,
        asks: list[tuple[int, str, dict[str, Any]]],
        riders: dict[int, dict[str, ConfigRecord]] | None = None,
    ) -> list[RecordDict]:
        """``(node, action, config)`` for distinct nodes, in one exchange; the contents in the order asked.

        ``riders``: more records for a node's message (e.g. the alignment it keeps first).
        """
        replies = self.send_all(asks, riders)
        return [self.content(replies.get(node), node, act) for node, act, _ in asks]

    def send_all(
        self,
        asks: list[tuple[int, str, dict[str, Any]]],
        riders: dict[int, dict[str, ConfigRecord]] | None = None,
        arrays: dict[int, dict[str, torch.Tensor]] | None = None,
    ) -> dict[int, Message]:
        """One exchange, a message per distinct node; the replies by node (read each with :meth:`content`)."""
        msgs = []
        for node, act, cfg in asks:
            content = RecordDict({"config": ConfigRecord(cfg)})
            for name, record in (riders or {}).get(node, {}).items():
                content[name] = record
            if arrays and arrays.get(node):
                content["arrays"] = ArrayRecord(arrays[node])
            msgs.append(Message(content, dst_node_id=node, message_type=message_type(act)))
        return {r.metadata.src_node_id: r for r in self.grid.send_and_receive(msgs, timeout=self.timeout)}

    def content(self, reply: Message | None, node: int, action: str) -> RecordDict:
        who = self.names.get(node, f"node {node}")
        if reply is None:
            raise FederationError(
                f"partner {who} did not answer {action} (node lost or timed out); the vertical job "
                "cannot go on without both parties"
            )
        if reply.has_error():
            if reply.error.code == ALIGN_ERROR_CODE:  # what the operator must change, not a network fault
                raise ConfigError(f"partner {who}: {str(reply.error.reason).removeprefix('ConfigError: ')}")
            raise FederationError(f"partner {who} failed at {action}: {reply.error.reason}")
        return reply.content


def session_config(
    job: VerticalJob, plan: PartyPlan, peer: str, passive_dim: int, reserve_epsilon: float = 0.0
) -> dict[str, Any]:
    """What a party is told about the job, in every message (its session is keyed by run and role)."""
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


class _Chain:
    """One drive's messages: who is asked what, and what their answers open next."""

    def __init__(
        self, wire: Wire, node_of: dict[str, int], cfg: dict[str, dict[str, Any]], names: dict[str, str]
    ) -> None:
        self.wire, self.node_of, self.cfg, self.names = wire, node_of, cfg, names
        self.joint = PASSIVE in node_of
        self.next_batches: list[torch.Tensor] = []  # the public batches of a round its previous fit opened
        self.companion: Companion | None = None  # the comparison model, in the label owner's idle slots

    def ask(
        self, role: str, action: str, extra: dict[str, Any], arrays: dict[str, torch.Tensor] | None = None
    ) -> RecordDict:
        return self.wire.ask(self.node_of[role], action, self.cfg[role] | extra, arrays)

    @staticmethod
    def record(report: VerticalRound, name: str, answer: Decision) -> bool:
        """Keep a party's answer for round ``report.round`` in the report; False when it refused."""
        return _record(report, name, answer)

    def ask_passive(
        self, action: str, extra: dict[str, Any], arrays: dict[str, torch.Tensor] | None = None
    ) -> RecordDict:
        """Ask the passive party; the label owner, idle meanwhile, gets the comparison model's next message.

        Both go in one exchange. The comparison model's answer is read first (what it paid is on
        record even if the passive party failed); an error there hands it over to its own drive
        after the joint job, and the joint job goes on.
        """
        side = self.companion.rides() if self.companion is not None else None
        if side is None or self.companion is None:
            return self.ask(PASSIVE, action, extra, arrays)
        node, bank = self.node_of[PASSIVE], self.node_of[ACTIVE]
        asks = [(node, action, self.cfg[PASSIVE] | extra), (bank, *side)]
        replies = self.wire.send_all(asks, arrays={node: arrays} if arrays else None)
        try:
            self.companion.take(self.wire.content(replies.get(bank), bank, side[0]))
        except FederationError as exc:
            self.companion.hand_over(str(exc))
        return self.wire.content(replies.get(node), node, action)

    def open(
        self, rnd: int, report: VerticalRound, checked: list[tuple[str, Decision]] | None = None
    ) -> list[torch.Tensor] | None:
        """Checks (both parties, one exchange, nothing charged), then the label owner's begin; None if refused.

        ``checked``: both parties' checks of this round, already answered with their setup.
        """
        if self.joint:
            if checked is None:
                roles = [PASSIVE, ACTIVE]
                asks = [(self.node_of[r], "vertical_check", self.cfg[r] | {"round": rnd}) for r in roles]
                replies = self.wire.ask_all(asks)  # every party that refused is on record
                checked = [(r, _decision(c)) for r, c in zip(roles, replies, strict=True)]
            oks = [self.record(report, self.names[role], answer) for role, answer in checked]
            if not all(oks):
                return None
        begin = (self.node_of[ACTIVE], "vertical_begin", self.cfg[ACTIVE] | {"round": rnd})
        begun = self.wire.ask_all([begin], self._precalibration())[0]
        if not self.record(report, self.names[ACTIVE], _decision(begun)):
            return None
        return _batches(begun) if self.joint else []

    def _precalibration(self) -> dict[int, dict[str, ConfigRecord]] | None:
        """The comparison model's next begin, for the label owner to calibrate while it waits for it."""
        c = self.companion
        if c is None or c.message() is None or c.begun is not None:
            return None
        return {self.node_of[ACTIVE]: {PRECALIBRATE_RECORD: ConfigRecord(c.cfg | {"round": c.next_round})}}

    def opened(self, report: VerticalRound, answers: list[tuple[str, Decision]]) -> list[torch.Tensor] | None:
        """A round already opened by the last round's replies: their answers go on record."""
        oks = [self.record(report, self.names[role], answer) for role, answer in answers]
        return self.next_batches if all(oks) else None

    def passive_phase(
        self, rnd: int, report: VerticalRound, batches: list[torch.Tensor], more: bool
    ) -> tuple[torch.Tensor, Decision | None] | None:
        """The passive party's charge and steps; its embeddings of all customers and its next check.

        None when it refused at its begin. ``more``: a round follows, so the last message checks it too.
        """
        tail = {"then-embed": True} | ({"then-check": True} if more else {})
        flags, arrays = ({"then-forward": True}, {"forward-positions": batches[0]}) if batches else (tail, {})
        reply = self.ask_passive("vertical_begin", {"round": rnd} | flags, arrays or None)
        if not self.record(report, self.names[PASSIVE], _decision(reply)):
            return None
        for t, pos in enumerate(batches):  # gradients from the label head, one step after another
            emb = _tensors(reply)["embeddings"]
            step = {"round": rnd, "step": t}
            grads = _tensors(self.ask(ACTIVE, "vertical_step", step, {"embeddings": emb}))["gradients"]
            arrays = {"positions": pos, "gradients": grads}
            if t + 1 < len(batches):  # step t+1's embeddings come back with step t's backward
                reply = self.ask_passive(
                    "vertical_backward",
                    step | {"then-forward": True},
                    arrays | {"forward-positions": batches[t + 1]},
                )
            else:
                reply = self.ask_passive("vertical_backward", step | tail, arrays)
        check = _decision(reply, "next-") if more else None
        return _tensors(reply)["embeddings"], check

    def fit(
        self, rnd: int, embeddings: torch.Tensor | None, passive_check: Decision | None, more: bool
    ) -> tuple[dict[str, float], list[tuple[str, Decision]], dict[str, Any] | None]:
        """The label owner's joint phase; with ``more``, the next round opened (or checked) in the same message.

        Returns the held-out metrics, the answers for the next round (passive first) and, for a
        job of the label owner alone, its accounting (its last fit ends the job).
        """
        flags: dict[str, Any] = {}
        if more:
            passive_ok = passive_check is None or bool(passive_check[0]["ok"])
            flags = {"then-begin": True} if passive_ok else {"then-check": True}
        elif not self.joint:
            flags = {"then-finish": True}
        arrays = {"embeddings": embeddings} if embeddings is not None else None
        reply = self.ask(ACTIVE, "vertical_fit", {"round": rnd} | flags, arrays)
        metrics = _numbers(reply)
        answers: list[tuple[str, Decision]] = []
        if more:
            answers = ([(PASSIVE, passive_check)] if passive_check is not None else []) + [
                (ACTIVE, _decision(reply, "next-"))
            ]
            begun = self.joint and "then-begin" in flags and bool(answers[-1][1][0]["ok"])
            self.next_batches = _batches(reply) if begun else []
        accounting = _accounting(reply) if "then-finish" in flags else None
        return metrics, answers, accounting

    def finish(self, rnd: int, following: FollowingJob | None = None) -> dict[str, dict[str, Any]]:
        """Both parties keep their final parts and report their accounting, in one exchange.

        ``following``: the label owner then begins its own next job (``next-job``), answered in ``following``.
        """
        asks = [
            (node, "vertical_finish", self.cfg[role] | {"round": rnd}) for role, node in self.node_of.items()
        ]
        riders = None
        if following is not None and following.config is not None:
            riders = {self.node_of[ACTIVE]: {NEXT_JOB_RECORD: ConfigRecord(following.config)}}
        out: dict[str, dict[str, Any]] = {}
        for (node, _, _), reply in zip(asks, self.wire.ask_all(asks, riders), strict=True):
            out.update(_accounting(reply))
            # an older node ignores next-job: the following job then begins with a message of its own
            if (
                following is not None
                and riders is not None
                and node in riders
                and "next-job-decision" in reply
            ):
                following.answer = _decision(reply, "next-job-")
        return out


@dataclass
class FollowingJob:
    """The label owner's own job beside the joint one (its comparison model).

    Why: it adds no sequential exchange of its own when its messages ride in the joint job's
    idle slots (:class:`~fedcustomer.vertical.companion.Companion`, to a label owner whose setup
    said it can); what is left of it when the joint job ends (all of it, with an older label
    owner) goes on after the joint finish, its next begin riding on the label owner's
    ``vertical_finish``. ``first`` is its next round (a restarted coordinator does not begin its
    trained rounds again) and ``checkpoint`` keeps its trained rounds; ``session``, ``config``
    and ``answer`` are filled in by the joint drive (the label owner's counts set its public
    rate; ``answer``: the label owner's answer to its last begin, still to be fitted or refused).
    """

    job: VerticalJob
    plan: PartyPlan
    peer: str
    first: int = 1
    checkpoint: RoundCheckpoint | None = None
    session: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    answer: Decision | None = None
    companion: Companion | None = None

    def hand_over(self) -> None:
        """The joint job ends: what is left for the comparison model's own drive, after the finish."""
        if self.companion is not None:
            self.companion.hand_over("the joint job ended")
            self.first, self.answer = self.companion.next_round, self.companion.begun
        self.config = None
        if self.answer is None and self.first <= self.job.rounds and self.session is not None:
            self.config = self.session | {"round": self.first}  # its next begin rides on the finish

    @property
    def completed(self) -> bool:
        """It completed in the joint job's idle slots: no drive of its own follows."""
        return self.companion is not None and self.companion.status == COMPLETED

    def interrupted(self, why: str) -> DriveResult | None:
        """Its result when the joint job failed (None when it had not begun beside it)."""
        c = self.companion
        return c.interrupted(why) if c is not None and (c.trained or c.begun is not None) else None


def _configs(
    job: VerticalJob,
    active: PartyPlan,
    passive: PartyPlan | None,
    peer: str,
    reserve_epsilon: float,
) -> dict[str, dict[str, Any]]:
    """Each party's session config of a drive (before its public sampling rate is known)."""
    cfg = {ACTIVE: session_config(job, active, peer, job.embed_dim if passive else 0, reserve_epsilon)}
    if passive:
        cfg[PASSIVE] = session_config(job, passive, active.name, job.embed_dim)
    return cfg


def _sampled(cfg: dict[str, dict[str, Any]], job: VerticalJob, sizes: dict[str, float]) -> tuple[float, int]:
    """The public sampling rate and steps per round, from the label owner's counts, into every party's config."""
    q, steps = public_sampling(job.batch_size, int(sizes["train"]), job.steps_per_round or 0)
    for c in cfg.values():
        c.update({"sample-rate": q, "steps-per-round": steps})
    return q, steps


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
    sizes: dict[str, float] | None = None,
    alignment: PendingAlignment | None = None,
    following: FollowingJob | None = None,
    opened: Decision | None = None,
) -> DriveResult:
    """Run the split-learning rounds; ``passive=None`` trains the label owner's features alone.

    ``reserve_epsilon`` is left unspent in the label owner's budget (for the baseline).
    ``checkpoint`` keeps the trained rounds, so a restarted coordinator goes on after the last
    one (a half-done round is asked again: the parties charge once per round and take each
    step once, so nothing is paid or released twice). ``nodes`` (partner name -> node id, from a
    hello the caller has just made on this grid) saves asking again; so do ``sizes`` (the label
    owner's aligned/train/test counts from a setup of the same home, dataset and peer, e.g. the
    joint job's for its comparison model). ``alignment``: a PSI's order both parties keep
    with their setup, before it reads their aligned sets. ``following``: the label owner's own
    next job, begun with this job's finish; ``opened``: the label owner's answer to that begin,
    when this drive is that job.
    """
    wire = Wire(grid, job.round_timeout)
    if nodes is None:
        ids = list(grid.get_node_ids())
        hellos = wire.ask_all([(n, "vertical_hello", {}) for n in ids])
        nodes = {str(dict(hello["partner"])["name"]): node for node, hello in zip(ids, hellos, strict=True)}
    wire.names = {node: name for name, node in nodes.items()}
    wanted = [active.name] + ([passive.name] if passive else [])
    absent = [n for n in wanted if n not in nodes]
    if absent:
        raise FederationError(
            f"partner(s) {', '.join(absent)} are not connected (connected: {', '.join(nodes) or 'none'})"
        )
    peer = peer_of_active or (passive.name if passive else active.name)
    cfg = _configs(job, active, passive, peer, reserve_epsilon)
    node_of = {ACTIVE: nodes[active.name]} | ({PASSIVE: nodes[passive.name]} if passive else {})
    rounds: list[VerticalRound] = checkpoint.load() if checkpoint is not None else []
    first = len(rounds) + 1
    checked = None  # both parties' checks of the first round, answered with their setup
    alongside = False  # the label owner can run its comparison model beside this job
    if sizes is None:
        check = first if passive and first <= job.rounds else None
        sizes, checked, alongside = _setup(wire, node_of, cfg, job, check, alignment)
    elif alignment is not None:
        raise FederationError("an alignment to keep needs the parties' setup; this drive has none")
    q, steps = _sampled(cfg, job, sizes)
    names = {ACTIVE: active.name} | ({PASSIVE: passive.name} if passive else {})
    chain = _Chain(wire, node_of, cfg, names)
    if following is not None:
        nxt = _configs(following.job, following.plan, None, following.peer, 0.0)
        _, base_steps = _sampled(nxt, following.job, sizes)  # the same counts as its own drive would use
        following.session = nxt[ACTIVE]
        if passive and alongside and following.first <= following.job.rounds:
            beside = {"alongside-run": job.run_id, "alongside-rounds": job.rounds}
            trained = following.checkpoint.load() if following.checkpoint is not None else []
            following.companion = chain.companion = Companion(
                following.session | beside,
                following.job.rounds,
                active.name,
                base_steps,
                following.checkpoint,
                trained,
                len(trained) + 1,
            )
            # its first begin skips one idle slot when the rest still hold all its messages: the
            # label owner calibrates its noise in the background from the joint open on
            slots = (steps + 1) * (job.rounds - first + 1)
            needs = 1 + following.job.rounds - len(trained)
            following.companion.idle_first = int(slots > needs)
    # the next round's answers, sent with this round's replies (the first: with another job's finish)
    answers: list[tuple[str, Decision]] = [(ACTIVE, opened)] if opened is not None else []
    for rnd in range(first, job.rounds + 1):
        t0 = time.perf_counter()
        report = VerticalRound(rnd, "refused")
        more = rnd < job.rounds
        batches = chain.opened(report, answers) if answers else chain.open(rnd, report, checked)
        phase = chain.passive_phase(rnd, report, batches, more) if passive and batches is not None else None
        if batches is None or (passive and phase is None):
            rounds.append(_refused(report, t0))
            if following is not None:
                following.hand_over()
            return DriveResult("stopped", rounds, _stop_reason(report), chain.finish(rnd, following), sizes)
        embeddings, passive_check = phase if phase is not None else (None, None)
        # joint phase: the label owner's DP-SGD on batches it draws privately, then held-out metrics
        metrics, answers, accounting = chain.fit(rnd, embeddings, passive_check, more)
        report.status, report.metrics, report.steps = "trained", metrics, steps
        report.wall_time_s = time.perf_counter() - t0
        rounds.append(report)
        if checkpoint is not None:
            checkpoint.save(rounds)
        log.info(
            "vertical round %s/%s: %s", rnd, job.rounds, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        )
        if accounting is not None:  # the label owner alone: its last fit ended the job
            return DriveResult("completed", rounds, None, accounting, sizes)
    if following is not None:
        following.hand_over()
    return DriveResult("completed", rounds, None, chain.finish(job.rounds, following), sizes)


def _setup(
    wire: Wire,
    node_of: dict[str, int],
    cfg: dict[str, dict[str, Any]],
    job: VerticalJob,
    check: int | None,
    alignment: PendingAlignment | None = None,
) -> tuple[dict[str, float], list[tuple[str, Decision]] | None, bool]:
    """Both parties' aligned/train/test counts (one exchange); they must hold the same aligned set.

    ``check``: a round both parties also check in the same message (nothing charged), at the
    public rate each computes from its counts; it must be the one the coordinator announces.
    ``alignment``: the PSI's order, which each party keeps first, in the same message. Last: the
    label owner's reply says it can run a job beside this one (an older node's does not).
    """
    flags = {"then-check": True, "round": check, "steps-asked": job.steps_per_round or 0} if check else {}
    roles = list(node_of)
    riders = None
    if alignment is not None:  # by party name: the PSI may have reached the parties on another grid
        if sorted(alignment.names.values()) != sorted(str(cfg[role]["name"]) for role in roles):
            raise FederationError("the alignment to keep is not of this job's parties; run the PSI again")
        riders = {
            node_of[role]: {KEEP_RECORD: ConfigRecord(alignment.config_of(str(cfg[role]["name"])))}
            for role in roles
        }
    setups = wire.ask_all([(node_of[role], "vertical_setup", cfg[role] | flags) for role in roles], riders)
    if alignment is not None:
        _kept(wire, alignment, dict(zip(roles, setups, strict=True)), node_of)
    sizes = _numbers(setups[0])
    alongside = ALONGSIDE_RECORD in setups[roles.index(ACTIVE)]
    for other in (_numbers(reply) for reply in setups[1:]):
        if int(other["aligned"]) != int(sizes["aligned"]):
            raise FederationError(
                f"the parties hold different aligned sets ({int(sizes['aligned'])} vs "
                f"{int(other['aligned'])} customers); run the PSI again"
            )
    if not check:
        return sizes, None, alongside
    planned = public_sampling(job.batch_size, int(sizes["train"]), job.steps_per_round or 0)
    for role, reply in zip(roles, setups, strict=True):
        used = _numbers(reply, "sampling")
        if (used["sample-rate"], int(used["steps-per-round"])) != planned:
            raise FederationError(
                f"partner {wire.names.get(node_of[role], role)} checked round {check} at sample rate "
                f"{used['sample-rate']} x {int(used['steps-per-round'])} steps, not the announced "
                f"{planned[0]} x {planned[1]}; the parties disagree on the training set"
            )
    by_role = dict(zip(roles, setups, strict=True))
    return sizes, [(role, _decision(by_role[role], "next-")) for role in (PASSIVE, ACTIVE)], alongside


def _kept(
    wire: Wire, alignment: PendingAlignment, setups: dict[str, RecordDict], node_of: dict[str, int]
) -> None:
    """Both parties say they kept the PSI's order (a node that ignored the record would not)."""
    sizes = []
    for role, reply in setups.items():
        if KEEP_RECORD not in reply:
            raise FederationError(
                f"partner {wire.names.get(node_of[role], role)} did not keep the PSI's order with its setup; "
                "update fedcustomer on that node and run the job again"
            )
        sizes.append(int(_numbers(reply, KEEP_RECORD)["size"]))
    alignment.kept(sizes)


def _refused(report: VerticalRound, t0: float) -> VerticalRound:
    report.refused_by, report.reason = next(iter(report.refusals.items()))
    report.wall_time_s = time.perf_counter() - t0
    return report


def _stop_reason(report: VerticalRound) -> str:
    others = list(report.refusals.items())[1:]
    return f"round {report.round}: {report.refused_by} refused: {report.reason}" + "".join(
        f"; {name} refused too: {why}" for name, why in others
    )
