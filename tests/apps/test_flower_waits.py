"""Prompt retries for a message's objects not there yet: bound once, where tested, with Flower's patience."""

from __future__ import annotations

import importlib
import inspect

import pytest
from flwr.superlink.grid.http_grid import HttpGrid

from fedcustomer.apps import flower_waits as fw
from fedcustomer.apps.prompt_grid import DEPLOYED_GRID_MODULE, PromptGrid

PULLS = [
    ("flwr.supernode.start_client_internal", "pull_objects"),  # the SuperNode, from the SuperLink
    ("flwr.superlink.grid.http_grid", "pull_objects"),  # the coordinator's grid, a reply
    ("flwr.supernode.runtime.run_clientapp", "pull_and_inflate_object_from_tree"),  # a task's message
]


@pytest.mark.parametrize(("module_name", "name"), PULLS)
def test_the_installed_flower_pulls_take_the_retry_options_bound(module_name, name):
    """Fails when a Flower upgrade changes these functions: TESTED_FLOWER must then be checked again."""
    params = inspect.signature(getattr(importlib.import_module(module_name), name)).parameters
    assert {"initial_backoff", "backoff_cap", "max_tries_per_object", "max_time"} <= set(params)
    assert params["initial_backoff"].default == 1  # what this module shortens


@pytest.mark.parametrize(("module_name", "name"), PULLS)
def test_prompt_retries_bind_short_pauses_once(monkeypatch, module_name, name):
    module = importlib.import_module(module_name)
    seen = {}

    def pull(*args, **kwargs):
        seen.update(kwargs)
        return "pulled"

    monkeypatch.setattr(module, name, pull)  # restored after the test
    assert fw.prompt_retries(module_name, name, "1.42.0") and fw.prompt_retries(module_name, name, "1.42.0")
    assert getattr(module, name)("ids", max_time=5) == "pulled"
    assert seen == {
        "initial_backoff": fw.RETRY_FIRST_S,  # Flower's own: 1 s, doubling to 10 s
        "backoff_cap": fw.RETRY_CAP_S,
        "max_tries_per_object": None,  # Flower's overall time limit still ends a pull that never comes
        "max_time": 5,
    }
    assert getattr(module, name).func is pull  # bound once, not twice


@pytest.mark.parametrize("version", ["1.43.0", "1.4.2", "2.0", ""])
def test_an_untested_flower_keeps_its_own_retries(monkeypatch, version):
    module_name, name = PULLS[1]
    module = importlib.import_module(module_name)
    monkeypatch.setattr(module, name, getattr(module, name))
    before = getattr(module, name)
    assert not fw.prompt_retries(module_name, name, version)
    assert getattr(module, name) is before


def test_the_deployed_grid_gets_prompt_retries_and_other_grids_are_left_alone(monkeypatch):
    module = importlib.import_module(DEPLOYED_GRID_MODULE)
    monkeypatch.setattr(module, "pull_objects", module.pull_objects)
    original = module.pull_objects
    PromptGrid(object())  # type: ignore[arg-type]  # not Flower's deployed grid
    assert module.pull_objects is original
    PromptGrid(HttpGrid.__new__(HttpGrid))
    assert module.pull_objects.func is original
