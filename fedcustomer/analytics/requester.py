"""Who asked a query: a person's signed request, verified by every partner against its own registry.

A query spends each partner's privacy budget and reads its customers through the node, so,
like every governance action, it is attributed to an authenticated person, never to a name
typed into a query file. The person signs one request per partner (``query --identity FILE``):
bound to that partner's name, the query's dataset, fields and purpose, its id and the SHA-256 of
its whole spec, with a fresh nonce and time. Each partner with a people registry verifies the
request for its own name (a registered, unrevoked key, a fresh nonce, the same query), and the
person's registered role must be allowed to read customer data (the policy's ``read``), the
right a query exercises through the node. The query's audit entry and ledger row then name the
person as the registry does. A partner without a registry (a simulated or development home) has
nobody to check against: its entry says the requester was not authenticated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.errors import AccessDenied
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.access.requests import SignedRequest, sign_request

ACTION = "query"  # the signed request's action (what the person asks partners to do)
PERMISSION = "read"  # the policy's non-data action a requester's role must hold
PURPOSE = "analytics"


def spec_sha256(spec: QuerySpec) -> str:
    """The digest a signed request binds: the whole spec as the partners receive it."""
    return hashlib.sha256(spec.to_json().encode("utf-8")).hexdigest()


def _bound(spec: QuerySpec) -> dict[str, Any]:
    """What a request for ``spec`` must name, besides its partner, key, time and nonce."""
    return {
        "action": ACTION,
        "dataset": spec.dataset,
        "fields": spec.source_fields(),
        "purpose": PURPOSE,
        "extra": {"query_id": spec.query_id, "spec_sha256": spec_sha256(spec)},
    }


def sign_query(signer: Any, spec: QuerySpec, partners: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One signed request per partner name, as sent with the query (JSON-ready)."""
    return {name: sign_request(signer, partner=name, **_bound(spec)).to_dict() for name in partners}


def verify_requester(store: Any, spec: QuerySpec, requests: Mapping[str, Any] | None) -> Actor:
    """The registered person who signed this partner's request for ``spec``; AccessDenied otherwise.

    Call only on a store with a people registry. A refused signature is audited by the store
    (``store.principal``) before it is raised; a missing request is raised for the caller to
    audit with the query's refusal. Whether the person may ask is :func:`refusal_for`'s answer.
    """
    raw = (requests or {}).get(store.name)
    if raw is None:
        raise AccessDenied(
            f"query {spec.query_id} is not signed by a registered person: partner {store.name!r} has a people "
            "registry, so whoever asks signs the query with their identity key (query --identity FILE)"
        )
    bound = _bound(spec)
    person = store.principal(
        SignedRequest.from_dict(raw),
        action=ACTION,
        audit_action=ACTION,
        dataset=bound["dataset"],
        fields=bound["fields"],
        purpose=PURPOSE,
        extra=bound["extra"],
    )
    return Actor(person.name, person.role)


def refusal_for(store: Any, person: Actor) -> AccessDenied | None:
    """Why ``person`` may not ask queries of this partner (their role lacks ``read``), or None."""
    try:
        store.policy.require(person, PERMISSION)
    except AccessDenied as exc:
        return exc
    return None
