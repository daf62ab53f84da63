"""The two parties of a vertical job in one process: their Flower app and their PSI alignment.

Each side ends a PSI with its own pseudonyms of the shared customers in one agreed order;
a later job on the same homes keeps the first job's order, so held-out customers stay held out
(:mod:`fedcustomer.vertical.align`).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedcustomer.clients.anchor_mod import anchor_mod
from fedcustomer.clients.context import resolve_home
from fedcustomer.clients.linkage import register_governed_psi_handlers
from fedcustomer.clients.packed_mod import packed_mod
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.chunked import DEFAULT_CHUNK_SIZE
from fedcustomer.psi.relay import run_psi_on_grid
from fedcustomer.psi.signing import ensure_link_key, pin_peer, pinned_key
from fedcustomer.server.anchor_grid import AnchorGrid, AnchorLog
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.align import (
    CheckRidingGrid,
    PendingAlignment,
    align_check_mod,
    check_alignments,
    keep_alignment,
)
from fedcustomer.vertical.data import PartyPlan
from fedcustomer.vertical.protocol import register_vertical_handlers


def align_by_psi(
    home_a: PartnerHome,
    plan_a: PartyPlan,
    home_b: PartnerHome,
    plan_b: PartyPlan,
    seed: int | None = None,
    anchors: AnchorLog | None = None,
    *,
    with_setup: bool = False,
) -> tuple[int, PendingAlignment | None]:
    """Run the PSI as Flower messages through the coordinator; each side keeps its alignment.

    The same exchange a deployment runs (:func:`psi_for_alignment`) on the in-process grid; with
    ``anchors`` the parties' audit anchors in the replies are recorded there. With ``with_setup``
    the order is left for the parties' setup to keep, as deployed, and returned; otherwise it is
    kept here (None returned with the size).
    """
    grid: Grid = LocalGrid(party_app([str(home_a.root), str(home_b.root)]), num_nodes=2)
    if anchors is not None:
        grid = AnchorGrid(grid, anchors)
    node_a, node_b = grid.get_node_ids()
    pending = psi_for_alignment(grid, {plan_a.name: node_a, plan_b.name: node_b}, plan_a, plan_b, seed=seed)
    if with_setup and pending.ride:
        return pending.size, pending
    return keep_alignment(grid, pending), None


def psi_for_alignment(
    grid: Grid,
    nodes: dict[str, int],
    plan_a: PartyPlan,
    plan_b: PartyPlan,
    *,
    seed: int | None = None,
    timeout: float | None = None,
    session_id: str | None = None,
    run_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[str], None] | None = None,
) -> PendingAlignment:
    """PSI between the two parties' nodes, their alignment checks riding on its last message; the order to keep.

    Each party reads its ids through its governed store (``record_linkage``), the coordinator
    relays blinded values only, and each side ends with its own pseudonyms of the shared
    customers in one agreed order (an earlier order is kept, see :mod:`.align`). The caller has
    both parties keep it, with their setup when ``ride`` (both answered the riding check) or with
    :func:`~fedcustomer.vertical.align.keep_alignment`.
    """
    node_a, node_b = nodes[plan_a.name], nodes[plan_b.name]
    sides = {node_a: (plan_a.dataset, plan_b.name), node_b: (plan_b.dataset, plan_a.name)}
    riding = CheckRidingGrid(grid, sides)
    view = run_psi_on_grid(
        riding,
        node_a,
        node_b,
        plan_a.dataset,
        plan_b.dataset,
        name_a=plan_a.name,
        name_b=plan_b.name,
        timeout=timeout,
        session_id=session_id,
        run_id=run_id,
        chunk_size=chunk_size,
        progress=progress,
    )
    use_earlier = check_alignments(grid, sides, riding.earlier, timeout)
    ride = set(riding.earlier) == set(sides)
    names = {node_a: plan_a.name, node_b: plan_b.name}
    return PendingAlignment(
        view.session_id, sides, names, seed, use_earlier, view.intersection_size, ride=ride
    )


def pin_each_other(home_a: PartnerHome, home_b: PartnerHome) -> None:
    """One operator holds both homes (one machine): each pins the other's link key, so the PSI is signed."""
    pub_a, pub_b = ensure_link_key(home_a), ensure_link_key(home_b)
    name_a, name_b = home_a.config().name, home_b.config().name
    if pinned_key(home_a, name_b) is None:
        pin_peer(home_a, name_b, pub_b)
    if pinned_key(home_b, name_a) is None:
        pin_peer(home_b, name_a, pub_a)


def party_app(homes: list[str]) -> ClientApp:
    """The two parties' side of a vertical job in process: PSI and vertical messages, nothing else."""

    def home_of(context: Context) -> PartnerHome:
        return resolve_home(context, homes)

    # packed messages answered packed, as deployed; every reply carries the party's audit anchor
    # alignment checks riding on PSI messages answered innermost, after the PSI step
    app = ClientApp(mods=[packed_mod, anchor_mod(home_of), align_check_mod(home_of)])
    register_vertical_handlers(app, home_of)
    register_governed_psi_handlers(app, home_of)
    return app
