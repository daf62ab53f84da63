"""A governed store whose KEKs and audit signing key are on a PKCS#11 token (SoftHSM2)."""

from __future__ import annotations

import pandas as pd
import pytest

from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.keys import load_public_key
from fedcustomer.privacy.crypto.keyring_factory import create_keyring
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV
from tests.data.store_fixtures import ADMIN, COMPLIANCE, CORE, RISK, write_csv
from tests.data.test_ingest import bank_frame, plant_bad_rows
from tests.privacy.crypto.softhsm import restart_module, softhsm


def token_home(tmp_path, softhsm, **extra: str) -> PartnerHome:
    """A partner home whose partner.toml names the test's token before `init`."""
    root = tmp_path / "home"
    root.mkdir()
    (root / "partner.toml").write_text('name = "bank_a"\n\n' + softhsm.toml(**extra))
    return PartnerHome(root)


def home_files(home: PartnerHome) -> dict[str, bytes]:
    return {
        str(p.relative_to(home.root)): p.read_bytes() for p in sorted(home.root.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def loaded(tmp_path, softhsm):
    home = token_home(tmp_path, softhsm)
    store = PartnerStore.init(home, "bank_a")
    frame, _ = plant_bad_rows(bank_frame(30))
    store.ingest(ADMIN, load_bundled("bank"), write_csv(tmp_path, frame))
    yield store, home
    store.close()


def test_rotate_retire_and_read_every_old_row(loaded, softhsm):
    store, home = loaded
    assert isinstance(store.keyring, Pkcs11KeyRing)
    keys = sorted(p.name for p in home.keys_dir.iterdir())
    assert "keyring.json" not in keys and "audit_signing.key" not in keys  # both keys are on the token
    rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
    StoreApprovals(store).approve(ADMIN, rid)
    StoreApprovals(store).approve(COMPLIANCE, rid)
    before = store.read(RISK, "risk_review", CORE + ["income"])
    assert len(before) == 25
    with pytest.raises(KeyMaterialError, match="still wraps"):
        KeyAdmin(store).retire(ADMIN, 1)
    result = KeyAdmin(store).rotate(ADMIN)
    assert result["active_version"] == 2 and result["by_table"] == {
        "data_keys": 25,
        "quarantine": 5,
        "keycheck": 1,
    }
    KeyAdmin(store).retire(ADMIN, 1)
    assert {k["version"]: k["status"] for k in KeyAdmin(store).versions()} == {1: "retired", 2: "active"}
    pd.testing.assert_frame_equal(before, store.read(RISK, "risk_review", CORE + ["income"]))
    store.close()
    with PartnerStore.open(home) as reopened:  # 0 rows lost after the old KEK was destroyed
        assert reopened.count("bank") == 25
        assert reopened.audit.verify().ok
        signed = reopened.audit.checkpoints()
    assert signed and load_public_key(home.audit_dir / "audit_signing.pub") == reopened.audit._key_to_trust()


def test_wrong_pin_at_open_is_a_key_error_and_writes_nothing(loaded, softhsm, monkeypatch):
    store, home = loaded
    store.close()
    restart_module(softhsm.module)  # PKCS#11 logs in per process: end this one's login
    before = home_files(home)
    monkeypatch.setenv(DEFAULT_PIN_ENV, "0000")
    with pytest.raises(KeyMaterialError, match="wrong PIN"):
        PartnerStore.open(home)
    assert home_files(home) == before


def test_token_absent_or_kek_missing_at_open_is_a_key_error_and_writes_nothing(loaded, softhsm):
    store, home = loaded
    store.close()
    before = home_files(home)
    text = home.config_path.read_text()
    home.config_path.write_text(text.replace(f'token_label = "{softhsm.label}"', 'token_label = "gone"'))
    with pytest.raises(KeyMaterialError, match="no token labelled 'gone'"):
        PartnerStore.open(home)
    home.config_path.write_text(text.replace(softhsm.module, "/nonexistent/libvendor-pkcs11.so"))
    with pytest.raises(KeyMaterialError, match="not found"):
        PartnerStore.open(home)
    home.config_path.write_text(text + 'key_label = "fedcustomer-kek-someone-else"\n')
    with pytest.raises(KeyMaterialError, match="holds no KEK objects"):
        PartnerStore.open(home)
    home.config_path.write_text(text)
    assert {k: v for k, v in home_files(home).items() if k != "partner.toml"} == {
        k: v for k, v in before.items() if k != "partner.toml"
    }
    with PartnerStore.open(home) as again:
        assert again.count("bank") == 25


def test_a_file_keyring_store_refuses_a_token_it_was_not_made_with(tmp_path, softhsm):
    home = PartnerHome(tmp_path / "plain")
    PartnerStore.init(home, "bank_a").close()
    text = home.config_path.read_text()
    home.config_path.write_text(text + "\n" + softhsm.toml(audit_key="file"))
    create_keyring(softhsm.config(), tmp_path, "bank_a").close()  # KEKs under this name on the token
    with pytest.raises(KeyMaterialError, match="wrapped by the keyring file"):
        PartnerStore.open(home)


def test_init_with_a_wrong_pin_writes_no_key_and_can_be_retried(tmp_path, softhsm, monkeypatch):
    home = token_home(tmp_path, softhsm)
    monkeypatch.setenv(DEFAULT_PIN_ENV, "0000")
    with pytest.raises(KeyMaterialError, match="wrong PIN"):
        PartnerStore.init(home, "bank_a")
    assert not home.store_path.exists()
    assert [p for p in home.root.rglob("*") if p.is_file()] == [home.config_path]
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)
    with PartnerStore.init(home, "bank_a") as store:
        assert store.keyring.active_version() == 1 and store.audit.verify().ok
