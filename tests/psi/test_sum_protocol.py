"""The intersection-sum between two partner nodes over Flower messages: the rate within its noise,
no id or value on the wire, refusals that cost nobody anything and leave no secret behind (tampering
with the signed chunks: tests/psi/test_sum_chunked.py)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.errors import FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget
from fedcustomer.psi import signing
from fedcustomer.psi.intersection_sum import MECHANISM, SumParams
from fedcustomer.psi.protocol import RECORD
from fedcustomer.psi.state import psi_dir
from fedcustomer.psi.sum_protocol import register_sum_handlers, run_sum_on_grid
from fedcustomer.server.inprocess import LocalGrid

IDS_BANK = [f"CU{i:05d}q" for i in range(160)]
IDS_SHOP = [f"cu{i:05d}q" for i in range(60, 220)]  # 100 shared, spelled differently
DATA = {
    "accounts": {"default": [1.0 if 60 <= i < 120 and i % 2 == 0 else 0.0 for i in range(160)]},
    "loyalty": {"top_segment": ["yes" if i < 120 else "no" for i in range(60, 220)]},
}
IDS = {"accounts": IDS_BANK, "loyalty": IDS_SHOP}
NAMES = {"name_a": "bank", "name_b": "shop"}
ARGS = ("accounts", "loyalty")
COLS = {"value": "default", "where": "top_segment"}


def load_column(home, dataset, column, batch=65_536):
    """(ids, cells) batches of at most ``batch`` rows, as a governed store's batched read gives them."""
    from fedcustomer.errors import DataError

    if column not in DATA[dataset]:
        raise DataError(f"dataset {dataset!r} has no column {column!r}")
    ids, cells = list(IDS[dataset]), list(DATA[dataset][column])
    return [(ids[i : i + batch], cells[i : i + batch]) for i in range(0, len(ids), batch)]


class RecordingGrid(LocalGrid):
    """A coordinator that records what it relays and may rewrite it (``meddle(message) -> message``)."""

    def __init__(self, app, meddle=None):
        super().__init__(app, 2)
        self.meddle = meddle or (lambda m: m)
        self.seen: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = [self.meddle(m) for m in messages]
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.seen += messages + replies
        return replies


@pytest.fixture
def nodes(tmp_path):
    homes = [
        PartnerHome.create(tmp_path / "bank", "bank", budget=DatasetBudget(10.0, 1e-5)),
        PartnerHome.create(tmp_path / "shop", "shop", budget=DatasetBudget(10.0, 1e-5)),
    ]
    pubs = [signing.ensure_link_key(h) for h in homes]
    signing.pin_peer(homes[0], "shop", pubs[1])
    signing.pin_peer(homes[1], "bank", pubs[0])
    app = ClientApp()
    register_sum_handlers(app, lambda ctx: homes[int(ctx.node_config["partition-id"])], load_column)
    return homes, app


def _charges(homes):
    return [[c.charge_key for c in h.ledger(d).charges()] for h, d in zip(homes, ARGS, strict=True)]


def _left(home):
    """What a partner keeps of its sessions (its released results, ``sums/``, aside)."""
    return (
        sorted(p.name for p in psi_dir(home).iterdir() if p.name != "sums") if psi_dir(home).exists() else []
    )


def test_the_rate_comes_back_within_its_noise_and_both_pay_once(nodes):
    homes, app = nodes
    grid = RecordingGrid(app)
    view = run_sum_on_grid(grid, 1, 2, *ARGS, **COLS, **NAMES, params=SumParams(4.0), run_id="r1")
    # 60 shared customers in the top segment, 30 of them defaulted: rate 0.5
    assert abs(view.noisy_count - 60) <= 6 and view.rate is not None and abs(view.rate - 0.5) < 0.25
    assert (view.set_size_a, view.set_size_b) == (160, 160)
    for home, dataset in zip(homes, ARGS, strict=True):
        charges = [c for c in home.ledger(dataset).charges() if c.mechanism == MECHANISM]
        assert len(charges) == 1 and charges[0].epsilon == pytest.approx(4.0) and charges[0].run_id == "r1"
        assert _left(home) == []  # the secrets are gone with the session
    wire = b"".join(
        v if isinstance(v, bytes) else str(v).encode()
        for m in grid.seen
        if m.has_content()
        for v in dict(m.content[RECORD]).values()
    )
    for raw in IDS_BANK + IDS_SHOP:
        assert raw.encode() not in wire and raw.upper().encode() not in wire


def test_exhausted_budget_or_unknown_column_stops_at_open_and_charges_nobody(nodes):
    homes, app = nodes
    config = homes[1].config()
    config.budget = DatasetBudget(0.5, 1e-5)  # the retailer cannot pay 1
    homes[1].write_config(config)
    with pytest.raises(FederationError, match="would bring epsilon"):
        run_sum_on_grid(RecordingGrid(app), 1, 2, *ARGS, **COLS, **NAMES, params=SumParams(1.0))
    config.budget = DatasetBudget(10.0, 1e-5)
    homes[1].write_config(config)
    with pytest.raises(FederationError, match="no column 'segment'"):
        run_sum_on_grid(RecordingGrid(app), 1, 2, *ARGS, value="default", where="segment", **NAMES,
                        params=SumParams(1.0))  # fmt: skip
    assert _charges(homes) == [[], []]
    assert [_left(h) for h in homes] == [[], []]


def test_an_abandoned_session_loses_its_secrets_when_the_next_one_opens(nodes):
    import json

    from fedcustomer.psi.protocol import PartyLimits
    from fedcustomer.psi.sum_protocol import handle_open

    homes, _ = nodes
    cfg = {"session-id": "old", "dataset": "accounts", "role": "value", "column": "default", "peer": "shop",
           "epsilon": 1.0, "value-max": 1.0}  # fmt: skip
    handle_open(homes[0], cfg, load_column, PartyLimits(session_ttl_s=60), now=1000.0)
    assert _left(homes[0]) == ["old.party.json", "old.work"]
    state = json.loads((psi_dir(homes[0]) / "old.party.json").read_text())
    assert "secret" in state["party"] and "p" in state["paillier"]  # secrets, 0600, until the session goes
    legacy = psi_dir(homes[0]) / "older.sum.json"  # a session of the one-message protocol
    legacy.write_text(json.dumps({"started_at": 900.0}))
    handle_open(homes[0], cfg | {"session-id": "new"}, load_column, PartyLimits(session_ttl_s=60), now=1100.0)
    assert _left(homes[0]) == ["new.party.json", "new.work"]
