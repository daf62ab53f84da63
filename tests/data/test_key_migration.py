"""Moving an existing home's KEKs from the key file to a SoftHSM2 token: 0 lost, or nothing changed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from fedcustomer.data import key_migration
from fedcustomer.data.approvals import StoreApprovals
from fedcustomer.data.key_admin import KeyAdmin
from fedcustomer.data.key_migration import KeyMigration, token_target
from fedcustomer.data.schema import load_bundled
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError, IntegrityError, KeyMaterialError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.crypto.keyring import PKCS11_BLOB_PREFIX, FileKeyRing
from fedcustomer.privacy.crypto.pkcs11_keyring import Pkcs11KeyRing
from fedcustomer.privacy.crypto.pkcs11_token import DEFAULT_PIN_ENV, TokenSession
from tests.data.store_fixtures import ADMIN, COMPLIANCE, CORE, MARKETING, RISK, write_csv
from tests.data.test_ingest import bank_frame, plant_bad_rows
from tests.privacy.crypto.softhsm import restart_module, softhsm

FIELDS = CORE + ["income"]


@pytest.fixture()
def file_home(tmp_path):
    """A development home on the file keyring: 25 customers, 5 quarantined rows, merge records."""
    home = PartnerHome(tmp_path / "home")
    frame, _ = plant_bad_rows(bank_frame(30))
    with PartnerStore.init(home, "bank_a") as store:
        store.ingest(ADMIN, load_bundled("bank"), write_csv(tmp_path, frame))
        dup = [
            frame.iloc[[7]].assign(updated_at=when)
            for when in ("2019-06-01T00:00:00Z", "2031-06-01T00:00:00Z")
        ]
        store.ingest(ADMIN, load_bundled("bank"), write_csv(tmp_path, pd.concat(dup), "again.csv"))
        assert store.merges("bank")
    return home


def read_all(home: PartnerHome) -> pd.DataFrame:
    """Every row with its core fields in clear (a two-person approval for the risk officer)."""
    with PartnerStore.open(home) as store:
        rid = StoreApprovals(store).request(RISK, "bank", CORE, "risk_review")
        StoreApprovals(store).approve(ADMIN, rid)
        StoreApprovals(store).approve(COMPLIANCE, rid)
        return store.read(RISK, "risk_review", FIELDS)


def key_state(home: PartnerHome) -> dict[str, object]:
    """What a failed migration must leave exactly as it was: config, key files, every wrapped key."""
    import sqlite3

    con = sqlite3.connect(home.store_path)
    try:
        wrapped = [
            con.execute(sql).fetchall()
            for sql in (
                "SELECT * FROM data_keys ORDER BY 1, 2",
                "SELECT id, kek_version, wrapped_key FROM quarantine ORDER BY id",
                "SELECT * FROM keycheck",
                "SELECT * FROM meta WHERE key = 'keyring_switch'",
            )
        ]
    finally:
        con.close()
    keys = {p.name: p.read_bytes() for p in sorted(home.keys_dir.iterdir())}
    return {"config": home.config_path.read_bytes(), "keys": keys, "wrapped": wrapped}


def kek_objects(softhsm, label="fedcustomer-kek-bank_a") -> bool:
    token = TokenSession.open(softhsm.config())
    try:
        return Pkcs11KeyRing.present(token, label)
    finally:
        token.close()


def migrate(home: PartnerHome, target, actor=ADMIN) -> dict:
    with PartnerStore.open(home) as store:
        return KeyMigration(store).to_token(actor, target)


def audit_entries(home: PartnerHome, action: str) -> list:
    with PartnerStore.open(home) as store:
        return store.audit.query(action=action)


def test_migrate_rewraps_every_key_on_the_token_and_every_row_still_reads(file_home, softhsm):
    before = read_all(file_home)
    assert len(before) == 25
    with PartnerStore.open(file_home) as store:
        merges = store.merges("bank")
    result = migrate(file_home, softhsm.config())
    assert result["by_table"] == {"data_keys": 25, "quarantine": 5, "keycheck": 1}
    assert result["rows_read"] == 25 and result["file_kek"] == "destroyed"
    assert not (file_home.keys_dir / "keyring.json").exists()
    config = file_home.config().keyring
    assert config.on_token and config.audit_key == "file" and config.token_label == softhsm.label
    assert softhsm.pin not in file_home.config_path.read_text()
    pd.testing.assert_frame_equal(before, read_all(file_home))  # 0 lost
    with PartnerStore.open(file_home) as store:
        assert isinstance(store.keyring, Pkcs11KeyRing)
        assert store.merges("bank") == merges and len(store.quarantine_summary()) == 5
        blobs = store.backend.fetchall("SELECT blob FROM data_keys")
        assert all(bytes(b).startswith(PKCS11_BLOB_PREFIX) for (b,) in blobs)
        assert KeyAdmin(store).rotate(ADMIN)["rewrapped"] == 31  # rotation works on the token afterwards
        assert store.audit.verify().ok
    (done,) = audit_entries(file_home, "key_migrate")
    assert done.decision == "allowed" and done.actor == "alice"
    assert not (file_home.state_dir / key_migration.STAGED_NOTE).exists()


def test_migrating_twice_is_refused_clearly(file_home, softhsm):
    migrate(file_home, softhsm.config())
    state = key_state(file_home)
    with pytest.raises(ConfigError, match="already keeps its KEKs on a token"):
        migrate(file_home, softhsm.config())
    assert key_state(file_home) == state
    assert [e.decision for e in audit_entries(file_home, "key_migrate")] == ["allowed", "denied"]


def test_wrong_pin_is_a_key_error_and_leaves_the_home_on_its_key_file(file_home, softhsm, monkeypatch):
    before, state = read_all(file_home), key_state(file_home)
    monkeypatch.setenv("OTHER_PIN", "0000")
    with pytest.raises(KeyMaterialError, match="wrong PIN") as caught:
        migrate(file_home, dataclasses.replace(softhsm.config(), pin_env="OTHER_PIN"))
    assert "0000" not in str(caught.value)
    assert key_state(file_home) == state
    pd.testing.assert_frame_equal(before, read_all(file_home))
    (denied,) = audit_entries(file_home, "key_migrate")
    assert denied.decision == "denied" and "wrong PIN" in denied.reason
    assert not kek_objects(softhsm)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"token_label": "gone"}, "no token labelled 'gone'"), ({"module": "/nonexistent/p11.so"}, "not found")],
)
def test_token_absent_is_a_key_error_and_leaves_the_home_unchanged(file_home, softhsm, change, message):
    before, state = read_all(file_home), key_state(file_home)
    with pytest.raises(KeyMaterialError, match=message):
        migrate(file_home, dataclasses.replace(softhsm.config(), **change))
    assert key_state(file_home) == state
    pd.testing.assert_frame_equal(before, read_all(file_home))


def test_an_unauthorised_person_is_refused_and_audited(file_home, softhsm):
    state = key_state(file_home)
    with pytest.raises(AccessDenied):
        migrate(file_home, softhsm.config(), actor=MARKETING)
    assert key_state(file_home) == state and not kek_objects(softhsm)
    (denied,) = audit_entries(file_home, "key_migrate")
    assert denied.decision == "denied" and denied.actor == MARKETING.name


def test_a_failed_read_back_rolls_everything_back_and_the_token_kek_is_destroyed(
    file_home, softhsm, monkeypatch
):
    before, state = read_all(file_home), key_state(file_home)

    def lose_a_row(store, keyring):
        raise IntegrityError("a row did not decrypt")

    monkeypatch.setattr(key_migration, "verify_every_row", lose_a_row)
    with pytest.raises(IntegrityError, match="did not decrypt"):
        migrate(file_home, softhsm.config())
    assert key_state(file_home) == state and not kek_objects(softhsm)
    assert not (file_home.state_dir / key_migration.STAGED_NOTE).exists()
    pd.testing.assert_frame_equal(before, read_all(file_home))
    monkeypatch.undo()
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)
    migrate(file_home, softhsm.config())  # the home is as it was: the migration simply runs again
    pd.testing.assert_frame_equal(before, read_all(file_home))


def crash(home: PartnerHome, softhsm, where: str) -> int:
    """Run a migration in another process that dies (no clean-up at all) at ``where``."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from fedcustomer.data import key_migration
        from fedcustomer.data.key_migration import KeyMigration
        from fedcustomer.data.store import PartnerStore
        from fedcustomer.partner.home import PartnerHome
        from fedcustomer.privacy.crypto.pkcs11_token import KeyringConfig
        from tests.data.store_fixtures import ADMIN

        def die(*args, **kwargs):
            os._exit(137)

        if {where!r} == "read-back":
            key_migration.verify_every_row = die
        else:
            PartnerHome.write_config = die
        config = KeyringConfig(backend="pkcs11", module={softhsm.module!r}, token_label={softhsm.label!r})
        with PartnerStore.open(PartnerHome({str(home.root)!r})) as store:
            KeyMigration(store).to_token(ADMIN, config)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", script], env=env, timeout=300).returncode


