"""A partner answers one analytics query: read, aggregate, noise, charge, audit, release.

Order matters for privacy:

1. the data is read through the governed store (policy-checked, audited) as
   ``node:<name>`` in role ``data_scientist`` for purpose ``analytics``;
2. the true aggregate is noised at once (OpenDP) and the noisy release is written to
   ``state/queries/<query id>.json`` before anything leaves;
3. the ledger is charged (``query:<query id>``, same ledger and dataset as training);
   a refusal deletes the pending release, charges nothing and raises BudgetExhausted;
4. one audit entry ``query`` (allowed or denied) records the id, fields and cost.

Steps 2-3 are the privacy layer's one release path (``privacy.dp.release``). A query id is
answered once: asking again returns the same noisy release without a new charge, so a
retried or restarted node can neither pay twice nor leak a second draw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedcustomer.analytics import mechanisms
from fedcustomer.analytics.local import compute_partials, key_of
from fedcustomer.analytics.requester import refusal_for, spec_sha256, verify_requester
from fedcustomer.analytics.rfm import SEGMENT_FIELD
from fedcustomer.analytics.spec import BAND_SUFFIX, QuerySpec
from fedcustomer.common.files import atomic_write_text
from fedcustomer.data.schema import listed_names
from fedcustomer.errors import AccessDenied, ConfigError, DataError, FedCustomerError, SchemaError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.access.policy import Actor
from fedcustomer.privacy.dp.accountants import Accountant
from fedcustomer.privacy.dp.ledger import BudgetLedger
from fedcustomer.privacy.dp.release import Mechanism, PaidResults, Step, check, release

PURPOSE = "analytics"
ROLE = "data_scientist"
LoadFrame = Callable[[PartnerHome, str, Sequence[str]], pd.DataFrame]


def partner_actor(home: PartnerHome, node_name: str | None = None) -> Actor:
    return Actor(f"node:{node_name or home.config().name}", ROLE)


def ledger_for(home: PartnerHome, dataset: str) -> BudgetLedger:
    return home.ledger(dataset)


def answer_query(
    home: PartnerHome,
    spec: QuerySpec,
    *,
    load_frame: LoadFrame | None = None,
    node_name: str | None = None,
    requests: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The partner's DP release for ``spec`` (JSON-ready); raises on refusal, after auditing it."""
    config = home.config()
    actor = partner_actor(home, node_name)
    audit_fields = {"dataset": spec.dataset, "fields": spec.source_fields(), "purpose": PURPOSE}
    details = {
        "query_id": spec.query_id,
        "kind": spec.kind,
        "epsilon": spec.epsilon,
        "delta": spec.delta,
        "mechanism": spec.mechanism,
        "requested_by": None,  # the authenticated person (see _requester), never a name typed in the spec
        "requester_authenticated": False,
    }
    step = Step(spec.charge_key, f"query {spec.query_id}", query_id=spec.query_id, cache_name=spec.query_id)
    results = PaidResults(home.state_dir / "queries", _ReleaseCodec(spec))

    def produce() -> tuple[dict[str, Any], Mechanism]:
        frame, extras = _read(home, spec, actor, load_frame)
        partials = compute_partials(frame, spec, extras)
        noisy = _noised(config.name, spec, partials, config.accountant_spec())
        details["clamped_values"] = partials.clamped
        return noisy, _mechanism(spec, noisy, details["requested_by"])

    actor = _authenticated(home, actor, spec)  # a refused key is audited there, before anything is read
    asker = actor  # the query's entry names the person who asked, once authenticated; the read, the service
    try:
        person, refused = _requester(home, spec, requests)
        if person is not None:
            asker = person
            details.update(
                requested_by=person.name,
                requester_role=person.role,
                requester_authenticated=True,
                service=actor.name,
            )
        if refused is not None:
            raise refused
        _precheck(home, spec)
        ledger = home.ledger(spec.dataset, config.budget_for(spec.dataset))
        _refuse_before_reading(ledger, step, spec)
        released = release(ledger, step, results, produce)
    except FedCustomerError as exc:
        _audit(home, asker, "denied", reason=f"{type(exc).__name__}: {exc}", details=details, **audit_fields)
        raise
    charge = released.charge
    details.update(
        epsilon_total=charge.epsilon_total,
        epsilon_target=charge.epsilon_target,
        replayed=charge.already_paid,
        accountant=charge.accountant,
    )
    _audit(home, asker, "allowed", details=details, **audit_fields)
    out = dict(released.result)
    out["charged"] = True
    out["spend"] = {
        "epsilon_total": charge.epsilon_total,
        "delta_total": charge.delta_total,
        "epsilon_target": charge.epsilon_target,
        "delta_target": charge.delta_target,
    }
    if charge.already_paid:  # the row is as it stood when first paid; the partner may have spent more since
        now = ledger.spent()
        out["spend"] = {
            "epsilon_total": now.epsilon,
            "delta_total": now.delta,
            "epsilon_target": now.epsilon_target,
            "delta_target": now.delta_target,
            "epsilon_total_when_paid": charge.epsilon_total,
        }
    out["already_paid"] = charge.already_paid
    return out


