"""Who asked a query: a person's signed request, checked by each partner against its own registry.

Found by a new-user trial: a query's audit entry named whoever the query file's `requested_by`
said, so anyone could spend a partner's budget in someone else's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.analytics.partner import answer_query, ledger_for
from fedcustomer.analytics.requester import sign_query
from fedcustomer.analytics.runner import run_inprocess
from fedcustomer.analytics.spec import QuerySpec, load_spec
from fedcustomer.data.people_admin import PeopleAdmin
from fedcustomer.data.store import PartnerStore
from fedcustomer.errors import AccessDenied, ConfigError
from fedcustomer.partner.home import PartnerHome
from tests.people import Person, make_person

from .conftest import REGIONS
from .test_partner import _query_entries


@pytest.fixture
def cast(tmp_path: Path) -> dict[str, Person]:
    keys = tmp_path / "people-keys"
    return {
        name: make_person(keys, name, role)
        for name, role in {
            "alice": "partner_admin",
            "dana": "data_scientist",
            "carol": "compliance_officer",
            "eve": "data_scientist",  # never registered anywhere
        }.items()
    }


@pytest.fixture
def people_homes(homes: list[PartnerHome], cast: dict[str, Person]) -> list[PartnerHome]:
    """The simulated partners, each with a people registry: alice its admin, dana and carol added."""
    for home in homes:
        with PartnerStore.open(home) as store:
            admin = PeopleAdmin(store)
            admin.create(cast["alice"].signer, "alice")
            for name in ("dana", "carol"):
                admin.add(cast["alice"].signer, cast[name].signer.public_key, name, cast[name].role)
    return homes


def _spec(qid: str) -> QuerySpec:
    return QuerySpec(
        dataset="retailer",
        kind="count",
        group_by=("region",),
        groups={"region": tuple(REGIONS)},
        epsilon=0.5,
        query_id=qid,
    )


def _names(homes: list[PartnerHome]) -> list[str]:
    return [h.config().name for h in homes]


def test_a_signed_query_names_the_person_in_every_partners_entry_and_ledger(
    people_homes: list[PartnerHome], cast: dict[str, Person]
) -> None:
    spec = _spec("q-dana")
    result = run_inprocess(
        people_homes, spec, requests=sign_query(cast["dana"].signer, spec, _names(people_homes))
    )
    assert sorted(result.partners) == sorted(_names(people_homes))
    for home in people_homes:
        allowed = [e for e in _query_entries(home) if e.decision == "allowed"]
        assert [
            (e.actor, e.details["requested_by"], e.details["requester_authenticated"]) for e in allowed
        ] == [
            ("dana", "dana", True)
        ]  # `audit query --actor dana` finds the queries she asked (found by a second trial)
        [charge] = ledger_for(home, "retailer").charges()
        assert charge.details["requested_by"] == "dana"


@pytest.mark.parametrize(
    "who, why",
    [
        (None, "is not signed by a registered person"),
        ("eve", "eve"),  # a key no partner registered
        ("carol", "may not 'read'"),  # registered, but her role does not read customer data
    ],
)
def test_an_unsigned_unknown_or_unentitled_requester_is_refused_and_nothing_is_charged(
    people_homes: list[PartnerHome], cast: dict[str, Person], who: str | None, why: str
) -> None:
    spec = _spec(f"q-{who}")
    requests = None if who is None else sign_query(cast[who].signer, spec, _names(people_homes))
    with pytest.raises(AccessDenied) as refused:
        run_inprocess(people_homes, spec, requests=requests)
    if who != "eve":
        assert why in str(refused.value)
    for home in people_homes:
        assert ledger_for(home, "retailer").charges() == []
        denied = [e for e in _query_entries(home) if e.decision == "denied"]
        assert denied
        if who == "carol":  # authenticated, then refused: the refusal names her
            assert [(e.actor, e.details["requested_by"]) for e in denied] == [("carol", "carol")]


def test_a_request_signed_for_another_query_or_partner_or_replayed_is_refused(
    people_homes: list[PartnerHome], cast: dict[str, Person]
) -> None:
    home, other = people_homes[0], people_homes[1]
    name = home.config().name
    signed = sign_query(cast["dana"].signer, _spec("q-first"), [name, other.config().name])
    with pytest.raises(AccessDenied, match="does not match"):
        answer_query(home, _spec("q-second"), requests=signed)  # another query: another id and digest
    with pytest.raises(AccessDenied, match="differs in: partner"):  # another partner's request, passed on
        answer_query(home, _spec("q-first"), requests={name: signed[other.config().name]})
    answer_query(home, _spec("q-first"), requests=signed)
    with pytest.raises(AccessDenied):
        answer_query(home, _spec("q-first"), requests=signed)  # the same signed request again: a replay
    assert [c.query_id for c in ledger_for(home, "retailer").charges()] == ["q-first"]


def test_a_home_without_registry_records_that_nobody_was_authenticated(homes: list[PartnerHome]) -> None:
    answer_query(homes[0], _spec("q-dev"))
    [entry] = _query_entries(homes[0])
    assert entry.details["requested_by"] is None and entry.details["requester_authenticated"] is False


def test_a_query_file_cannot_name_its_requester(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(
        json.dumps({"dataset": "retailer", "kind": "count", "epsilon": 0.5, "requested_by": "uma"})
    )
    with pytest.raises(ConfigError, match="'requested_by' is not a query file key"):
        load_spec(path)
