"""A partner's answer: policy, ledger (charged before release, refusals charge nothing), audit, replays."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedcustomer.analytics.partner import answer_query, ledger_for
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import AccessDenied, BudgetExhausted, ConfigError, SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.privacy.dp.budget import DatasetBudget

from .conftest import REGIONS


def _count(eps: float = 1.0, qid: str = "q-count", **kw) -> QuerySpec:
    return QuerySpec(
        dataset="retailer",
        kind="count",
        group_by=("region",),
        groups={"region": tuple(REGIONS)},
        epsilon=eps,
        query_id=qid,
        **kw,
    )


def _query_entries(home: PartnerHome) -> list:
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    try:
        return list(log.query(action="query"))
    finally:
        log.close()


def test_answer_charges_the_ledger_and_writes_one_audit_entry(homes: list[PartnerHome]) -> None:
    home = homes[0]
    release = answer_query(home, _count(0.8))
    charges = ledger_for(home, "retailer").charges()
    assert [(c.query_id, c.epsilon, c.mechanism) for c in charges] == [("q-count", 0.8, "laplace")]
    assert release["spend"]["epsilon_total"] == pytest.approx(0.8)
    [entry] = _query_entries(home)
    assert entry.decision == "allowed" and entry.details["query_id"] == "q-count"
    assert entry.details["epsilon"] == 0.8 and list(entry.fields) == ["region"]


def test_gaussian_query_is_charged_as_one_full_batch_gaussian_step(homes: list[PartnerHome]) -> None:
    answer_query(homes[0], _count(1.0, "q-gauss", mechanism="gaussian", delta=1e-7))
    [c] = ledger_for(homes[0], "retailer").charges()
    assert (c.family, c.sample_rate, c.steps, c.query_id) == ("gaussian_rdp", 1.0, 1, "q-gauss")
    assert c.noise_multiplier > 0


def test_a_pld_partners_gaussian_query_is_sized_and_charged_with_pld(homes: list[PartnerHome]) -> None:
    from fedcustomer.privacy.dp.recompute import recompute

    rdp_release = answer_query(homes[1], _count(1.0, "q-rdp", mechanism="gaussian", delta=1e-5))
    config = homes[0].config()
    config.accountant = "pld"
    homes[0].write_config(config)
    release = answer_query(homes[0], _count(1.0, "q-pld", mechanism="gaussian", delta=1e-5))
    assert (release["accountant"], release["pld_interval"]) == ("pld", 1e-4)
    assert rdp_release["accountant"] == "rdp"
    assert release["normalised_scale"] < rdp_release["normalised_scale"] * 0.95  # less noise, same epsilon
    [c] = ledger_for(homes[0], "retailer").charges()
    assert (c.accountant, c.details["calibrated_with"], c.details["calibration_pld_interval"]) == (
        "pld",
        "pld",
        1e-4,
    )
    assert c.noise_multiplier == release["noise_multiplier"]
    assert 0.999 < c.epsilon <= 1.0 and c.epsilon_total == pytest.approx(
        c.epsilon
    )  # the query's epsilon, alone
    assert all(check.ok for check in recompute(ledger_for(homes[0], "retailer").all_charges()))
    [entry] = _query_entries(homes[0])
    assert entry.details["accountant"] == "pld"


def test_exhausted_budget_refuses_and_charges_nothing(homes: list[PartnerHome]) -> None:
    home = homes[0]
    answer_query(home, _count(4.0, "q-big"))
    with pytest.raises(BudgetExhausted, match="past this partner's target"):
        answer_query(home, _count(2.0, "q-over"))
    ledger = ledger_for(home, "retailer")
    assert [c.query_id for c in ledger.charges()] == ["q-big"]
    assert [r["charge_key"] for r in ledger.refusals()] == ["query:q-over"]
    assert not (home.state_dir / "queries" / "q-over.json").exists()
    assert [e.decision for e in _query_entries(home)] == ["allowed", "denied"]
    # refused before any customer was read (found by a new-user trial: a read entry preceded the refusal)
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    try:
        reads = [e.seq for e in log.query(action="read", purpose="analytics")]
    finally:
        log.close()
    assert len(reads) == 1 and reads[0] < _query_entries(home)[0].seq


def test_query_on_a_core_field_is_refused_by_policy_and_charges_nothing(homes: list[PartnerHome]) -> None:
    home = homes[0]
    with pytest.raises(AccessDenied, match="card_number"):
        answer_query(
            home,
            QuerySpec(dataset="retailer", kind="count", field="card_number", epsilon=0.5, query_id="q-core"),
        )
    assert ledger_for(home, "retailer").charges() == []
    [entry] = _query_entries(home)
    assert entry.decision == "denied" and "card_number" in entry.fields


def test_grouping_by_a_sensitive_field_is_refused(homes: list[PartnerHome]) -> None:
    spec = QuerySpec(
        dataset="retailer", kind="count", group_by=("age",), groups={"age": ("30", "40")}, epsilon=0.5
    )
    with pytest.raises(AccessDenied, match="public"):
        answer_query(homes[0], spec)
    assert ledger_for(homes[0], "retailer").charges() == []


def test_same_query_id_returns_the_same_release_without_paying_twice(homes: list[PartnerHome]) -> None:
    first = answer_query(homes[0], _count(1.0, "q-retry"))
    again = answer_query(homes[0], _count(1.0, "q-retry"))
    assert again["stats"] == first["stats"] and again["already_paid"] is True
    assert len(ledger_for(homes[0], "retailer").charges()) == 1


def test_a_replayed_answer_reports_the_partners_spend_now_not_as_it_stood_when_paid(
    homes: list[PartnerHome],
) -> None:
    first = answer_query(homes[0], _count(1.0, "q-then"))
    answer_query(homes[0], _count(0.5, "q-later"))
    again = answer_query(homes[0], _count(1.0, "q-then"))
    assert first["spend"]["epsilon_total"] == pytest.approx(1.0)
    assert again["spend"]["epsilon_total"] == pytest.approx(1.5)  # everything released since counts
    assert again["spend"]["epsilon_total_when_paid"] == pytest.approx(1.0)
    assert "epsilon_total_when_paid" not in first["spend"]


def test_reusing_a_query_id_for_another_query_is_refused(homes: list[PartnerHome]) -> None:
    answer_query(homes[0], _count(1.0, "q-same"))
    with pytest.raises(ConfigError, match="different query"):
        answer_query(homes[0], _count(0.5, "q-same"))


def test_partner_without_a_store_reads_through_the_given_loader(tmp_path: Path) -> None:
    home = PartnerHome.create(tmp_path / "p", "p", budget=DatasetBudget(2.0, 1e-5))
    frame = pd.DataFrame({"funnel_stage": ["visit"] * 50 + ["cart"] * 30 + ["buy"] * 20})
    seen = []

    def load(h: PartnerHome, dataset: str, fields: list[str]) -> pd.DataFrame:
        seen.append((dataset, list(fields)))
        return frame

    spec = QuerySpec(
        dataset="events",
        kind="funnel",
        field="funnel_stage",
        steps=("visit", "cart", "buy"),
        epsilon=1.0,
        query_id="q-funnel",
    )
    release = answer_query(home, spec, load_frame=load)
    assert seen == [("events", ["funnel_stage"])]
    assert len(release["stats"]["hist"][0]) == 3
    assert ledger_for(home, "events").charges()[0].query_id == "q-funnel"


def test_a_group_or_filter_value_the_schema_does_not_declare_is_refused_before_anything_is_paid(
    homes: list[PartnerHome],
) -> None:
    # `month-to-month` for the declared `Month-to-month`, and `Weekly` (no such contract), matched no customer:
    # the query released empty cells and still cost epsilon (found by a new-user trial).
    home = homes[0]
    before = _query_entries(home)
    with pytest.raises(ConfigError) as refused:
        answer_query(
            home,
            QuerySpec(
                dataset="retailer",
                kind="count",
                group_by=("region",),
                groups={"region": ("North", "south", "Mars")},
                epsilon=0.5,
                query_id="q-typo",
            ),
        )
    message = str(refused.value)
    assert (
        "'North', 'Mars' are not among the values" in message and "'North' (declared as 'north')" in message
    )
    assert "nothing was read or charged" in message
    with pytest.raises(ConfigError, match="'2' are not among"):
        answer_query(home, _count(0.5, "q-where", where={"loyalty_member": (2,)}))
    assert ledger_for(home, "retailer").charges() == []
    after = _query_entries(home)
    assert [e.decision for e in after[len(before) :]] == ["denied", "denied"]  # refused, audited, unpaid
    answer_query(home, _count(0.5, "q-ok", where={"loyalty_member": (1,)}))  # a declared value still answers


def test_a_homes_query_entry_names_its_asker_and_the_registered_service_that_made_its_read(
    tmp_path: Path,
) -> None:
    # The query entry said `node:telco_east` (a name made up by the code) while its read said
    # `node:telco_east:analytics` (the registered key), so `audit query --actor` found one of the two
    # (found by a new-user trial).
    from fedcustomer.analytics.partner import partner_actor
    from tests.data.test_ingest import bank_frame
    from tests.people import people_home

    store, people = people_home(tmp_path)
    path = tmp_path / "bank.csv"
    bank_frame(40).to_csv(path, index=False)
    import fedcustomer.data
    from fedcustomer.data.schema import Schema

    bank = Schema.load(Path(fedcustomer.data.__file__).parent / "schemas" / "bank.yaml")
    store.ingest(people["alice"].signer, bank, path)
    home = store.home
    store.close()
    config = home.config()
    config.budget = DatasetBudget(3.0, 1e-5)
    home.write_config(config)
    spec = QuerySpec(
        dataset="bank",
        kind="count",
        group_by=("region",),
        groups={"region": ("north", "south", "east", "west", "central")},
        epsilon=0.5,
        query_id="q-who",
    )
    from fedcustomer.analytics.requester import sign_query

    answer_query(home, spec, requests=sign_query(people["dana"].signer, spec, ["bank"]))  # dana asks
    log = AuditLog.open(home.audit_dir, keys_dir=home.keys_dir)
    try:
        [query] = log.query(action="query", decision="allowed")
        reads = [e for e in log.query(action="read") if e.purpose == "analytics"]
    finally:
        log.close()
    # the read is the registered analytics service's; the query is dana's, who signed it, and names the service
    assert reads[-1].actor != partner_actor(home).name and reads[-1].role == "data_scientist"
    assert (query.actor, query.role, query.details["service"]) == ("dana", "data_scientist", reads[-1].actor)


def test_a_mistake_in_a_query_is_named_before_the_reuse_of_its_id(homes: list[PartnerHome]) -> None:
    # found by a new-user trial: a typo in a query whose id had been paid for before was reported only as
    # "query id ... was already used for a different query", hiding the typo
    home = homes[0]
    answer_query(home, _count(0.5, "q-reused"))
    typo = QuerySpec(
        dataset="retailer", kind="mean", field="spendd", bounds=(0, 100), epsilon=0.5, query_id="q-reused"
    )
    with pytest.raises(SchemaError, match=r"has no field\(s\) spendd; known fields: .*region"):
        answer_query(home, typo)
    with pytest.raises(ConfigError, match="already used for a different query"):
        answer_query(home, _count(0.7, "q-reused"))  # a valid query: only then is the id's reuse the problem
    assert [c.query_id for c in ledger_for(home, "retailer").charges()] == ["q-reused"]
