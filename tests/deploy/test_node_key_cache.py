"""The SuperLink's node-key lookups kept between node changes: never an answer a change made stale."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

from fedcustomer.deploy import node_key_cache as nk

# Flower's link state whose writers of a node's key and registration the cache relies on (whole
# source: a new writer fails here): re-read it and update WRITERS on an upgrade
PINNED_STATE_SOURCE = "4c8fc659b3170d10e2a8"


def test_the_installed_flower_link_state_is_the_one_the_cache_was_written_for():
    """Fails when a Flower upgrade changes the link state: then WRITERS must be checked again."""
    module = importlib.import_module(nk.STATE_MODULE)
    source = inspect.getsource(module)
    assert hashlib.sha256(source.encode()).hexdigest()[:20] == PINNED_STATE_SOURCE
    assert source.count("status=NodeStatus.UNREGISTERED") == 1  # delete_node's, the only one
    assert source.count("insert(NodeModel)") == 1  # create_node's, the only one
    assert callable(importlib.import_module(nk.SESSION_MODULE)._current_sessions.get)


@pytest.fixture
def state(tmp_path, monkeypatch):
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

    cls = getattr(importlib.import_module(nk.STATE_MODULE), nk.STATE_CLASS)
    for name in (nk.LOOKUP, *nk.WRITERS):  # restored after the test
        monkeypatch.setattr(cls, name, getattr(cls, name))
    assert nk.install() is True and nk.install() is True  # twice: wrapped once
    database = str(tmp_path / "superlink.db")
    return LinkStateFactory(database, NoOpFederationManager(), ObjectStoreFactory(database)).state()


def test_a_found_node_is_kept_and_an_unknown_key_is_asked_again(state):
    node = state.create_node("aid", "bank", b"bank-key", 1.0)
    assert state.get_node_id_by_public_key(b"bank-key") == node
    assert nk.keys_of(state).get(b"bank-key")[0] == node
    assert state.get_node_id_by_public_key(b"stranger") is None
    assert nk.keys_of(state).get(b"stranger")[0] is None


def test_an_unregistered_node_is_refused_at_once(state):
    node = state.create_node("aid", "bank", b"bank-key", 1.0)
    assert state.get_node_id_by_public_key(b"bank-key") == node
    state.delete_node("aid", node)
    assert state.get_node_id_by_public_key(b"bank-key") is None


def test_a_failed_change_still_forgets_and_a_new_node_is_found(state):
    node = state.create_node("aid", "bank", b"bank-key", 1.0)
    assert state.get_node_id_by_public_key(b"bank-key") == node
    with pytest.raises(ValueError, match="Public key already in use"):
        state.create_node("aid", "bank", b"bank-key", 1.0)
    assert nk.keys_of(state).get(b"bank-key")[0] is None
    other = state.create_node("aid", "retailer", b"retailer-key", 1.0)
    assert state.get_node_id_by_public_key(b"retailer-key") == other
    assert state.get_node_id_by_public_key(b"bank-key") == node


def test_a_lookup_that_overlapped_a_change_is_not_kept():
    keys = nk.NodeKeys()
    found, generation = keys.get(b"k")
    assert found is None
    keys.changed()  # a node was created or deleted while the lookup read the database
    keys.keep(b"k", 7, generation)
    assert keys.get(b"k")[0] is None
    keys.keep(b"k", 7, keys.generation)
    assert keys.get(b"k")[0] == 7


def test_a_change_inside_a_longer_transaction_turns_the_cache_off_for_good(state):
    node = state.create_node("aid", "bank", b"bank-key", 1.0)
    with state.session():  # the delete commits when this block ends, after delete_node returned
        state.delete_node("aid", node)
    assert nk.keys_of(state).off
    other = state.create_node("aid", "retailer", b"retailer-key", 1.0)
    assert state.get_node_id_by_public_key(b"retailer-key") == other
    assert nk.keys_of(state).get(b"retailer-key")[0] is None
    assert state.get_node_id_by_public_key(b"bank-key") is None


def test_an_untested_flower_is_left_unchanged():
    cls = getattr(importlib.import_module(nk.STATE_MODULE), nk.STATE_CLASS)
    before = [getattr(cls, name) for name in (nk.LOOKUP, *nk.WRITERS)]
    assert nk.install(version="1.43.0") is False
    assert [getattr(cls, name) for name in (nk.LOOKUP, *nk.WRITERS)] == before
