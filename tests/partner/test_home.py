"""partner.toml is parsed once per text: every change to the file is seen by the next read."""

from __future__ import annotations

import pytest

from fedcustomer.errors import ConfigError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.dp.budget import DatasetBudget


def test_a_budget_written_is_read_back_at_once(tmp_path):
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    assert home.config().budget == DatasetBudget(3.0, 1e-5)
    config = home.config()
    config.budget = DatasetBudget(1.0, 1e-5)
    home.write_config(config)
    assert home.config().budget == DatasetBudget(1.0, 1e-5)


def test_an_edit_in_place_of_the_same_size_is_seen(tmp_path):
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    assert home.config().budget.epsilon == 3.0
    text = home.config_path.read_text(encoding="utf-8")
    edited = text.replace("epsilon = 3.0", "epsilon = 2.0")
    assert len(edited) == len(text) and edited != text
    with open(home.config_path, "r+", encoding="utf-8") as fh:  # same inode, same size
        fh.write(edited)
    assert home.config().budget.epsilon == 2.0


def test_each_read_is_its_own_object(tmp_path):
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    first = home.config()
    first.budget = None
    first.migrated_from["old"] = DatasetBudget(9.0, 1e-5)
    again = home.config()
    assert again.budget == DatasetBudget(3.0, 1e-5)
    assert again.migrated_from == {}


def test_a_file_broken_after_a_good_read_is_refused(tmp_path):
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    home.config()
    home.config_path.write_text('name = "bank"\n[budget\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        home.config()
    home.config_path.unlink()
    with pytest.raises(ConfigError, match="not found"):
        home.config()


def test_two_homes_with_one_text_keep_their_own_names(tmp_path):
    a = PartnerHome.create(tmp_path / "a", "bank_a", DatasetBudget(3.0, 1e-5))
    b = PartnerHome.create(tmp_path / "b", "bank_b", DatasetBudget(3.0, 1e-5))
    assert (a.config().name, b.config().name) == ("bank_a", "bank_b")


@pytest.mark.parametrize(
    ("added", "named"),
    [
        ("\n[secgg]\ntrust = true\n", "unknown key(s) or section(s) secgg"),
        ("\n[secagg]\ntrusted = true\n", "[secagg] has unknown field(s) trusted"),
        ("\n[training]\nallow_nonprivate = true\n", "[training] has unknown field(s) allow_nonprivate"),
        ("\n[audit]\nanchor = 'x'\n", "[audit] has unknown field(s) anchor"),
        ("\n[custom]\nnote = 'x'\n", "unknown key(s) or section(s) custom"),
    ],
)
def test_a_mistyped_key_is_refused_not_ignored_and_later_dropped(tmp_path, added: str, named: str) -> None:
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    home.config_path.write_text(home.config_path.read_text() + added, encoding="utf-8")
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        home.config()


def test_a_mistyped_top_level_key_is_refused(tmp_path) -> None:
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    home.config_path.write_text("policy_note = 'x'\n" + home.config_path.read_text(), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key.* policy_note"):
        home.config()


def test_a_config_change_holds_the_homes_lock_until_it_is_written(tmp_path) -> None:
    import fcntl
    import os

    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    lock = home.state_dir / "partner.toml.lock"
    with home.config_change() as config:
        fd = os.open(lock, os.O_RDWR)
        try:  # a second command (another process in real use) cannot start its own change meanwhile
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        config.secagg_trust = True
        home.write_config(config)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    finally:
        os.close(fd)
    assert home.config().secagg_trust


def test_a_change_whose_record_fails_leaves_the_file_as_it_was(tmp_path) -> None:
    home = PartnerHome.create(tmp_path / "h", "bank", DatasetBudget(3.0, 1e-5))
    before = home.config_path.read_text()
    config = home.config()
    config.budget = DatasetBudget(1.0, 1e-5)

    def record() -> None:
        raise OSError("audit log unwritable")

    with pytest.raises(OSError):
        home.write_config_recorded(config, record)
    assert home.config_path.read_text() == before


def test_a_file_given_as_a_home_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "federation.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="is .* a partner home"):
        PartnerHome(tmp_path / "federation.json").config()
