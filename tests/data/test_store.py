"""The governed store: ingest, policy-checked reads, approvals, key rotation, erasure, key checks."""

import shutil
from datetime import timedelta

import pandas as pd
import pytest

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.erasure import erase_customer
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_ingest import ChunkWriter
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, KeyMaterialError, SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.crypto.cipher import FieldCipher
from fedcustomer.privacy.crypto.keyring import FileKeyRing, WrappedKey, data_key_context
from tests.data.test_ingest import bank_frame, plant_bad_rows

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


# --- ingest -------------------------------------------------------------------------------


def test_ingest_quarantines_exactly_the_planted_rows_with_reasons(tmp_path, store, bank):
    frame, expected = plant_bad_rows(bank_frame(40))
    report = store.ingest(ADMIN, bank, write_csv(tmp_path, frame), chunk_rows=16)
    assert report.read == 40 and report.invalid == 5 and report.inserted == 35
    assert store.count("bank") == 35
    quarantined = store.quarantine_summary("bank")
    pseudo = store.pseudonymizer.pseudonym
    assert {q["pseudonym"]: q["reasons"] for q in quarantined} == {
        pseudo(cid): r for cid, r in expected.items()
    }
    assert sorted(q["row"] for q in quarantined) == [0, 1, 2, 3, 4]
    # The quarantined raw rows (with their core values) are stored encrypted only.
    raw = home_bytes(store)
    assert frame.at[0, "national_id"].encode() not in raw
    assert b"a lot" not in raw


def home_bytes(store):
    return store.home.store_path.read_bytes()


def test_raw_ids_and_core_values_never_stored_in_clear(tmp_path, store, bank):
    frame = bank_frame(30)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    raw = home_bytes(store)
    for col in CORE:
        for value in frame[col].astype(str):
            assert value.encode() not in raw, col
    # Public and sensitive values are sealed too (under each customer's data key), so every
    # column of a customer's row other than its pseudonym and ingest number is ciphertext.
    for row in store.backend.fetchall('SELECT * FROM "c_bank"'):
        assert all(isinstance(v, bytes) for v in row[2:]) and isinstance(row[1], int)


def test_duplicates_merged_newest_wins_and_recorded_by_pseudonym(tmp_path, store, bank):
    frame = bank_frame(10)
    newer = frame.iloc[[2]].assign(updated_at="2025-06-01T00:00:00Z", income=77700.0)
    older = frame.iloc[[2]].assign(updated_at="2019-06-01T00:00:00Z", income=11100.0)
    path = write_csv(tmp_path, pd.concat([older, frame, newer], ignore_index=True))
    report = store.ingest(ADMIN, bank, path, chunk_rows=4)  # duplicates land in different chunks
    assert report.inserted == 10 and report.duplicates == 2 and store.count("bank") == 10
    p = store.pseudonymizer.pseudonym(frame.at[2, "customer_id"])
    got = store.read(Actor("dana", "data_scientist"), "analytics", ["income"], dataset="bank")
    assert got.loc[p, "income"] == 77700.0
    merged = [m for m in store.merges("bank") if m["pseudonym"] == p]
    assert len(merged) == 2 and all(m["outcome"] == "duplicate_in_file" for m in merged)
    # A later file with an older record keeps the stored newer one; a newer one replaces it.
    stale = write_csv(
        tmp_path, frame.iloc[[2]].assign(updated_at="2020-01-01T00:00:00Z", income=1.0), "old.csv"
    )
    assert store.ingest(ADMIN, bank, stale).stale == 1
    fresh = write_csv(
        tmp_path, frame.iloc[[2]].assign(updated_at="2026-01-01T00:00:00Z", income=2.0), "new.csv"
    )
    assert store.ingest(ADMIN, bank, fresh).updated == 1
    got = store.read(Actor("dana", "data_scientist"), "analytics", ["income"], dataset="bank")
    assert got.loc[p, "income"] == 2.0