def test_a_crash_before_the_switch_leaves_the_home_on_its_key_file_and_a_rerun_cleans_up(file_home, softhsm):
    before, state = read_all(file_home), key_state(file_home)
    assert crash(file_home, softhsm, "read-back") == 137
    restart_module(softhsm.module)  # see the other process's token objects
    assert kek_objects(softhsm)  # it died holding a staged KEK on the token...
    assert key_state(file_home) == state  # ...and a rolled-back transaction: the home is as it was
    pd.testing.assert_frame_equal(before, read_all(file_home))
    migrate(file_home, softhsm.config())  # the staged KEK is destroyed first, then the migration runs
    pd.testing.assert_frame_equal(before, read_all(file_home))
    with PartnerStore.open(file_home) as store:
        assert store.keyring.versions()[-1].version == 1


def test_a_crash_after_the_switch_is_finished_by_the_next_open(file_home, softhsm):
    before = read_all(file_home)
    assert crash(file_home, softhsm, "after-commit") == 137
    assert not file_home.config().keyring.on_token  # died before partner.toml was written
    assert (file_home.keys_dir / "keyring.json").exists()
    restart_module(softhsm.module)
    pd.testing.assert_frame_equal(before, read_all(file_home))  # the open completed the switch
    assert file_home.config().keyring.on_token
    assert not (file_home.keys_dir / "keyring.json").exists()
    assert key_state(file_home)["wrapped"][3] == []  # the switch record is cleared