# --- steps -----------------------------------------------------------------------------------


def _read(
    home: PartnerHome, spec: QuerySpec, actor: Actor, load_frame: LoadFrame | None
) -> tuple[pd.DataFrame, dict[str, int] | None]:
    fields = spec.source_fields()
    if home.store_path.exists():
        from fedcustomer.data.store import PartnerStore

        with PartnerStore.open(home) as store:
            fields = _checked_fields(store, spec)
            frame = store.read(
                store.service_credential(actor.name, actor.role), PURPOSE, fields=fields, dataset=spec.dataset
            )
            extras = None
            if spec.kind == "quality":
                merged = {m["pseudonym"] for m in store.merges(spec.dataset)}
                quarantined = store.quarantine_summary(spec.dataset)
                invalid = len({q["pseudonym"] for q in quarantined if q["pseudonym"]}) + sum(
                    1 for q in quarantined if not q["pseudonym"]
                )
                extras = {"duplicates": len(merged), "invalid": invalid}
        return frame, extras
    if load_frame is None:
        raise DataError(
            f"partner home {home.root} has no store and no data loader; ingest the partner's data first"
        )
    return load_frame(home, spec.dataset, fields), None


def _checked_fields(store: Any, spec: QuerySpec) -> list[str]:
    """The fields the query reads from ``store``, once its dataset, fields, group and filter keys and
    their declared values are checked against the store's schema (refused otherwise, nothing read)."""
    if spec.dataset not in store.datasets():
        raise DataError(
            f"partner {store.name!r} holds no dataset {spec.dataset!r} "
            f"(it has: {', '.join(store.datasets()) or 'none'})"
        )
    schema = store.schema(spec.dataset)
    fields = spec.source_fields()
    unknown = [f for f in [*fields, *spec.where] if f not in schema.names]
    if unknown:
        raise SchemaError(
            f"query {spec.query_id}: dataset {spec.dataset!r} has no field(s) {', '.join(unknown)}; "
            f"known fields: {listed_names(list(schema.names))}"
        )
    raw_groups = [g for g in spec.group_by if g in schema.names]
    for name in raw_groups + list(spec.where):
        if schema.field(name).tier != "public":
            raise AccessDenied(
                f"query {spec.query_id}: {name!r} is a {schema.field(name).tier} field; group and filter "
                f"keys must be public fields (derive declared bands or segments instead)"
            )
    for g in spec.group_by:
        if g not in schema.names and not _derived(spec, g):
            raise DataError(f"dataset {spec.dataset!r} has no field {g!r} to group by")
    _check_declared_values(spec, schema, raw_groups)
    if not fields:  # a plain row count: read one public field just to enumerate customers
        public = [f.name for f in schema.fields if f.tier == "public"]
        if not public:
            raise AccessDenied(f"dataset {spec.dataset!r} has no public field to count rows by")
        fields = public[:1]
    return fields


