"""Shared set-up for vertical tests: two provisioned parties with a PSI alignment."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Message

from fedcustomer.data.synthetic import generate_federation
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.vertical.data import plan_parties, private_intersection, provision_party, save_alignment
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.party import forget_sessions

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_sessions():
    forget_sessions()
    yield
    forget_sessions()


def retail_signal_frames(n: int = 1200, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Bank and retailer tables where default is driven mostly by retail behaviour."""
    fed = generate_federation(
        1, 1, customers_per_bank=n, customers_per_retailer=n, shared_fraction=0.9, missing_rate=0.0, seed=seed
    )
    bank = pd.concat([fed.banks[0].train, fed.banks[0].test], ignore_index=True)
    retail = pd.concat([fed.retailers[0].train, fed.retailers[0].test], ignore_index=True)
    r = retail.set_index("customer_id")
    score = np.log1p(r["monetary_12m"]) / 2 + 2.5 * r["returns_rate"] - np.log1p(r["web_sessions_30d"]) / 2
    score = (score - score.mean()) / score.std()
    rng = np.random.default_rng(seed)
    s = bank["customer_id"].map(score).to_numpy(dtype=float, copy=True)
    known = ~np.isnan(s)
    s[~known] = rng.normal(size=(~known).sum())
    bank["defaulted"] = (s + rng.normal(0, 0.4, len(s)) > 0.8).astype(int)
    return {"bank": bank, "retailer": retail}


class RecordingGrid(LocalGrid):
    """The in-process grid, keeping every (message, reply) pair for inspection."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[Message, list[Message]]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.log.append((messages[0], replies))
        return replies


def setup_parties(
    root: Path, job: VerticalJob, frames: dict[str, pd.DataFrame]
) -> tuple[PartnerHome, PartnerHome, int]:
    active, passive = plan_parties(job)
    budget = DatasetBudget(job.epsilon, job.delta)
    homes = {p.name: provision_party(root / p.name, p, frames[p.name], budget) for p in (active, passive)}
    ids = {p.name: frames[p.name][p.spec.id_column].astype(str).tolist() for p in (active, passive)}
    la, lp, size = private_intersection(ids[active.name], ids[passive.name])
    save_alignment(homes[active.name], active.dataset, passive.name, la)
    save_alignment(homes[passive.name], passive.dataset, active.name, lp)
    return homes[active.name], homes[passive.name], size


def grid_for(homes: list[PartnerHome], **kwargs) -> RecordingGrid:
    return RecordingGrid(party_app([str(h.root) for h in homes]), num_nodes=len(homes), **kwargs)


def pinned_party_homes(root: Path, customers: int, seed: int) -> tuple[PartnerHome, PartnerHome]:
    """A bank and a retailer home, as deployed (keys, 8.0 epsilon each), each pinning the other's keys."""
    from fedcustomer.deploy.two_party import prepare_party_home
    from fedcustomer.vertical.parties import pin_each_other

    bank = prepare_party_home(root / "bank", "bank", customers=customers, seed=seed, epsilon=8.0)
    retail = prepare_party_home(root / "retailer", "retailer", customers=customers, seed=seed, epsilon=8.0)
    pin_each_other(bank, retail)
    return bank, retail