def test_a_handle_opened_before_the_switch_cannot_write_under_the_destroyed_file_kek(file_home, softhsm):
    stale = PartnerStore.open(file_home)
    try:
        assert isinstance(stale.keyring, FileKeyRing)
        migrate(file_home, softhsm.config())
        with pytest.raises(KeyMaterialError, match="not found"):
            with stale.write_transaction():
                pass
    finally:
        stale.close()
    assert len(read_all(file_home)) == 25


@pytest.mark.parametrize(
    "spec", ["token", "pkcs11:", "pkcs11:/kek", "pkcs11:tok/", "pkcs11:tok/a/b", "file:keys"]
)
def test_a_malformed_target_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="pkcs11:TOKEN_LABEL"):
        token_target(spec, "/lib/p11.so", None)


def test_a_target_without_a_module_is_a_config_error():
    with pytest.raises(ConfigError, match="--module"):
        token_target("pkcs11:tok", None, None)
    target = token_target("pkcs11:tok/kek-a", "/lib/p11.so", "MY_PIN")
    assert (target.token_label, target.key_label, target.pin_env, target.audit_key) == (
        "tok",
        "kek-a",
        "MY_PIN",
        "file",
    )
    assert json.loads(json.dumps(dataclasses.asdict(target)))["backend"] == "pkcs11"


def test_a_key_label_already_on_the_token_is_refused_and_left_alone(file_home, softhsm, tmp_path):
    from fedcustomer.privacy.crypto.keyring_factory import create_keyring

    create_keyring(softhsm.config(), tmp_path, "bank_a").close()  # another store's KEKs under this label
    state = key_state(file_home)
    with pytest.raises(KeyMaterialError, match="already holds KEK objects labelled fedcustomer-kek-bank_a"):
        migrate(file_home, softhsm.config())
    assert key_state(file_home) == state and kek_objects(softhsm)  # the other store's KEK is untouched
    migrate(file_home, dataclasses.replace(softhsm.config(), key_label="bank-a-kek"))
    assert file_home.config().keyring.key_label == "bank-a-kek" and len(read_all(file_home)) == 25


def test_a_failure_after_the_commit_says_so_and_the_next_open_completes_it(file_home, softhsm, monkeypatch):
    before = read_all(file_home)

    def disk_full(self, config):
        raise ConfigError("no space left on the device")

    monkeypatch.setattr(PartnerHome, "write_config", disk_full)
    with pytest.raises(ConfigError, match="switch is committed .* the next command that opens this home"):
        migrate(file_home, softhsm.config())
    monkeypatch.undo()
    monkeypatch.setenv(DEFAULT_PIN_ENV, softhsm.pin)
    pd.testing.assert_frame_equal(before, read_all(file_home))
    assert file_home.config().keyring.on_token and not (file_home.keys_dir / "keyring.json").exists()
