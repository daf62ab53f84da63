"""The two parties of a vertical job in one process: their Flower app and their PSI alignment.

Each side ends a PSI with its own pseudonyms of the shared customers in one agreed order;
a later job on the same homes keeps the first job's order, so held-out customers stay held out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp

from fedcustomer.clients.context import resolve_home
from fedcustomer.clients.linkage import register_governed_psi_handlers
from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.protocol import run_psi_on_grid
from fedcustomer.psi.state import load_alignment
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.data import (
    PartyPlan,
    alignment_path,
    save_pseudonym_alignment,
)
from fedcustomer.vertical.protocol import register_vertical_handlers


def align_by_psi(
    home_a: PartnerHome, plan_a: PartyPlan, home_b: PartnerHome, plan_b: PartyPlan, seed: int | None = None
) -> int:
    """Run the PSI as Flower messages through the coordinator and keep each side's alignment.

    The same exchange a deployment runs (:mod:`fedcustomer.psi.protocol`): each
    party reads its ids through its governed store (``record_linkage``), the coordinator
    relays blinded values only, and each side ends with its own pseudonyms of the shared
    customers in one agreed order.

    The held-out split is drawn over that order with the job's seed, and every PSI run
    agrees on a fresh order. So that a later job on the same homes cannot move earlier
    training customers into the held-out set, an earlier alignment is kept: each side maps
    the new order onto the one it saved (the same permutation on both sides, since row i
    is the same customer on both), and a different seed or a changed set of shared
    customers is refused with what to do.
    """
    grid = LocalGrid(party_app([str(home_a.root), str(home_b.root)]), num_nodes=2)
    node_a, node_b = grid.get_node_ids()
    view = run_psi_on_grid(
        grid,
        node_a,
        node_b,
        plan_a.dataset,
        plan_b.dataset,
        name_a=home_a.config().name,
        name_b=home_b.config().name,
    )
    fresh = {"a": load_alignment(home_a, view.session_id), "b": load_alignment(home_b, view.session_id)}
    sides = {"a": (home_a, plan_a, plan_b.name), "b": (home_b, plan_b, plan_a.name)}
    earlier = {
        k: _saved_alignment(alignment_path(h, plan.dataset, peer)) for k, (h, plan, peer) in sides.items()
    }
    if all(earlier.values()):
        orders = {k: _onto_earlier(fresh[k], earlier[k], home_a.root.parent, seed) for k in sides}  # type: ignore[arg-type]
        fresh = orders
    for k, (home, plan, peer) in sides.items():
        save_pseudonym_alignment(home, plan.dataset, peer, fresh[k], seed=seed)
    return view.intersection_size


def _saved_alignment(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _onto_earlier(new: list[str], saved: dict[str, Any], homes: Path, seed: int | None) -> list[str]:
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


def party_app(homes: list[str]) -> ClientApp:
    """The two parties' side of a vertical job in process: PSI and vertical messages, nothing else."""
    app = ClientApp()

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)
    return app
