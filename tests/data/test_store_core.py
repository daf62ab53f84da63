"""The store's parsed-schema cache: one parse per stored text per process, a changed text parsed again."""

import sqlite3

import pytest

from fedcustomer.data import store_core
from fedcustomer.data.schema import Schema, load_bundled, replace_field
from fedcustomer.data.store import PartnerStore
from fedcustomer.data.store_core import SCHEMAS, _SchemaCache, parse_stored_schema
from fedcustomer.errors import SchemaError
from fedcustomer.partner.home import PartnerHome
from tests.data.store_fixtures import ADMIN, TRAINING, write_csv
from tests.data.test_ingest import bank_frame


@pytest.fixture()
def parses(monkeypatch):
    """How often a stored schema's YAML is parsed, from an empty cache."""
    SCHEMAS.clear()
    calls = []
    real = Schema.from_yaml.__func__

    def counting(cls, text, source="<schema>"):
        calls.append(source)
        return real(cls, text, source)

    monkeypatch.setattr(Schema, "from_yaml", classmethod(counting))
    yield calls
    SCHEMAS.clear()


def _fresh(parses):
    SCHEMAS.clear()
    parses.clear()


def _home_with_bank(tmp_path, name):
    home = PartnerHome(tmp_path / name)
    store = PartnerStore.init(home, name)
    store.ingest(ADMIN, load_bundled("bank"), write_csv(tmp_path, bank_frame(6), f"{name}.csv"))
    store.close()
    return home


def test_the_same_stored_text_is_parsed_once_for_every_handle_and_store(tmp_path, parses):
    homes = [_home_with_bank(tmp_path, "bank_a"), _home_with_bank(tmp_path, "bank_b")]
    _fresh(parses)
    for _ in range(3):
        for home in homes:
            with PartnerStore.open(home) as store:
                schema = store.schema("bank")
                assert schema.source == f"{home.store_path}:bank"  # each store's own name in messages
                assert len(store.read(TRAINING, "training", ["age"], dataset="bank")) == 6
    assert len(parses) == 1


def test_a_changed_schema_is_parsed_again_even_on_an_open_handle(tmp_path, parses):
    home = _home_with_bank(tmp_path, "bank_a")
    _fresh(parses)
    with PartnerStore.open(home) as reader, PartnerStore.open(home) as writer:
        before = reader.schema("bank")
        changed = replace_field(load_bundled("bank"), "age", description="age at the last review")
        writer.register_schema(changed)  # a compatible update: same structure, new text
        after = reader.schema("bank")
        assert before.field("age").description != after.field("age").description == "age at the last review"
        assert reader.schema("bank") is after  # the new text, parsed once
    assert len(parses) == 2


def test_a_stored_text_that_does_not_parse_is_refused_every_time(tmp_path, parses):
    home = _home_with_bank(tmp_path, "bank_a")
    _fresh(parses)
    con = sqlite3.connect(home.store_path)
    con.execute("UPDATE datasets SET schema_yaml = 'dataset: bank\nfields: [' WHERE name = 'bank'")
    con.commit()
    con.close()
    with PartnerStore.open(home) as store:
        for _ in range(2):
            with pytest.raises(SchemaError, match="invalid YAML"):
                store.schema("bank")
    assert len(SCHEMAS) == 0


def test_the_cache_keeps_its_most_recent_texts_only():
    cache = _SchemaCache(2)
    texts = [load_bundled("bank").to_yaml().replace("Retail-bank", f"Bank {i}") for i in range(3)]
    first = cache.get(texts[0], "a")
    cache.get(texts[1], "a")
    assert cache.get(texts[0], "a") is first  # used again: now the most recent
    cache.get(texts[2], "a")
    assert len(cache) == 2 and cache.get(texts[0], "a") is first
    renamed = cache.get(texts[0], "b")
    assert renamed.source == "b" and renamed.fields is first.fields and first.source == "a"


def test_parse_stored_schema_uses_the_process_cache(parses):
    text = load_bundled("bank").to_yaml()
    assert parse_stored_schema(text, "x").dataset == "bank" == parse_stored_schema(text, "y").dataset
    assert len(parses) == 1 and store_core.SCHEMAS is SCHEMAS
