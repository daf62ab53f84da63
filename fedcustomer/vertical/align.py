"""Turning a finished PSI session into each party's vertical alignment, on the party's own node.

After the PSI (:mod:`fedcustomer.psi.protocol`) each party holds, in its own home, its
pseudonyms of the shared customers in one agreed order. The coordinator then asks both
parties to keep that order as their vertical alignment, in two steps:

``check``  -> has this party an earlier alignment with the peer?
``save`` ``{use-earlier}`` -> keep the order (the earlier one if both have it)

Each step may ride on another message, since each sequential exchange costs a round trip
through the SuperLink when deployed: the check on the PSI's last message (``psi_finish``, a
:data:`CHECK_RECORD` beside the PSI's own record, answered by :func:`align_check_mod` after the
PSI step succeeded), the save on the parties' ``vertical_setup`` (a :data:`KEEP_RECORD`, kept
before the setup reads the alignment). A node that does not answer the riding check (an older
release) gets both steps as their own ``query.vertical_align`` messages, as before.

An earlier alignment is kept so that a later job on the same homes cannot move earlier
training customers into the held-out set: both sides map the fresh order onto the one they
saved (the same permutation on both sides, since row i is the same customer on both), which
is only sound when *both* saved one, hence the check first. A different seed or a changed
set of shared customers is refused with what to do. The coordinator learns only yes/no and
the size; the alignment never leaves the home. The same code runs in process and deployed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import Grid

from fedcustomer.errors import ConfigError, FedCustomerError, FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.protocol import MSG_FINISH
from fedcustomer.psi.state import check_session_id, load_alignment
from fedcustomer.server.wrapped_grid import WrappedGrid
from fedcustomer.vertical.data import alignment_path, save_pseudonym_alignment

ACTION = "vertical_align"
# the check riding on the PSI's last message, and its answer; the save riding on the setup, and its answer
CHECK_RECORD = "fedcustomer.vertical-align-check"
KEEP_RECORD = "fedcustomer.vertical-align-keep"
ALIGN_ERROR_CODE = 4103  # a save refused for what the operator must change (seed, changed customers)


def handle_align(home: PartnerHome, cfg: dict[str, Any]) -> dict[str, int | float | list[int] | list[float]]:
    """One party's side of both align steps (no id, no pseudonym leaves: only a flag and a size)."""
    step, dataset, peer = str(cfg["step"]), str(cfg["dataset"]), str(cfg["peer"])
    earlier_path = alignment_path(home, dataset, peer)
    if step == "check":
        return {"earlier": float(earlier_path.exists())}
    if step != "save":
        raise ConfigError(f"vertical_align step must be 'check' or 'save', got {step!r}")
    seed = int(cfg["seed"]) if "seed" in cfg else None
    fresh = load_alignment(home, check_session_id(cfg["session-id"]))
    if any(p is None for p in fresh):
        raise ConfigError("a customer of this PSI was erased since; run the PSI again")
    order = [str(p) for p in fresh]
    if bool(cfg.get("use-earlier")):
        order = onto_earlier(order, _saved(earlier_path), home.root.parent, seed)
    save_pseudonym_alignment(home, dataset, peer, order, seed=seed)
    return {"size": float(len(order))}


def _saved(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError("the coordinator asked to keep an earlier alignment this party does not have")
    return dict(json.loads(path.read_text(encoding="utf-8")))


def onto_earlier(new: list[str], saved: dict[str, Any], homes: Path, seed: int | None) -> list[str]:
    """The shared customers in the saved order, or a clear refusal when that cannot keep the split."""
    old = list(saved.get("pseudonyms", []))
    if saved.get("seed") is not None and seed is not None and int(saved["seed"]) != int(seed):
        raise ConfigError(
            f"the homes in {homes} drew their vertical held-out split with --seed {saved['seed']}; another seed would "
            "move earlier training customers into the held-out set. Use the same --seed, or a new --homes directory"
        )
    if None in old or sorted(old) != sorted(new) or len(set(new)) != len(new):  # an erasure is a change too
        raise ConfigError(
            f"the customers the parties share changed since the first vertical job on the homes in {homes}; a new "
            "held-out split would mix earlier training and held-out customers. Use a new --homes directory"
        )
    return old


def _ask(grid: Grid, configs: dict[int, dict[str, Any]], timeout: float | None) -> dict[int, dict[str, Any]]:
    msgs = [
        Message(
            content=RecordDict({"config": ConfigRecord(cfg)}),
            dst_node_id=node,
            message_type=f"query.{ACTION}",
        )
        for node, cfg in configs.items()
    ]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs, timeout=timeout)}
    out = {}
    for node in configs:
        reply = replies.get(node)
        if reply is None:
            raise FederationError(f"partner node {node} did not answer {ACTION}; run the job again")
        if reply.has_error():
            reason = str(reply.error.reason)
            if reason.startswith("ConfigError: "):  # what the operator must change, not a network fault
                raise ConfigError(reason.removeprefix("ConfigError: "))
            raise FederationError(f"partner node {node} failed at {ACTION}: {reason}")
        out[node] = dict(reply.content["metrics"])
    return out


