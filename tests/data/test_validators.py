"""Checksums and column validation: pure functions, so property tests drive them hard."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustomer.data.schema import Schema
from fedcustomer.data.validators import (
    FRACTION_REASON,
    INTEGER_REASON,
    NOT_A_NUMBER_REASON,
    allowed_spelling,
    luhn_valid,
    prc_id_check_char,
    prc_id_valid,
    validate_column,
    validate_frame,
    validate_row,
)

digits = st.text(alphabet="0123456789", min_size=17, max_size=17)


def make_prc(first17: str) -> str:
    return first17 + prc_id_check_char(first17)


def luhn_complete(partial: str) -> str:
    for d in "0123456789":
        if luhn_valid(partial + d):
            return partial + d
    raise AssertionError("no Luhn digit")


def test_prc_id_known_examples():
    # Published GB 11643 example: check character X.
    assert prc_id_valid("11010519491231002X")
    assert prc_id_valid("11010519491231002x")  # lower-case x accepted
    assert not prc_id_valid("110105194912310021")
    assert prc_id_check_char("11010519491231002") == "X"


@pytest.mark.parametrize(
    "bad", ["", "11010519491231002", "11010519491231002XX", "1101051949123100AX", None, 123]
)
def test_prc_id_rejects_wrong_shapes(bad):
    assert not prc_id_valid(bad)


@given(digits)
def test_generated_prc_ids_are_valid(first17):
    assert prc_id_valid(make_prc(first17))


@given(digits, st.integers(0, 17), st.integers(1, 10))
def test_any_single_character_change_of_a_prc_id_is_caught(first17, pos, shift):
    valid = make_prc(first17)
    alphabet = "0123456789X" if pos == 17 else "0123456789"
    current = alphabet.index(valid[pos])
    replacement = alphabet[(current + shift) % len(alphabet)]
    if replacement == valid[pos]:
        return
    changed = valid[:pos] + replacement + valid[pos + 1 :]
    assert not prc_id_valid(changed)


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_luhn_completed_numbers_are_valid(partial):
    assert luhn_valid(luhn_complete(partial))


@given(st.text(alphabet="0123456789", min_size=12, max_size=18), st.data())
def test_any_single_digit_change_of_a_card_number_is_caught(partial, data):
    card = luhn_complete(partial)
    pos = data.draw(st.integers(0, len(card) - 1))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != card[pos]]))
    assert not luhn_valid(card[:pos] + new + card[pos + 1 :])


def test_luhn_known_examples_and_separators():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("4111-1111-1111-1111")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111")  # too short
    assert not luhn_valid("4111a11111111111")


SCHEMA = Schema.from_yaml(
    """
dataset: t
fields:
  - {name: cid, type: string, tier: core, role: id, validation: {regex: "C[0-9]+"}}
  - {name: nid, type: string, tier: core, validation: {checksum: prc_id}}
  - {name: age, type: integer, tier: sensitive, validation: {min: 18, max: 100}}
  - {name: income, type: float, tier: sensitive, nullable: true, validation: {min: 0}}
  - {name: member, type: boolean, tier: public, nullable: true}
  - {name: seen, type: date, tier: public, role: timestamp, validation: {min: "2000-01-01"}}
  - {name: region, type: category, tier: public, validation: {allowed: [north, south]}}
  - {name: grade, type: integer, tier: public, nullable: true, validation: {allowed: [0, 1]}}