def test_reingest_adds_nothing(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(20))
    path = write_csv(tmp_path, frame)
    store.ingest(ADMIN, bank, path)
    before = logical_dump(store.home)
    again = store.ingest(ADMIN, bank, path)
    assert again.skipped_file and again.inserted == 0
    # Same rows in a different file: every row unchanged, quarantine not duplicated.
    copy = write_csv(tmp_path, pd.concat([frame, frame.iloc[[7]]]), "copy.csv")
    third = store.ingest(ADMIN, bank, copy)
    assert third.unchanged == 15 and third.inserted == third.updated == 0 and third.duplicates == 1
    after = logical_dump(store.home)
    for table in ("c_bank", "data_keys", "quarantine"):
        assert after[table] == before[table]
    assert len(store.ingest_history("bank")) == 2


def test_failure_half_way_leaves_store_unchanged(tmp_path, store, bank, monkeypatch):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(20), "first.csv"))
    before = logical_dump(store.home)
    counts = (store.count("bank"), len(store.ingest_history()), len(store.quarantine_summary()))
    original = ChunkWriter.write
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChunkWriter, "write", failing)
    frame, _ = plant_bad_rows(bank_frame(60, seed=9))
    frame["customer_id"] = [f"N{i:07d}" for i in range(60)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.ingest(ADMIN, bank, write_csv(tmp_path, frame, "second.csv"), chunk_rows=20)
    assert calls["n"] == 2
    assert logical_dump(store.home) == before
    assert (store.count("bank"), len(store.ingest_history()), len(store.quarantine_summary())) == counts


def test_failed_first_ingest_leaves_no_dataset(tmp_path, store, bank, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ChunkWriter, "write", boom)
    with pytest.raises(RuntimeError):
        store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(5)))
    assert store.datasets() == []


def test_missing_column_is_a_schema_error_and_changes_nothing(tmp_path, store, bank):
    path = write_csv(tmp_path, bank_frame(5).drop(columns=["phone"]))
    with pytest.raises(SchemaError, match="phone"):
        store.ingest(ADMIN, bank, path)
    assert store.datasets() == [] and store.ingest_history() == []


def test_parquet_ingest(tmp_path, store, bank):
    frame = bank_frame(15)
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True)
    path = tmp_path / "bank.parquet"
    frame.to_parquet(path, index=False)
    assert store.ingest(ADMIN, bank, path).inserted == 15


def test_structural_schema_change_refused(tmp_path, store, bank):
    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(3)))
    from fedcustomer.data.schema import replace_field

    with pytest.raises(SchemaError, match="already stored with different"):
        store.register_schema(replace_field(bank, "income", tier="public"))
    store.register_schema(replace_field(bank, "income", masking="redact"))  # non-structural: accepted
    assert store.schema("bank").field("income").masking == "redact"


def test_re_ingesting_the_same_file_under_a_changed_tier_is_refused_not_skipped(tmp_path, store, bank):
    # A user who makes a field public after the first ingest and loads the same file again must not be
    # told "already ingested, nothing added" as if the change had applied (found by a new-user trial).
    from fedcustomer.data.schema import replace_field

    path = write_csv(tmp_path, bank_frame(3))
    store.ingest(ADMIN, bank, path)
    assert store.ingest(ADMIN, bank, path).skipped_file
    with pytest.raises(
        SchemaError, match=r"\(income: tier sensitive -> public\); a structural change needs a new"
    ):
        store.ingest(ADMIN, replace_field(bank, "income", tier="public"), path)
    assert store.schema("bank").field("income").tier == "sensitive"
    failed = audit_entries(store, action="ingest", decision="denied")
    assert failed and "income: tier sensitive -> public" in failed[-1].reason


# --- reads ---------------------------------------------------------------------------------


@pytest.fixture()
def loaded(tmp_path, store, bank):
    frame = bank_frame(30)
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    frame.index = store.pseudonymizer.pseudonyms(frame["customer_id"])
    return store, frame


def test_training_pipeline_reads_features_with_numeric_dtypes(loaded):
    store, frame = loaded
    fields = ["age", "income", "utilisation", "num_late_payments", "region", "defaulted"]
    got = store.read(TRAINING, "training", fields, dataset="bank")
    assert list(got.columns) == fields and len(got) == 30
    assert (
        got["age"].dtype == "int64" and got["income"].dtype == "float64" and got["defaulted"].dtype == "int64"
    )
    assert (got["income"] == frame.loc[got.index, "income"]).all()
    entries = audit_entries(store, action="read")
    assert (
        entries[-1].actor == "node:bank_a"
        and entries[-1].row_count == 30
        and entries[-1].decision == "allowed"
    )