def _refuse_before_reading(ledger: BudgetLedger, step: Step, spec: QuerySpec) -> None:
    """Refuse a Laplace query the budget cannot pay before any customer is read (BudgetExhausted,
    the refusal recorded in the ledger). Its charge is (epsilon, 0) whatever the data; a Gaussian
    query's depends on the statistics it releases and is checked when it is charged."""
    if spec.mechanism == mechanisms.LAPLACE:
        check(ledger, step, Mechanism("laplace", epsilon_delta=(spec.epsilon, 0.0)))


def _requester(
    home: PartnerHome, spec: QuerySpec, requests: Mapping[str, Any] | None
) -> tuple[Actor | None, AccessDenied | None]:
    """Who asked (:mod:`fedcustomer.analytics.requester`): the person whose signed request this
    partner's registry verifies (AccessDenied raised otherwise), and why they may not ask, if so;
    nobody in a home without a registry, which has no one to check a signature against."""
    if not home.store_path.exists():
        return None, None
    from fedcustomer.data.store import PartnerStore

    with PartnerStore.open(home) as store:
        if store.people is None:
            return None, None
        person = verify_requester(store, spec, requests)
        return person, refusal_for(store, person)


def _precheck(home: PartnerHome, spec: QuerySpec) -> None:
    """:func:`_checked_fields` before the ledger is consulted, so a mistake in the query is named
    as such, not as the reuse of a query id whose kept answer was for another query."""
    if not home.store_path.exists():
        return
    from fedcustomer.data.store import PartnerStore

    with PartnerStore.open(home) as store:
        _checked_fields(store, spec)


def _check_declared_values(spec: QuerySpec, schema: Any, raw_groups: Sequence[str]) -> None:
    """Refuse, before anything is read or paid, a group or filter value its field does not declare.

    A value spelled otherwise than the schema's list (``month-to-month`` for ``Month-to-month``)
    or not in it at all (``Weekly``) matches no customer: the release would report an empty cell
    and still cost epsilon (found by a new-user trial). Fields without a declared list are not checked.
    """
    asked = {g: list(spec.domain(g)) for g in raw_groups}
    for name, values in spec.where.items():
        asked.setdefault(name, []).extend(str(key_of(v)) for v in values)
    for name, values in asked.items():
        declared = schema.field(name).validation.allowed
        if not declared:
            continue
        unknown = [v for v in values if v not in declared]
        if not unknown:
            continue
        folded = {d.casefold(): d for d in declared}
        hints = [f"{v!r} (declared as {folded[v.casefold()]!r})" for v in unknown if v.casefold() in folded]
        raise ConfigError(
            f"query {spec.query_id}: {name} value(s) {', '.join(repr(v) for v in unknown)} are not among the "
            f"values dataset {spec.dataset!r} declares for it ({', '.join(declared)})"
            + (f"; spell them as declared: {', '.join(hints)}" if hints else "")
            + "; nothing was read or charged"
        )


def _authenticated(home: PartnerHome, actor: Actor, spec: QuerySpec) -> Actor:
    """The node's analytics service as its people registry names it: the key that makes the query's read.

    A home with a registry answers with its registered ``data_scientist`` service key; the query's
    entry then names that authenticated principal, the same as the read entry it made, instead
    of a name made up here (``audit query --actor`` finds both). A development home without a
    registry keeps the plain actor.
    """
    if not home.store_path.exists():
        return actor
    from fedcustomer.data.store import PartnerStore

    with PartnerStore.open(home) as store:
        if store.people is None:
            return actor
        return store.principal(
            store.service_credential(actor.name, actor.role),
            action="query",
            audit_action="query",
            dataset=spec.dataset,
            fields=spec.source_fields(),
            purpose=PURPOSE,
        )