"""
)
GOOD = {
    "cid": "C1",
    "nid": make_prc("11010519800101123"),
    "age": "30",
    "income": "1200.5",
    "member": "yes",
    "seen": "2024-01-31",
    "region": "north",
    "grade": "1",
}


def test_valid_row_has_no_reasons():
    assert validate_row(SCHEMA, GOOD) == {}


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("cid", "X1", "does not match the required pattern"),
        ("cid", "", "missing required value"),
        ("nid", GOOD["nid"][:-1] + ("0" if GOOD["nid"][-1] != "0" else "1"), "fails the prc_id checksum"),
        ("age", "17", "below minimum 18"),
        ("age", "101", "above maximum 100"),
        ("age", "30.5", FRACTION_REASON),
        ("age", "abc", NOT_A_NUMBER_REASON),
        ("age", "inf", NOT_A_NUMBER_REASON),
        ("age", "1e20", INTEGER_REASON),
        ("income", "lots", "not a number"),
        ("income", "-1", "below minimum 0"),
        ("income", "inf", "not a number"),
        ("member", "maybe", "not a boolean (true/false, 1/0, yes/no)"),
        ("seen", "2024-02-30", "not a date (YYYY-MM-DD)"),
        ("seen", "1999-12-31", "before 2000-01-01"),
        ("region", "mars", "not one of the allowed values"),
        ("grade", "2", "not one of the allowed values"),
    ],
)
def test_each_rule_gives_its_reason(field, value, reason):
    assert validate_row(SCHEMA, {**GOOD, field: value}) == {field: reason}


def test_text_in_an_integer_column_is_not_blamed_on_the_integer_range():
    # A label spelled "good"/"bad" where the schema says integer: the reason must point at the text, not
    # suggest a string type for large numbers (found by a new-user trial).
    parsed, bad = validate_column(
        SCHEMA.fields[2], pd.Series(["bad", "30.5", str(2**60), "40"], dtype="string")
    )
    assert bad == {0: NOT_A_NUMBER_REASON, 1: FRACTION_REASON, 2: INTEGER_REASON}
    assert parsed.iloc[3] == 40


def test_reasons_never_quote_the_value():
    secret = "C99999999"
    reasons = validate_row(SCHEMA, {**GOOD, "nid": secret, "age": secret})
    assert reasons and all(secret not in r for r in reasons.values())


def test_integer_accepts_float_text_of_whole_numbers_and_missing_when_nullable():
    parsed, bad = validate_column(SCHEMA.fields[7], pd.Series(["1.0", "", "0"], dtype="string"))
    assert bad == {}
    assert parsed.iloc[0] == 1 and pd.isna(parsed.iloc[1]) and parsed.iloc[2] == 0


def test_validate_frame_reports_rows_by_position_and_counts_missing():
    frame = pd.DataFrame([GOOD, {**GOOD, "age": "5"}, {**GOOD, "income": ""}], dtype="string")
    result = validate_frame(SCHEMA, frame)
    assert result.reasons == {1: {"age": "below minimum 18"}}
    assert result.valid_mask.tolist() == [True, False, True]
    assert result.missing["income"] == 1
    assert result.values["age"].dtype == "float64"


@settings(max_examples=50)
@given(st.integers(18, 100), st.floats(0, 1e9, allow_nan=False))
def test_numbers_round_trip_through_validation(age, income):
    parsed = validate_frame(
        SCHEMA, pd.DataFrame([{**GOOD, "age": str(age), "income": repr(income)}], dtype="string")
    )
    assert parsed.reasons == {}
    assert parsed.values["age"].iloc[0] == age
    assert parsed.values["income"].iloc[0] == income


def test_categories_match_ignoring_case_and_width_and_keep_the_schemas_spelling():
    region = next(f for f in SCHEMA.fields if f.name == "region")
    raw = pd.Series(["NORTH", " South ", "\uff4e\uff4f\uff52\uff54\uff48", "north", "mars"], dtype="string")
    parsed, bad = validate_column(region, raw)
    assert parsed.tolist()[:4] == ["north", "south", "north", "north"]
    assert bad == {4: "not one of the allowed values"}


def test_allowed_values_that_differ_only_in_case_must_match_exactly():
    raw = pd.Series(["a", "A", "\uff41", "b"], dtype="string")
    assert allowed_spelling(raw, ("a", "A")).tolist() == ["a", "A", "\uff41", "b"]
    assert allowed_spelling(raw, ("A", "b")).tolist() == ["A", "A", "A", "b"]