def test_training_pipeline_is_denied_ids_and_core(loaded):
    store, _ = loaded
    for fields in (["age", "customer_id"], ["updated_at"], ["national_id"]):
        with pytest.raises(AccessDenied):
            store.read(TRAINING, "training", fields)
    # fields=None: just what it may see (features and labels, public or sensitive).
    got = store.read(TRAINING, "training")
    assert not set(got.columns) & set(CORE) and "updated_at" not in got.columns and "defaulted" in got.columns
    assert len(audit_entries(store, actor="node:bank_a", decision="denied")) == 3


def test_marketing_read_masks_sensitive_hides_core_and_is_logged(loaded):
    store, frame = loaded
    got = store.read(MARKETING, "marketing")
    assert not set(got.columns) & set(CORE)
    assert (got["region"] == frame.loc[got.index, "region"]).all()  # public: clear
    assert (got["income"] % 10000 == 0).all()  # bucket:10000
    assert (got["income"] <= frame.loc[got.index, "income"]).all()
    assert set(got["defaulted"]) == {"***"}
    entry = audit_entries(store, actor="mia")[-1]
    assert entry.action == "read" and entry.decision == "allowed" and entry.purpose == "marketing"
    assert entry.tier == "sensitive" and entry.row_count == 30 and "national_id" not in entry.fields
    with pytest.raises(AccessDenied, match="national_id"):
        store.read(MARKETING, "marketing", ["region", "national_id"])
    denied = audit_entries(store, actor="mia", decision="denied")[-1]
    assert "national_id" in denied.fields and denied.tier == "core"


def test_unapproved_risk_officer_core_read_is_denied_and_logged(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied, match="two approvals"):
        store.read(RISK, "risk_review", ["full_name", "income"])
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.decision == "denied" and entry.tier == "core" and "full_name" in entry.fields
    # Without naming fields, the officer gets public and sensitive fields only.
    got = store.read(RISK, "risk_review")
    assert not set(got.columns) & set(CORE) and "income" in got.columns


def test_risk_officer_with_two_distinct_approvals_reads_core_in_clear(loaded):
    store, frame = loaded
    rid = StoreApprovals(store).request(
        RISK, "bank", ["full_name", "national_id"], "risk_review", timedelta(hours=1)
    )
    assert StoreApprovals(store).approve(ADMIN, rid) is None
    with pytest.raises(AccessDenied):  # one approval is not enough
        store.read(RISK, "risk_review", ["full_name"])
    with pytest.raises(AccessDenied):  # same approver twice
        StoreApprovals(store).approve(ADMIN, rid)
    with pytest.raises(AccessDenied):  # self-approval
        StoreApprovals(store).approve(Actor("rick", "compliance_officer"), rid)
    approval = StoreApprovals(store).approve(COMPLIANCE, rid)
    assert approval is not None and set(approval.approvers) == {"alice", "carol"}
    got = store.read(RISK, "risk_review", ["full_name", "national_id", "region"], where={"region": "north"})
    expected = frame[frame["region"] == "north"]
    assert sorted(got.index) == sorted(expected.index)
    assert (got["full_name"] == expected.loc[got.index, "full_name"]).all()
    assert (got["national_id"] == expected.loc[got.index, "national_id"]).all()
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.action == "decrypt" and entry.approvals == (rid,) and entry.tier == "core"
    assert set(entry.pseudonyms) == set(got.index)
    # The approval covers only the requested fields.
    with pytest.raises(AccessDenied):
        store.read(RISK, "risk_review", ["phone"])
    denied_approvals = audit_entries(store, action="approve", decision="denied")
    assert len(denied_approvals) == 2


def test_compliance_officer_reads_no_customer_data(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied):
        store.read(COMPLIANCE, "audit")
    assert audit_entries(store, actor="carol", decision="denied")