@dataclass
class PendingAlignment:
    """A finished PSI's agreed order that both parties are still to keep as their vertical alignment.

    ``sides`` maps node -> (dataset, peer name) and ``names`` node -> party name (the PSI's grid;
    the setup may reach the parties on another grid, by name); ``use_earlier``: both parties hold an earlier
    alignment with each other, so both keep its order. ``ride``: both nodes answered the check
    riding on the PSI, so they also keep the order with their setup (one exchange fewer);
    ``on_kept`` runs once both have kept it (the coordinator's checkpoint of the PSI).
    """

    session_id: str
    sides: dict[int, tuple[str, str]]
    names: dict[int, str]
    seed: int | None
    use_earlier: bool
    size: int
    ride: bool = False
    on_kept: Callable[[], None] | None = None

    def save_config(self, node: int) -> dict[str, Any]:
        dataset, peer = self.sides[node]
        cfg: dict[str, Any] = {"dataset": dataset, "peer": peer, "step": "save"}
        cfg |= {"session-id": self.session_id, "use-earlier": self.use_earlier}
        return cfg | ({} if self.seed is None else {"seed": int(self.seed)})

    def config_of(self, name: str) -> dict[str, Any]:
        """What party ``name`` is asked to keep."""
        nodes = [node for node, who in self.names.items() if who == name]
        if len(nodes) != 1:
            raise FederationError(f"the alignment to keep is not of party {name!r}; run the PSI again")
        return self.save_config(nodes[0])

    def kept(self, sizes: Iterable[int]) -> int:
        """The size both parties kept; a mismatch is refused (the PSI is run again)."""
        distinct = set(sizes)
        if len(distinct) != 1:
            raise FederationError("the parties kept alignments of different sizes; run the PSI again")
        if self.on_kept is not None:
            self.on_kept()
        return distinct.pop()


class CheckRidingGrid(WrappedGrid):
    """Adds each party's alignment check to the PSI's last message to it; keeps the answers.

    Why a grid: the PSI layer relays its own messages and knows nothing of vertical alignments;
    the check only needs to travel in the same exchange. ``earlier`` holds each node's answer
    (absent for a node that did not answer it: an older release).
    """

    def __init__(self, grid: Grid, sides: dict[int, tuple[str, str]]) -> None:
        super().__init__(grid)
        self.asks: dict[int, dict[str, Any]] = {n: {"dataset": d, "peer": p} for n, (d, p) in sides.items()}
        self.earlier: dict[int, bool] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        msgs = list(messages)
        for msg in msgs:
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type == f"query.{MSG_FINISH}" and node in self.asks:
                msg.content[CHECK_RECORD] = ConfigRecord(self.asks[node])
        replies = list(self.grid.send_and_receive(msgs, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            if node in self.asks and not reply.has_error() and CHECK_RECORD in reply.content:
                self.earlier[node] = bool(dict(reply.content[CHECK_RECORD])["earlier"])
        return replies


def align_check_mod(home_of: Callable[[Context], PartnerHome]) -> Mod:
    """A ClientApp mod answering an alignment check that rides on another message, after that message's step.

    The check reads only whether this party holds an earlier alignment with the peer; it runs
    when the carrying message's own step succeeded, so a failed PSI reveals nothing more.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if not msg.has_content() or CHECK_RECORD not in msg.content:
            return call_next(msg, context)
        asked = dict(msg.content[CHECK_RECORD])
        del msg.content[CHECK_RECORD]  # the carrying step's handler sees its own records only
        if not isinstance(asked.get("dataset"), str) or not isinstance(asked.get("peer"), str):
            reason = f"ConfigError: malformed alignment check (dataset and peer names expected), keys {sorted(asked)}"
            return Message(Error(code=ALIGN_ERROR_CODE, reason=reason), reply_to=msg)
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content():
            return reply
        try:
            earlier = handle_align(home_of(context), asked | {"step": "check"})
        except FedCustomerError as exc:
            return Message(Error(code=ALIGN_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        reply.content[CHECK_RECORD] = MetricRecord(earlier)
        return reply

    return mod


def check_alignments(
    grid: Grid, sides: dict[int, tuple[str, str]], answered: dict[int, bool], timeout: float | None
) -> bool:
    """Whether both parties keep an earlier order; asked on its own only of nodes that did not answer it."""
    missing = {
        n: {"dataset": d, "peer": p, "step": "check"} for n, (d, p) in sides.items() if n not in answered
    }
    asked = {n: bool(m["earlier"]) for n, m in (_ask(grid, missing, timeout) if missing else {}).items()}
    return all((answered | asked).values())


def keep_alignment(grid: Grid, pending: PendingAlignment, timeout: float | None = None) -> int:
    """Ask both parties, in an exchange of its own, to keep the session's order."""
    saved = _ask(grid, {n: pending.save_config(n) for n in pending.sides}, timeout)
    return pending.kept(int(m["size"]) for m in saved.values())


def keep_with_setup(home: PartnerHome, record: Any) -> dict[str, int | float | list[int] | list[float]]:
    """A party's save riding on its setup: the same step as ``query.vertical_align`` ``save``."""
    cfg = dict(record) | {"step": "save"}
    try:
        return handle_align(home, cfg)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"malformed alignment to keep ({type(exc).__name__}: {exc})") from None


def align_handler_content(home: PartnerHome, cfg: dict[str, Any]) -> RecordDict:
    """The reply to one align message; a malformed one is a clear error, not a traceback."""
    try:
        return RecordDict({"metrics": MetricRecord(handle_align(home, cfg))})
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"malformed {ACTION} message ({type(exc).__name__}: {exc})") from None
