"""Built-in public data sets are found the same way by every command, and a wrong task says what to do."""

from __future__ import annotations

import pytest

from fedcustomer.data import sources
from fedcustomer.errors import ConfigError, DataError


def test_uci_credit_is_found_in_the_shipped_folder_like_rfm_finds_cdnow(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(sources, "default_data_dir", lambda: tmp_path, raising=False)
    assert sources.resolve_data_dir(None) == tmp_path
    from fedcustomer.cli.analytics import _data_dir

    assert _data_dir(None) == tmp_path  # rfm's lookup is the same one


def test_without_any_data_folder_the_error_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(sources, "default_data_dir", lambda: tmp_path / "absent", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        sources.resolve_data_dir(None)


def test_cdnow_without_the_clv_task_says_to_add_it():
    with pytest.raises(ConfigError, match="add --task clv"):
        sources.load_partitions("repayment", "cdnow", 2)