def test_where_only_on_public_fields(loaded):
    store, frame = loaded
    got = store.read(TRAINING, "training", ["age"], where={"region": ["north", "south"]})
    assert len(got) == frame["region"].isin(["north", "south"]).sum()
    with pytest.raises(AccessDenied, match="filters"):
        store.read(TRAINING, "training", ["age"], where={"income": 100})
    with pytest.raises(SchemaError):
        store.read(TRAINING, "training", ["age", "nope"])
    assert len(audit_entries(store, actor="node:bank_a", decision="denied")) == 2


MIXED_CASE_SCHEMA = """dataset: towns
fields:
  - {name: customer_id, type: string, tier: core, role: id}
  - {name: town, type: string, tier: public}
  - {name: segment, type: category, tier: public, validation: {allowed: [Retail, SME]}}
  - {name: visits, type: integer, tier: public}
"""


def test_where_on_text_ignores_case_and_on_numbers_matches_the_value(tmp_path, store):
    from fedcustomer.data.schema import Schema

    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B", "C", "D", "E"],
            "town": ["North", "north", "NORTH", "South", "Nörth"],
            "segment": ["Retail", "SME", "Retail", "SME", "Retail"],
            "visits": [5, 5, 7, 5, 1],
        }
    )
    store.ingest(ADMIN, Schema.from_yaml(MIXED_CASE_SCHEMA), write_csv(tmp_path, frame, "towns.csv"))
    ids = dict(zip(store.pseudonymizer.pseudonyms(frame["customer_id"]), frame["customer_id"], strict=True))

    def who(where):
        return sorted(ids[p] for p in store.read(TRAINING, "training", ["visits"], where=where).index)

    assert who({"town": "north"}) == who({"town": "NORTH"}) == ["A", "B", "C"]  # not "Nörth"
    assert who({"town": ["north", "south"]}) == ["A", "B", "C", "D"]
    assert who({"segment": "retail"}) == ["A", "C", "E"]  # a category value in the schema's own spelling
    assert who({"town": "North", "segment": "sme"}) == ["B"]
    assert who({"visits": "5.0"}) == ["A", "B", "D"]  # numbers by value


def test_read_with_an_unknown_approval_id_says_it_does_not_exist(loaded):
    store, _ = loaded
    with pytest.raises(AccessDenied) as info:
        store.read(RISK, "risk_review", ["full_name"], approval_id="no-such-id")
    message = str(info.value)
    assert "no approval request with that id exists in this home" in message
    assert "approvals list" in message and "no-such-id" in message
    entry = audit_entries(store, actor="rick")[-1]
    assert entry.decision == "denied" and "no approval request" in entry.reason


