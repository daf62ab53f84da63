"""The synthetic federation: reproducible, overlapping, valid identifiers, learnable, non-IID."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score

from fedcustomer.data.features import FeatureSpec
from fedcustomer.data.synthetic import CLV_SPEC, REPAYMENT_SPEC, generate_federation
from fedcustomer.data.synthetic_people import (
    is_luhn_valid,
    is_valid_prc_id,
    luhn_check_digit,
    prc_id_check_char,
)
from fedcustomer.errors import ConfigError

CORE_BANK = ("national_id", "full_name", "phone")
CORE_RETAIL = ("full_name", "email", "card_number")


@pytest.fixture(scope="module")
def fed():
    return generate_federation(3, 2, seed=11)


def whole(p) -> pd.DataFrame:
    return pd.concat([p.train, p.test], ignore_index=True)


def test_same_seed_same_federation_other_seed_other_data():
    a = generate_federation(2, 1, customers_per_bank=(300, 200), customers_per_retailer=400, seed=5)
    b = generate_federation(2, 1, customers_per_bank=(300, 200), customers_per_retailer=400, seed=5)
    c = generate_federation(2, 1, customers_per_bank=(300, 200), customers_per_retailer=400, seed=6)
    for pa, pb in zip(a.partners, b.partners):
        pd.testing.assert_frame_equal(pa.train, pb.train)
        pd.testing.assert_frame_equal(pa.test, pb.test)
    assert a.shared_ids == b.shared_ids
    assert not a.banks[0].train["income"].equals(c.banks[0].train["income"])


def test_partner_names_kinds_and_sizes(fed):
    assert [p.name for p in fed.banks] == ["bank_north", "bank_south", "bank_east"]
    assert [p.name for p in fed.retailers] == ["retail_east", "retail_west"]
    assert [whole(p).shape[0] for p in fed.banks] == [4000, 2500, 6000]
    assert [whole(p).shape[0] for p in fed.retailers] == [5000, 3500]
    assert {p.kind for p in fed.banks} == {"bank"} and {p.kind for p in fed.retailers} == {"retailer"}
    for p in fed.partners:
        assert whole(p).customer_id.is_unique
        assert len(p.test) == pytest.approx(0.2 * whole(p).shape[0], abs=2)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.7])
def test_shared_fraction_is_honoured_for_every_pair(fraction):
    f = generate_federation(
        2,
        2,
        customers_per_bank=(400, 250),
        customers_per_retailer=(500, 300),
        shared_fraction=fraction,
        seed=1,
    )
    for bank in f.banks:
        for shop in f.retailers:
            actual = set(whole(bank).customer_id) & set(whole(shop).customer_id)
            expected = round(fraction * min(len(whole(bank)), len(whole(shop))))
            assert f.shared_ids[(bank.name, shop.name)] == actual
            assert len(actual) == expected


def test_many_partners_with_high_overlap_are_still_feasible():
    f = generate_federation(
        5,
        3,
        customers_per_bank=(300, 200, 400),
        customers_per_retailer=(350, 500),
        shared_fraction=0.7,
        seed=2,
    )
    for (b, r), ids in f.shared_ids.items():
        nb = len(whole(next(p for p in f.banks if p.name == b)))
        nr = len(whole(next(p for p in f.retailers if p.name == r)))
        assert len(ids) == round(0.7 * min(nb, nr))


def test_overlap_the_planner_cannot_meet_is_refused_not_silently_shrunk():
    with pytest.raises(ConfigError, match="lower shared_fraction"):
        generate_federation(
            4,
            2,
            customers_per_bank=(400, 250),
            customers_per_retailer=(500, 300),
            shared_fraction=0.8,
            seed=0,
        )


def test_shared_customers_carry_the_same_identity_at_bank_and_retailer(fed):
    bank, shop = whole(fed.banks[0]), whole(fed.retailers[0])
    joined = bank.merge(shop, on="customer_id", suffixes=("_b", "_r"))
    assert len(joined) == len(fed.shared_ids[(fed.banks[0].name, fed.retailers[0].name)])
    assert (joined.full_name_b == joined.full_name_r).all()
    assert (joined.region_b == joined.region_r).all()


def test_every_national_id_is_valid_unique_and_matches_age(fed):
    for bank in fed.banks:
        df = whole(bank)
        assert all(is_valid_prc_id(v) for v in df.national_id)
        assert df.national_id.str.len().eq(18).all()
        birth_year = df.national_id.str[6:10].astype(int)
        known = df.age.notna()
        implied_age = 2024 - birth_year[known]
        assert ((implied_age - df.age[known]).abs() <= 1).all()
    all_ids = pd.concat([whole(b)[["customer_id", "national_id"]] for b in fed.banks]).drop_duplicates()
    assert all_ids.national_id.is_unique


def test_every_card_number_is_luhn_valid_and_unique(fed):
    cards = pd.concat([whole(r)[["customer_id", "card_number"]] for r in fed.retailers]).drop_duplicates()
    assert all(is_luhn_valid(c) and len(c) == 16 for c in cards.card_number)
    assert cards.card_number.is_unique
    for r in fed.retailers:
        assert whole(r).email.str.contains(r"@example\.(?:com|net|org)$").all()


def test_check_digit_helpers_against_known_values():
    assert prc_id_check_char("11010519491231002") == "X"  # the standard published example ID
    assert is_valid_prc_id("11010519491231002X") and is_valid_prc_id("11010519491231002x")
    assert not is_valid_prc_id("110105194912310021")  # wrong check character
    assert not is_valid_prc_id("11010519490230002X")  # 30 February
    assert luhn_check_digit("7992739871") == "3"
    assert is_luhn_valid("79927398713") and not is_luhn_valid("79927398714")


@given(st.text(alphabet="0123456789", min_size=1, max_size=30))
def test_luhn_check_digit_always_validates_and_any_single_digit_change_breaks_it(partial):
    full = partial + luhn_check_digit(partial)
    assert is_luhn_valid(full)
    changed = full[:-2] + str((int(full[-2]) + 1) % 10) + full[-1] if len(full) >= 2 else full
    assert not is_luhn_valid(changed)


def test_default_rates_differ_across_banks_within_realistic_range(fed):
    rates = [whole(b).defaulted.mean() for b in fed.banks]
    assert all(0.06 <= r <= 0.32 for r in rates)
    assert max(rates) - min(rates) > 0.08


def test_banks_have_different_regional_mixes(fed):
    for bank in fed.banks:
        home = bank.name.removeprefix("bank_")
        assert whole(bank).region.value_counts(normalize=True).idxmax() == home


def test_missing_values_appear_at_the_requested_rate_in_a_few_columns(fed):
    bank = whole(fed.banks[2])
    for col in ("income", "months_on_book", "debt_to_income"):
        assert 0.015 < bank[col].isna().mean() < 0.05
    assert bank[["age", "credit_limit", "defaulted", "national_id"]].notna().all().all()
    none = generate_federation(
        1, 1, customers_per_bank=300, customers_per_retailer=300, missing_rate=0.0, seed=0
    )
    assert not whole(none.banks[0]).isna().any().any()


def test_core_columns_are_present_but_never_features(fed):
    for spec, partners, core in (
        (REPAYMENT_SPEC, fed.banks, CORE_BANK),
        (CLV_SPEC, fed.retailers, CORE_RETAIL),
    ):
        names = {f.name for f in spec.features}
        assert names.isdisjoint(core)
        df = whole(partners[0])
        assert set(core) <= set(df.columns) and {"region", "updated_at"} <= set(df.columns)
        assert isinstance(df.updated_at.dtype, pd.DatetimeTZDtype)
        assert set(spec.columns()) <= set(df.columns)


def test_latent_traits_cover_every_customer_and_are_not_in_partner_frames(fed):
    ids = set().union(*(set(whole(p).customer_id) for p in fed.partners))
    assert set(fed.latent.index) == ids
    assert {"income", "risk_appetite", "spending_propensity"} <= set(fed.latent.columns)
    for p in fed.partners:
        assert not {"risk_appetite", "spending_propensity"} & set(p.train.columns)


def test_repayment_is_learnable_by_a_central_logistic_regression(fed):
    bank = fed.banks[0]
    x, y = REPAYMENT_SPEC.transform(bank.train)
    xt, yt = REPAYMENT_SPEC.transform(bank.test)
    auc = roc_auc_score(yt, LogisticRegression(max_iter=500).fit(x, y).predict_proba(xt)[:, 1])
    assert 0.72 <= auc <= 0.88


def test_clv_is_learnable_by_a_central_linear_model(fed):
    shop = fed.retailers[0]
    x, y = CLV_SPEC.transform(shop.train)
    xt, yt = CLV_SPEC.transform(shop.test)
    rho = spearmanr(yt, Ridge().fit(x, y).predict(xt)).statistic
    assert rho > 0.4


def test_retail_behaviour_is_informative_about_repayment(fed):
    bank, shop = whole(fed.banks[2]), whole(fed.retailers[0])
    joined = bank.merge(shop, on="customer_id", suffixes=("", "_retail"))
    retail_only = FeatureSpec(
        "repayment", "defaulted", None, [f for f in CLV_SPEC.features if f.name not in ("age", "region")]
    )
    x, y = retail_only.transform(joined)
    half = len(y) // 2
    model = LogisticRegression(max_iter=500).fit(x[:half], y[:half])
    assert roc_auc_score(y[half:], model.predict_proba(x[half:])[:, 1]) > 0.6


def test_bank_data_is_informative_about_clv(fed):
    bank, shop = whole(fed.banks[2]), whole(fed.retailers[0])
    joined = shop.merge(bank, on="customer_id", suffixes=("", "_bank"))
    bank_only = FeatureSpec(
        "clv", "future_spend", None, [f for f in REPAYMENT_SPEC.features if f.name not in ("age", "region")]
    )
    x, y = bank_only.transform(joined)
    half = len(y) // 2
    rho = spearmanr(y[half:], Ridge().fit(x[:half], y[:half]).predict(x[half:])).statistic
    assert rho > 0.2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shared_fraction": 1.5}, "shared_fraction"),
        ({"missing_rate": -0.1}, "missing_rate"),
        ({"customers_per_bank": (5,)}, "at least 10"),
        ({"n_banks": 0, "n_retailers": 0}, "at least one partner"),
    ],
)
def test_invalid_generator_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_federation(**kwargs)


def test_reference_day_keeps_birth_dates_in_the_past(fed):
    births = whole(fed.banks[0]).national_id.map(lambda v: date(int(v[6:10]), int(v[10:12]), int(v[12:14])))
    assert (births < date(2024, 6, 30)).all()
