"""Turning a finished PSI session into each party's vertical alignment, on the party's own node.

After the PSI (:mod:`fedcustomer.psi.protocol`) each party holds, in its own home, its
pseudonyms of the shared customers in one agreed order. The coordinator then asks both
parties, with two messages, to keep that order as their vertical alignment:

``query.vertical_align`` ``{step: "check"}``  -> has this party an earlier alignment with the peer?
``query.vertical_align`` ``{step: "save", use-earlier}`` -> keep the order (the earlier one if both have it)

An earlier alignment is kept so that a later job on the same homes cannot move earlier
training customers into the held-out set: both sides map the fresh order onto the one they
saved (the same permutation on both sides, since row i is the same customer on both), which
is only sound when *both* saved one, hence the check first. A different seed or a changed
set of shared customers is refused with what to do. The coordinator learns only yes/no and
the size; the alignment never leaves the home. The same code runs in process and deployed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedcustomer.errors import ConfigError, FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.relay import PSIServerView
from fedcustomer.psi.state import check_session_id, load_alignment
from fedcustomer.vertical.data import alignment_path, save_pseudonym_alignment

ACTION = "vertical_align"


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


def keep_alignment(
    grid: Grid,
    view: PSIServerView,
    sides: dict[int, tuple[str, str]],
    seed: int | None,
    timeout: float | None = None,
) -> int:
    """Ask both parties to keep the session's order; ``sides`` maps node -> (dataset, peer name)."""
    base = {n: {"dataset": d, "peer": p} for n, (d, p) in sides.items()}
    checks = _ask(grid, {n: c | {"step": "check"} for n, c in base.items()}, timeout)
    use_earlier = all(bool(m["earlier"]) for m in checks.values())
    extra: dict[str, Any] = {"step": "save", "session-id": view.session_id, "use-earlier": use_earlier}
    if seed is not None:
        extra["seed"] = int(seed)
    saved = _ask(grid, {n: c | extra for n, c in base.items()}, timeout)
    sizes = {int(m["size"]) for m in saved.values()}
    if len(sizes) != 1:
        raise FederationError("the parties kept alignments of different sizes; run the PSI again")
    return sizes.pop()


def align_handler_content(home: PartnerHome, cfg: dict[str, Any]) -> RecordDict:
    """The reply to one align message; a malformed one is a clear error, not a traceback."""
    try:
        return RecordDict({"metrics": MetricRecord(handle_align(home, cfg))})
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"malformed {ACTION} message ({type(exc).__name__}: {exc})") from None