def _derived(spec: QuerySpec, group: str) -> bool:
    return (group == SEGMENT_FIELD and spec.rfm is not None) or (
        group.endswith(BAND_SUFFIX) and group[: -len(BAND_SUFFIX)] in spec.bands
    )


def _noised(
    partner: str, spec: QuerySpec, partials: Any, accountant: Accountant | None = None
) -> dict[str, Any]:
    """The noised release; Gaussian noise sized with the partner's accountant (RDP when None)."""
    cal = mechanisms.calibrate(spec.mechanism, spec.epsilon, spec.delta, partials.statistics, accountant)
    names = list(partials.stats)
    shapes = {n: partials.stats[n].shape for n in names}
    flat = np.concatenate([partials.stats[n].ravel() / partials.weights[n] for n in names])
    noisy = mechanisms.release(flat, cal)
    out: dict[str, list] = {}
    pos = 0
    for n in names:
        size = int(np.prod(shapes[n]))
        out[n] = (noisy[pos : pos + size] * partials.weights[n]).reshape(shapes[n]).tolist()
        pos += size
    return {
        "format": "fedcustomer.analytics.release/1",
        "partner": partner,
        "query_id": spec.query_id,
        "spec_sha256": _spec_digest(spec),
        "dataset": spec.dataset,
        "kind": spec.kind,
        "mechanism": cal.mechanism,
        "epsilon": cal.epsilon,
        "delta": cal.delta,
        "statistics": cal.statistics,
        "normalised_scale": cal.normalised_scale,
        "noise_multiplier": cal.noise_multiplier,
        "accountant": cal.accountant,
        "pld_interval": cal.pld_interval,
        "stats": out,
        "weights": dict(partials.weights),
        "charged": False,
    }


def _mechanism(spec: QuerySpec, release: dict[str, Any], requested_by: str | None) -> Mechanism:
    """The ledger charge of a noised release: Laplace as (epsilon, 0), Gaussian as one full-batch step."""
    details = {"kind": spec.kind, "statistics": release["statistics"], "requested_by": requested_by}
    if release["mechanism"] == mechanisms.LAPLACE:
        return Mechanism("laplace", epsilon_delta=(release["epsilon"], 0.0), details=details)
    cal = mechanisms.Calibration(
        mechanisms.GAUSSIAN,
        release["epsilon"],
        release["delta"],
        release["statistics"],
        release["normalised_scale"],
        release["noise_multiplier"],
    )
    details["delta_query"] = release["delta"]
    # the accountant that sized the noise (a release kept before this field existed was sized with RDP)
    details["calibrated_with"] = release.get("accountant") or "rdp"
    if release.get("pld_interval") is not None:
        details["calibration_pld_interval"] = release["pld_interval"]
    return Mechanism("gaussian", gaussian=cal.gaussian_steps(), details=details)


def _audit(home: PartnerHome, actor: Actor, decision: str, **fields: Any) -> None:

    log = home.open_audit_log()
    try:
        log.append(actor=actor.name, role=actor.role, action="query", decision=decision, **fields)
    finally:
        log.close()


# --- the pending / answered release cache ---------------------------------------------------


def _spec_digest(spec: QuerySpec) -> str:
    return spec_sha256(spec)


class _ReleaseCodec:
    """A kept release as JSON; ``charged`` marks it paid, ``spec_sha256`` ties the query id to one query."""

    suffix = ".json"

    def __init__(self, spec: QuerySpec) -> None:
        self.spec = spec

    def dump(self, path: Path, result: dict[str, Any], paid: bool) -> None:
        atomic_write_text(path, json.dumps({**result, "charged": paid}, sort_keys=True))

    def load(self, path: Path) -> tuple[dict[str, Any], bool]:
        try:
            release = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(
                f"{path}: unreadable kept release ({exc}); ask again with a new query id"
            ) from None
        if release.get("spec_sha256") != _spec_digest(self.spec):
            raise ConfigError(
                f"query id {self.spec.query_id!r} was already used for a different query; "
                "every query needs its own id"
            )
        return release, bool(release.get("charged"))
