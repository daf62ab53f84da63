"""Schema files: loading, every kind of mistake reported with file/line/field, drafting."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.data.schema import TIERS, TYPES, FieldSpec, Schema, Validation, load_bundled
from fedcustomer.data.schema_draft import draft_schema, guess_tier
from fedcustomer.errors import SchemaError

MINIMAL = """\
dataset: shop
fields:
  - name: customer_id
    type: string
    tier: core
    role: id
  - name: spend
    type: float
    tier: sensitive
    validation: {min: 0}
    masking: "bucket:100"
"""


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_minimal_schema(tmp_path):
    schema = Schema.load(write(tmp_path, MINIMAL))
    assert schema.dataset == "shop"
    assert schema.id_field.name == "customer_id"
    assert schema.field("spend").validation.min == 0
    assert schema.field("spend").masking == "bucket:100"
    assert schema.timestamp_field is None


def test_bundled_schemas_load_and_mark_identifiers_core():
    bank = load_bundled("bank")
    retailer = load_bundled("retailer")
    assert {f.name for f in bank.by_tier("core")} == {"customer_id", "national_id", "full_name", "phone"}
    assert bank.field("national_id").validation.checksum == "prc_id"
    assert {f.name for f in retailer.by_tier("core")} == {"customer_id", "full_name", "email", "card_number"}
    assert retailer.field("card_number").validation.checksum == "luhn"
    assert bank.field("defaulted").role == "label" and retailer.field("future_spend").role == "label"
    assert bank.timestamp_field.name == retailer.timestamp_field.name == "updated_at"


def test_bundled_schemas_match_synthetic_columns():
    synthetic = pytest.importorskip("fedcustomer.data.synthetic")
    fed = synthetic.generate_federation(
        n_banks=1, n_retailers=1, customers_per_bank=(300,), customers_per_retailer=(300,), seed=3
    )
    assert load_bundled("bank").names == list(fed.banks[0].train.columns)
    assert load_bundled("retailer").names == list(fed.retailers[0].train.columns)


@pytest.mark.parametrize("name", ["bank", "retailer"])
def test_to_yaml_round_trips(name):
    schema = load_bundled(name)
    again = Schema.from_yaml(schema.to_yaml())
    assert again.fields == schema.fields and again.dataset == schema.dataset


@pytest.mark.parametrize(
    "mutation,expected",
    [
        (lambda t: t.replace("tier: sensitive", "tier: secret"), "field 'spend': tier 'secret'"),
        (lambda t: t.replace("type: float", "type: money"), "field 'spend': type 'money'"),
        (lambda t: t.replace("{min: 0}", "{min: zero}"), "field 'spend': 'min' must be a number"),
        (lambda t: t.replace("{min: 0}", "{checksum: crc}"), "checksum 'crc'"),
        (lambda t: t.replace("{min: 0}", "{regex: '('}"), "'regex' does not compile"),
        (lambda t: t.replace("{min: 0}", "{min: 5, max: 1}"), "'min' is greater than 'max'"),
        (lambda t: t.replace('"bucket:100"', '"bucket:x"'), "masking rule"),
        (lambda t: t.replace("role: id", "role: feature"), "exactly one field must have role 'id' (found 0)"),
        (lambda t: t.replace("tier: core", "tier: public"), "the id field must be tier 'core'"),
        (lambda t: t.replace("name: spend", "name: customer_id"), "field 'customer_id': defined twice"),
        (lambda t: t.replace("name: spend", "name: Spend"), "'name' must be lower-case"),
        (lambda t: t.replace("dataset: shop", "dataset: My Shop"), "'dataset' must be a lower-case name"),
        (lambda t: t + "colour: blue\n", "unknown top-level key 'colour'"),
        (lambda t: t.replace("    masking:", "    mask:"), "unknown key(s) ['mask']"),
    ],
)
def test_schema_problems_name_file_and_field(tmp_path, mutation, expected):
    path = write(tmp_path, mutation(MINIMAL))
    with pytest.raises(SchemaError) as info:
        Schema.load(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_field_problem_names_its_line(tmp_path):
    path = write(tmp_path, MINIMAL.replace("tier: sensitive", "tier: secret"))
    with pytest.raises(SchemaError, match=r"line 7: field 'spend'"):
        Schema.load(path)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(SchemaError, match="invalid YAML"):
        Schema.load(write(tmp_path, "dataset: [unclosed\n"))
    with pytest.raises(SchemaError, match="not found"):
        Schema.load(tmp_path / "nope.yaml")
    with pytest.raises(SchemaError, match="top level"):
        Schema.load(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("loader", ["CSafeLoader", "SafeLoader"])
def test_fast_and_pure_python_yaml_give_the_same_schema(monkeypatch, loader):
    """libyaml parses schemas when PyYAML has it; each loader gives the same fields and line marks."""
    import yaml

    from fedcustomer.data import schema as schema_module

    if not hasattr(yaml, loader):
        pytest.skip("PyYAML built without libyaml")
    monkeypatch.setattr(schema_module, "_FAST_LOADER", getattr(yaml, loader))
    assert Schema.from_yaml(MINIMAL) == Schema.from_yaml(MINIMAL.replace("\n", "\r\n"))
    assert [f.name for f in Schema.from_yaml(MINIMAL).fields] == ["customer_id", "spend"]
    with pytest.raises(SchemaError, match=r"line 7: field 'spend'"):
        Schema.from_yaml(MINIMAL.replace("tier: sensitive", "tier: secret"))


def test_a_yaml_mistake_is_reported_by_the_more_explicit_loader():
    """A text the fast loader refuses is parsed again by the pure-Python one, which names the character."""
    with pytest.raises(SchemaError, match=r"line 2 invalid YAML: found character '\\t'"):
        Schema.from_yaml("dataset: shop\n\tfields: []\n")


def test_two_timestamp_fields_rejected():
    fields = (
        FieldSpec("cid", tier="core", role="id"),
        FieldSpec("a", type="date", tier="public", role="timestamp"),
        FieldSpec("b", type="datetime", tier="public", role="timestamp"),
    )
    with pytest.raises(SchemaError, match="at most one field may have role 'timestamp'"):
        Schema("x", fields)


@pytest.mark.parametrize(
    "name,tier",
    [
        ("customer_id", "core"),
        ("full_name", "core"),
        ("phone", "core"),
        ("national_id", "core"),
        ("card_number", "core"),
        ("email", "core"),
        ("income", "sensitive"),
        ("balance", "sensitive"),
        ("monthly_spend", "sensitive"),
        ("region", "public"),
        ("industry", "public"),
        ("segment", "public"),
        ("home_city", "public"),
        ("ethnicity", "core"),  # contains "city", but a special category is never public
        ("religion", "core"),
        ("health_status", "core"),
        ("cards", "sensitive"),  # a count of cards, not a card number
        ("num_cards", "sensitive"),
    ],
)
def test_guess_tier_by_name(name, tier):
    assert guess_tier(name) == tier


def test_draft_schema_guesses_types_tiers_and_checksums(tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4", "C5", "C6"],
            "national_id": ["11010519491231002X"] * 6,
            "card_number": ["4111111111111111"] * 6,
            "region": ["north", "south", "north", "north", "south", "south"],
            "age": [30, 41, 52, 33, 28, 60],
            "income": [1.5, 2.0, None, 4.0, 5.5, 6.0],
            "joined": ["2024-01-01"] * 6,
            "updated_at": ["2024-01-01T10:00:00Z"] * 6,
        }
    )
    path = tmp_path / "Partner Data.csv"
    frame.to_csv(path, index=False)
    schema = draft_schema(path)
    assert schema.dataset == "partner_data"
    assert schema.id_field.name == "customer_id"
    assert schema.field("national_id").validation.checksum == "prc_id"
    assert schema.field("card_number").validation.checksum == "luhn"
    assert schema.field("region").tier == "public" and schema.field("region").type == "category"
    assert schema.field("age").type == "integer" and schema.field("age").tier == "sensitive"
    assert schema.field("income").type == "float" and schema.field("income").nullable
    assert schema.field("joined").type == "date"
    assert schema.field("updated_at").role == "timestamp"
    # The draft is a loadable schema file.
    out = tmp_path / "draft.yaml"
    schema.save(out)
    assert Schema.load(out).fields == schema.fields


def test_draft_masks_sensitive_dates_to_their_year_and_numbers_to_buckets_that_fit_them(tmp_path):
    # found by new-user trials: a sensitive date was drafted with round:-2, which left the exact day, and
    # round:-2 on every integer made every age 0 or 100 and every 0/1 flag 0
    frame = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4"],
            "last_purchase": ["2010-12-08", "2011-01-04", "2011-02-11", "2011-03-01"],
            "monetary": [120.5, 33.0, 980.25, 410.0],
            "age": [19, 35, 52, 83],
            "balance": [-8019, 0, 1500, 102127],
            "churned": [0, 1, 1, 0],
            "products": [1, 2, 3, 2],
        }
    )
    path = tmp_path / "retail.csv"
    frame.to_csv(path, index=False)
    schema = draft_schema(path)
    dated = schema.field("last_purchase")
    assert (dated.type, dated.tier, dated.masking) == ("date", "sensitive", "year")
    masks = {n: schema.field(n).masking for n in ("monetary", "age", "balance", "churned", "products")}
    assert all(schema.field(n).tier == "sensitive" for n in masks)
    assert masks == {
        "monetary": "bucket:100",  # about ten buckets over the observed range, 1-2-5 widths
        "age": "bucket:10",
        "balance": "bucket:20000",
        "churned": "redact",  # a flag: buckets would show it or hide nothing
        "products": "redact",  # whole numbers too close together for buckets of 2 or more
    }
    assert (
        Schema.load(schema.save(tmp_path / "draft.yaml") or tmp_path / "draft.yaml").fields == schema.fields
    )


names = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(names, st.sampled_from(TYPES), st.sampled_from(TIERS), st.booleans()),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_any_valid_schema_round_trips_through_yaml(specs):
    fields = [FieldSpec("the_id", tier="core", role="id", validation=Validation(regex="^[0-9]+$"))]
    fields += [FieldSpec(n, type=t, tier=tier, nullable=nl) for n, t, tier, nl in specs if n != "the_id"]
    schema = Schema("ds", tuple(fields))
    assert Schema.from_yaml(schema.to_yaml()).fields == schema.fields


@pytest.mark.parametrize("reserved", ["pseudonym", "row_ts", "ingest_id", "row_digest"])
def test_reserved_store_column_names_are_refused(tmp_path, reserved):
    text = MINIMAL + f"  - name: {reserved}\n    type: string\n    tier: public\n"
    with pytest.raises(SchemaError, match=f"field '{reserved}': name is reserved"):
        Schema.load(write(tmp_path, text))


def test_too_many_fields_are_refused_with_a_clear_error(tmp_path):
    from fedcustomer.data.schema import MAX_COLUMNS

    extra = "".join(f"  - {{name: f{i}, type: integer, tier: public}}\n" for i in range(MAX_COLUMNS))
    with pytest.raises(
        SchemaError, match=f"{MAX_COLUMNS + 2} fields, more than the maximum of {MAX_COLUMNS}"
    ):
        Schema.load(write(tmp_path, MINIMAL + extra))


def test_drafting_a_very_wide_file_is_refused_from_its_header(tmp_path):
    from fedcustomer.errors import DataError

    path = tmp_path / "wide.csv"
    path.write_text(
        ",".join(["customer_id", *(f"c{i}" for i in range(20_000))])
        + "\n"
        + ",".join(["C1", *("1" for _ in range(20_000))])
        + "\n"
    )
    with pytest.raises(DataError, match="20001 columns, more than the maximum of 1000"):
        draft_schema(path)
