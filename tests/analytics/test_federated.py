"""Queries as query.analytics messages: combining partners, refusals, RFM against true values."""

from __future__ import annotations

import numpy as np
import pytest

from fedcustomer.analytics import rfm
from fedcustomer.analytics.customer import quality_query, rfm_query
from fedcustomer.analytics.partner import answer_query, ledger_for
from fedcustomer.analytics.runner import run_inprocess, true_partials, truth_rows
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import AccessDenied, BudgetExhausted
from fedcustomer.partner.home import PartnerHome

from .conftest import REGIONS


def test_combined_count_is_the_sum_of_the_partners_noisy_releases(homes: list[PartnerHome]) -> None:
    spec = QuerySpec(
        dataset="retailer",
        kind="count",
        group_by=("region",),
        groups={"region": tuple(REGIONS)},
        epsilon=1.0,
        query_id="q-fed",
    )
    result = run_inprocess(homes, spec)
    releases = [answer_query(h, spec) for h in homes]  # replays: the same noisy values, no new charge
    expected = np.sum([r["stats"]["count"] for r in releases], axis=0)
    assert [r["estimate"] for r in result.rows] == pytest.approx(expected.tolist())
    assert sorted(result.partners) == sorted(h.config().name for h in homes)
    for h in homes:
        assert [c.query_id for c in ledger_for(h, "retailer").charges()] == ["q-fed"]
    row = result.row("count", region="north")
    assert row["noise_sd"] == pytest.approx(np.sqrt(3 * 2.0))  # three Laplace(1) draws


def test_partner_out_of_budget_is_listed_and_left_out(homes: list[PartnerHome]) -> None:
    answer_query(homes[0], QuerySpec(dataset="retailer", kind="count", epsilon=4.9, query_id="q-drain"))
    result = run_inprocess(homes, QuerySpec(dataset="retailer", kind="count", epsilon=1.0, query_id="q-next"))
    name = homes[0].config().name
    assert name not in result.partners and "BudgetExhausted" in result.refused[name]
    assert len(result.partners) == 2


def test_query_refused_by_every_partner_raises_their_common_error(homes: list[PartnerHome]) -> None:
    with pytest.raises(BudgetExhausted):
        run_inprocess(homes, QuerySpec(dataset="retailer", kind="count", epsilon=6.0))
    with pytest.raises(AccessDenied):
        run_inprocess(homes, QuerySpec(dataset="retailer", kind="count", field="email", epsilon=1.0))
    for h in homes:
        assert ledger_for(h, "retailer").charges() == []


def test_rfm_segment_intervals_contain_the_true_sizes(homes: list[PartnerHome]) -> None:
    spec = rfm_query("retailer", rfm.SYNTHETIC_RETAILER, epsilon=1.0, confidence=0.9999)
    result = run_inprocess(homes, spec)
    truth = truth_rows(spec, true_partials(homes, spec))
    assert sum(t["count"] for t in truth) == 600
    for row, t in zip(result.rows, truth):
        assert row["count"]["ci_low"] <= t["count"] <= row["count"]["ci_high"]
        assert row["ci_low"] <= t["truth"] <= row["ci_high"]


def test_quality_report_gives_completeness_per_partner(homes: list[PartnerHome]) -> None:
    result = run_inprocess(homes, quality_query("retailer", ["age", "region"], epsilon=2.0))
    assert set(result.partner_rows) == {h.config().name for h in homes}
    rows = {(r["statistic"], r["label"]): r for r in result.partner_rows[homes[0].config().name]}
    assert rows[("completeness", "region")]["ci_high"] == 1.0
    assert 0.0 <= rows[("completeness", "age")]["estimate"] <= 1.0
    assert ("duplicates", None) in rows and ("invalid", None) in rows


def test_asking_a_query_id_again_says_the_answer_is_the_earlier_paid_one(homes: list[PartnerHome]) -> None:
    spec = QuerySpec(dataset="retailer", kind="count", epsilon=0.5, query_id="q-twice")
    first = run_inprocess(homes, spec)
    assert not any("answered before" in note for note in first.notes)
    again = run_inprocess(homes, spec)
    assert again.rows == first.rows  # the same noisy answer, not a fresh draw
    replay_notes = [note for note in again.notes if "answered before" in note]
    assert len(replay_notes) == 1 and "'q-twice'" in replay_notes[0]
    assert all(home.config().name in replay_notes[0] for home in homes)


def test_a_negative_noisy_count_is_reported_as_zero_inside_its_interval() -> None:
    # found by a new-user trial: "duplicates -168.7 [0, 119.2]", an estimate outside its own interval
    from fedcustomer.analytics.combine import combine

    spec = QuerySpec(dataset="retailer", kind="count", epsilon=1.0, query_id="q-small")
    release = {
        "query_id": "q-small",
        "kind": "count",
        "partner": "p1",
        "mechanism": "laplace",
        "normalised_scale": 1.0,
        "weights": {"count": 1.0},
        "stats": {"count": [-2.5]},
    }
    [row] = combine(spec, [release]).rows
    assert (
        row["estimate"] == 0.0 and row["noisy_estimate"] == -2.5
    )  # post-processing; the noisy value is kept
    assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and row["ci_low"] == 0.0
