"""The governed store's test actors, fixtures and helpers, shared by the store's test modules."""

from __future__ import annotations

import pytest

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from tests.data.test_ingest import bank_frame

ADMIN = Actor("alice", "partner_admin")


MARKETING = Actor("mia", "marketing_analyst")


RISK = Actor("rick", "risk_officer")


COMPLIANCE = Actor("carol", "compliance_officer")


TRAINING = Actor("node:bank_a", "training_pipeline")


CORE = ["customer_id", "national_id", "full_name", "phone"]


@pytest.fixture()
def bank():
    return load_bundled("bank")


@pytest.fixture()
def home(tmp_path):
    return PartnerHome(tmp_path / "home")


@pytest.fixture()
def store(home):
    s = PartnerStore.init(home, "bank_a")
    yield s
    s.close()


def write_csv(tmp_path, frame, name="bank.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def audit_entries(store, **query):
    return store.audit.query(**query)


def logical_dump(home):
    """Every table's rows, for comparing the store before and after a failed operation (the audit
    log's recorded reach excepted: failed attempts are audited too, so it moves)."""
    import sqlite3

    con = sqlite3.connect(home.store_path)
    try:
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            if r[0] != "audit_reach"
        ]
        return {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    finally:
        con.close()


def home_bytes(store):
    """The raw bytes of store.db and of its -wal and -shm files (WAL mode keeps older pages in -wal)."""
    path = store.home.store_path
    files = [path] + [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


@pytest.fixture()
def loaded(tmp_path, store, bank):
    frame = bank_frame(30)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    frame.index = store.pseudonymizer.pseudonyms(frame["customer_id"])
    return store, frame


def _approve_core(store):
    rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
    StoreApprovals(store).approve(ADMIN, rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