def test_read_with_an_approval_that_does_not_apply_says_why(loaded):
    store, _ = loaded
    rid = StoreApprovals(store).request(RISK, "bank", ["full_name"], "risk_review", timedelta(hours=1))
    StoreApprovals(store).approve(ADMIN, rid)
    with pytest.raises(AccessDenied, match=f"approval {rid} has 1 of 2 approvals"):
        store.read(RISK, "risk_review", ["full_name"], approval_id=rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
    assert len(store.read(RISK, "risk_review", ["full_name"], approval_id=rid)) == 30
    with pytest.raises(AccessDenied, match=f"approval {rid} covers full_name only"):
        store.read(RISK, "risk_review", ["phone"], approval_id=rid)
    other = Actor("rita", "risk_officer")
    with pytest.raises(AccessDenied, match=f"approval {rid} was requested by someone else"):
        store.read(other, "risk_review", ["full_name"], approval_id=rid)


def test_read_names_which_of_two_complete_approvals_it_uses(loaded):
    """The id given is the approval used, even when another (expiring later) also covers the read."""
    store, _ = loaded
    ids = []
    for hours in (1, 4):
        rid = StoreApprovals(store).request(
            RISK, "bank", ["full_name"], "risk_review", timedelta(hours=hours)
        )
        StoreApprovals(store).approve(ADMIN, rid)
        StoreApprovals(store).approve(COMPLIANCE, rid)
        ids.append(rid)
    for rid in ids:
        assert len(store.read(RISK, "risk_review", ["full_name"], approval_id=rid)) == 30
        assert audit_entries(store, actor="rick")[-1].approvals == (rid,)


def test_read_for_an_unknown_purpose_names_the_known_ones(loaded):
    store, _ = loaded
    with pytest.raises(
        AccessDenied,
        match="unknown purpose 'marketting' \\(one of training, evaluation, analytics, marketing",
    ):
        store.read(MARKETING, "marketting")


def test_keys_list_counts_customers_keys_apart_from_the_stores_own_key_check(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(12))
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    (version,) = KeyAdmin(store).versions()
    assert (version["customer_keys"], version["quarantined_rows"], version["key_check"]) == (7, 5, 1)
    assert store.count("bank") == version["customer_keys"]
    assert version["wrapped_keys"] == 13 == KeyAdmin(store).usage()[1]  # what `keys retire` checks


def test_unknown_dataset_and_several_datasets(tmp_path, loaded):
    store, _ = loaded
    with pytest.raises(ConfigError, match="no dataset 'shop'"):
        store.read(TRAINING, "training", dataset="shop")
    from fedcustomer.data.schema import Schema

    other = Schema.from_yaml(load_bundled("bank").to_yaml().replace("dataset: bank", "dataset: bank2"))
    store.ingest(ADMIN, other, write_csv(tmp_path, bank_frame(3), "b2.csv"))
    with pytest.raises(ConfigError, match="several datasets"):
        store.read(TRAINING, "training")


# --- admin actions --------------------------------------------------------------------------


def test_admin_actions_need_permission_and_denials_are_logged(tmp_path, loaded, bank):
    store, frame = loaded
    with pytest.raises(AccessDenied):
        store.ingest(MARKETING, bank, write_csv(tmp_path, bank_frame(3, seed=5), "x.csv"))
    with pytest.raises(AccessDenied):
        erase_customer(store, MARKETING, frame["customer_id"].iloc[0])
    with pytest.raises(AccessDenied):
        KeyAdmin(store).rotate(RISK)
    with pytest.raises(AccessDenied):
        KeyAdmin(store).retire(RISK, 1)
    denied = audit_entries(store, decision="denied")
    assert {e.action for e in denied} >= {"ingest", "erase", "key_rotate", "key_retire"}
    assert store.count("bank") == 30 and [k["version"] for k in KeyAdmin(store).versions()] == [1]
    # The raw id of the customer someone tried to erase is not in the log.
    log_text = "".join(p.read_text() for p in store.home.audit_dir.glob("*.jsonl"))
    assert frame["customer_id"].iloc[0] not in log_text


def test_key_rotation_keeps_every_record_and_old_version_can_then_retire(loaded):
    store, _ = loaded
    rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
    StoreApprovals(store).approve(ADMIN, rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
    before = store.read(RISK, "risk_review", CORE + ["income"])
    with pytest.raises(KeyMaterialError, match="still wraps"):
        KeyAdmin(store).retire(ADMIN, 1)
    result = KeyAdmin(store).rotate(ADMIN)
    assert result["active_version"] == 2 and result["by_table"]["data_keys"] == 30
    assert KeyAdmin(store).usage() == {2: 31}  # 30 customers + the key check
    KeyAdmin(store).retire(ADMIN, 1)
    assert {k["version"]: k["status"] for k in KeyAdmin(store).versions()} == {1: "retired", 2: "active"}
    after = store.read(RISK, "risk_review", CORE + ["income"])
    pd.testing.assert_frame_equal(before, after)
    # Reopening with the rotated keyring works (the key check was re-wrapped too).
    home = store.home
    store.close()
    with PartnerStore.open(home) as reopened:
        assert reopened.count("bank") == 30
        assert {e.action for e in reopened.audit.query()} >= {"key_rotate", "key_retire"}
        assert reopened.audit.verify().ok  # every entry the store wrote chains and verifies


def test_erased_customer_is_unrecoverable(tmp_path, store, bank):
    frame, _ = plant_bad_rows(bank_frame(10))
    store.ingest(ADMIN, bank, write_csv(tmp_path, frame))
    victim = frame.at[6, "customer_id"]
    quarantined_victim = frame.at[1, "customer_id"]  # also has a quarantined row
    p = store.pseudonymizer.pseudonym(victim)
    tokens = store.backend.fetchone('SELECT national_id, full_name FROM "c_bank" WHERE pseudonym = ?', (p,))
    wrapped = store.backend.fetchone("SELECT kek_version, blob FROM data_keys WHERE pseudonym = ?", (p,))
    result = erase_customer(store, ADMIN, victim)
    assert result["found"] and result["datasets"] == {"bank": 1} and result["data_keys"] == 1
    assert erase_customer(store, ADMIN, quarantined_victim)["quarantine"] == 1
    assert store.count("bank") == 4
    assert store.backend.fetchone('SELECT 1 FROM "c_bank" WHERE pseudonym = ?', (p,)) is None
    assert store.backend.fetchone("SELECT 1 FROM data_keys WHERE pseudonym = ?", (p,)) is None
    # No remaining data key decrypts the saved ciphertext, and the wrapped key is gone from the file.
    cipher = FieldCipher("bank")
    for ds, q, v, blob in store.backend.fetchall(
        "SELECT dataset, pseudonym, kek_version, blob FROM data_keys"
    ):
        key = store.keyring.unwrap(WrappedKey(v, bytes(blob)), data_key_context(ds, q))
        with pytest.raises(IntegrityError):
            cipher.decrypt(key, "national_id", p, bytes(tokens[0]))
    raw = home_bytes(store)
    assert bytes(wrapped[1]) not in raw and bytes(tokens[0]) not in raw
    entry = audit_entries(store, action="erase")[0]
    assert entry.pseudonyms == (p,) and victim not in str(entry.to_dict())
    # A later file cannot bring the erased customer back.
    again = store.ingest(ADMIN, bank, write_csv(tmp_path, frame.iloc[[6]].assign(income=5.0), "again.csv"))
    assert again.suppressed == 1 and store.count("bank") == 4


# --- keys on open ---------------------------------------------------------------------------


def test_wrong_keyring_gives_key_material_error_and_writes_nothing(tmp_path, loaded):
    store, _ = loaded
    home = store.home
    store.close()
    other = PartnerHome(tmp_path / "other")
    PartnerStore.init(other, "bank_b").close()
    before = home.store_path.read_bytes()
    saved = (home.keys_dir / "keyring.json").read_bytes()
    shutil.copy2(other.keys_dir / "keyring.json", home.keys_dir / "keyring.json")
    with pytest.raises(KeyMaterialError, match="does not belong"):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before
    (home.keys_dir / "keyring.json").write_bytes(saved)
    shutil.copy2(other.keys_dir / "pseudonym.key", home.keys_dir / "pseudonym.key")
    with pytest.raises(KeyMaterialError, match="pseudonym key"):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before
    (home.keys_dir / "pseudonym.key").unlink()
    with pytest.raises(KeyMaterialError):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before


def test_missing_keyring_gives_key_material_error(loaded):
    store, _ = loaded
    home = store.home
    store.close()
    before = home.store_path.read_bytes()
    (home.keys_dir / "keyring.json").unlink()
    with pytest.raises(KeyMaterialError):
        PartnerStore.open(home)
    assert home.store_path.read_bytes() == before


def test_open_without_store_and_double_init(tmp_path, store):
    with pytest.raises(ConfigError, match="fedcustomer init"):
        PartnerStore.open(PartnerHome(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="already"):
        PartnerStore.init(store.home, "again")
    with pytest.raises(AccessDenied):
        PartnerStore.init(PartnerHome(tmp_path / "h2"), "x", actor=MARKETING)
    assert FileKeyRing.open(store.home.keys_dir).active_version() == 1


# --- rotation racing an open handle --------------------------------------------------------


def _approve_core(store):
    rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
    StoreApprovals(store).approve(ADMIN, rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)


def test_handle_opened_before_rotate_and_retire_wraps_new_keys_under_the_active_version(
    tmp_path, loaded, bank
):
    store, _ = loaded
    other = PartnerStore.open(store.home)  # like a second process: its own keyring and connection
    try:
        KeyAdmin(other).rotate(ADMIN)
        KeyAdmin(other).retire(ADMIN, 1)
    finally:
        other.close()
    newcomers = bank_frame(50).iloc[30:].reset_index(drop=True)  # 20 customers the store has never seen
    assert store.ingest(ADMIN, bank, write_csv(tmp_path, newcomers, "new.csv")).inserted == 20
    assert KeyAdmin(store).usage() == {2: 51}
    _approve_core(store)
    got = store.read(RISK, "risk_review", CORE)
    newcomers.index = store.pseudonymizer.pseudonyms(newcomers["customer_id"])
    for col in CORE:
        assert (got.loc[newcomers.index, col] == newcomers[col].astype(str)).all(), col


def test_cli_rotate_and_retire_in_another_process_do_not_strand_an_open_handle(tmp_path, loaded, bank):
    import os
    import subprocess
    import sys

    store, _ = loaded
    home = str(store.home.root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for step in ("KeyAdmin(s).rotate(a)", "KeyAdmin(s).retire(a, 1)"):
        code = (
            "from fedcustomer.data.store import PartnerStore; from fedcustomer.data.key_admin import KeyAdmin; "
            "from fedcustomer.partner.home import PartnerHome; from fedcustomer.privacy.access.policy import Actor; "
            f"a = Actor('alice', 'partner_admin'); s = PartnerStore.open(PartnerHome({home!r})); {step}; s.close()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=None
        )
        assert done.returncode == 0, done.stderr
    newcomers = bank_frame(50).iloc[30:].reset_index(drop=True)
    store.ingest(ADMIN, bank, write_csv(tmp_path, newcomers, "new.csv"))
    _approve_core(store)
    got = store.read(RISK, "risk_review", ["national_id"])
    newcomers.index = store.pseudonymizer.pseudonyms(newcomers["customer_id"])
    assert (got.loc[newcomers.index, "national_id"] == newcomers["national_id"]).all()


def test_retire_cannot_slip_between_a_writers_wrap_and_its_commit(loaded):
    store, _ = loaded
    other = PartnerStore.open(store.home)
    try:
        KeyAdmin(other).rotate(ADMIN)
        # A writer in another handle is mid-transaction, having wrapped a key under version 1
        # (what a stale writer did before the fix), not yet committed.
        context = data_key_context("bank", "p" * 64)
        old = FileKeyRing.open(store.home.keys_dir)
        old._active = 1  # the stale in-memory state of a handle opened before the rotation
        old._keks[1].status = "active"
        wrapped = old.wrap(b"k" * 32, context)
        assert wrapped.kek_version == 1
        with store.backend.transaction():
            store.backend.execute(
                "INSERT INTO data_keys VALUES (?, ?, ?, ?)", ("bank", "p" * 64, 1, wrapped.blob)
            )
            other.backend.execute("PRAGMA busy_timeout = 0")  # fail at once instead of waiting for the lock
            with pytest.raises(ConfigError, match="busy"):
                KeyAdmin(other).retire(ADMIN, 1)
        # Once the writer committed, the retirement sees its key and is refused.
        with pytest.raises(KeyMaterialError, match="still wraps 1"):
            KeyAdmin(other).retire(ADMIN, 1)
        assert {k.version: k.status for k in FileKeyRing.open(store.home.keys_dir).versions()}[
            1
        ] == "available"
    finally:
        other.close()


def test_keyring_refuses_to_wrap_under_a_version_it_no_longer_holds_active(tmp_path):
    ring = FileKeyRing.create(tmp_path / "keys")
    stale = FileKeyRing.open(tmp_path / "keys")
    ring.rotate()
    ring.retire(1)
    stale.refresh()
    assert stale.wrap(b"k" * 32, b"ctx").kek_version == 2


# --- erasure reaches backups ------------------------------------------------------------------


def _rows_naming(db, pseudonym):
    """Every row of every table of a SQLite file in which a column equals ``pseudonym``."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        found = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cur = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall() if pseudonym in r]
            if rows:
                found[table] = rows
        return found
    finally:
        con.close()


def test_backup_taken_before_erasure_yields_nothing_of_the_customer_after_rotate_and_retire(
    tmp_path, store, bank
):
    frame = bank_frame(12)
    dup = frame.iloc[[3]].assign(updated_at="2019-01-01T00:00:00Z", income=1.0)  # also leaves a merge record
    store.ingest(ADMIN, bank, write_csv(tmp_path, pd.concat([frame, dup], ignore_index=True)))
    victim = frame.iloc[3]
    p = store.pseudonymizer.pseudonym(victim["customer_id"])
    backup = tmp_path / "backup.db"
    shutil.copy2(store.home.store_path, backup)  # an operator's backup, taken before the erasure
    erase_customer(store, ADMIN, victim["customer_id"])
    KeyAdmin(store).rotate(ADMIN)
    KeyAdmin(store).retire(ADMIN, 1)
    # Found by the keyed pseudonym (the pseudonym key remains), the customer's rows in the
    # backup hold nothing but ciphertext, numbers that count ingests, and labels.
    found = _rows_naming(backup, p)
    assert set(found) >= {"c_bank", "data_keys", "merges"}
    labels = {p, "bank", "duplicate_in_file", "kept_stored", "replaced_stored"}
    for table, rows in found.items():
        for row in rows:
            for column, value in row.items():
                ok = (
                    isinstance(value, bytes)
                    or value in labels
                    or (column in ("ingest_id", "kek_version", "id") and isinstance(value, int))
                )
                assert ok, (table, column)
    # No key that remains opens any of it: the backup's wrapped key needs the retired KEK,
    # and no live data key decrypts the sealed row or core tokens.
    import sqlite3

    con = sqlite3.connect(backup)
    version, blob = con.execute(
        "SELECT kek_version, blob FROM data_keys WHERE pseudonym = ?", (p,)
    ).fetchone()
    sealed, national = con.execute(
        'SELECT sealed, national_id FROM "c_bank" WHERE pseudonym = ?', (p,)
    ).fetchone()
    con.close()
    with pytest.raises(KeyMaterialError, match="retired"):
        store.keyring.unwrap(WrappedKey(version, bytes(blob)), data_key_context("bank", p))
    cipher = FieldCipher("bank")
    for ds, q, v, b in store.backend.fetchall("SELECT dataset, pseudonym, kek_version, blob FROM data_keys"):
        key = store.keyring.unwrap(WrappedKey(v, bytes(b)), data_key_context(ds, q))
        for field, token in (("__sealed_row__", sealed), ("national_id", national)):
            with pytest.raises(IntegrityError):
                cipher.decrypt(key, field, p, bytes(token))
    # And the backup file holds none of the customer's values in any encoding SQLite uses.
    import struct

    raw = backup.read_bytes()
    for value in (victim["income"], victim["balance"], victim["credit_limit"], victim["utilisation"]):
        assert struct.pack(">d", float(value)) not in raw
    for value in (victim["national_id"], victim["phone"], victim["updated_at"], victim["full_name"]):
        assert str(value).encode() not in raw


def test_store_of_the_old_clear_layout_is_refused_with_what_to_do(store):
    home = store.home
    store.backend.execute("UPDATE meta SET value = 'fedcustomer.store/1' WHERE key = 'format'")
    store.close()
    with pytest.raises(ConfigError, match="older version"):
        PartnerStore.open(home)


def test_a_store_with_two_datasets_asks_for_the_command_lines_dataset_option(tmp_path, store, bank):
    # The message named a Python keyword (dataset=...) to a person at the command line (found by a
    # new-user trial).
    from dataclasses import replace

    store.ingest(ADMIN, bank, write_csv(tmp_path, bank_frame(3)))
    store.ingest(ADMIN, replace(bank, dataset="bank_v2"), write_csv(tmp_path, bank_frame(3), "v2.csv"))
    with pytest.raises(
        ConfigError, match=r"several datasets \(bank, bank_v2\); name one with --dataset NAME"
    ):
        store.read(MARKETING, "marketing", fields=["region"])
    assert len(store.read(MARKETING, "marketing", fields=["region"], dataset="bank_v2")) == 3
