"""The partner's side of record linkage: PSI handlers that read ids only through the governed store.

Both the full ClientApp and the vertical job's in-process parties answer PSI messages the
same way: the ids come from ``PartnerDataAccess.linkage_ids`` (purpose ``record_linkage``,
audited), and the aligned customers are kept as pseudonyms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context
from flwr.clientapp import ClientApp

from fedcustomer.clients.data_access import PartnerDataAccess
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.protocol import register_psi_handlers
from fedcustomer.psi.sum_protocol import register_sum_handlers


def show_psi_progress() -> None:
    """The partner's per-chunk PSI lines (counts only, never a value) in its node's log, beside Flower's."""
    logger = logging.getLogger("fedcustomer.psi.chunked")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers:  # nothing prints INFO lines yet: Flower's console handler does
        for handler in logging.getLogger("flwr").handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def register_governed_psi_handlers(app: ClientApp, home_of: Callable[[Context], PartnerHome]) -> None:
    """Answer the PSI (and intersection-sum) message types on ``app`` for the partner ``home_of(context)`` names."""
    show_psi_progress()
    register_psi_handlers(
        app,
        home_of,
        lambda home, dataset: PartnerDataAccess(home).linkage_ids(dataset),
        local_labels=lambda home, dataset, ids: PartnerDataAccess(home).pseudonyms(ids),
    )
    register_sum_handlers(
        app,
        home_of,
        lambda home, dataset, column, batch: PartnerDataAccess(home).linkage_column_batches(
            dataset, column, batch
        ),
    )
