"""Analytics queries over Flower messages (``query.analytics``).

The coordinator sends the spec (JSON in a ``ConfigRecord``) to every partner node;
each node answers with its own DP release (noised and charged at the node, see
:mod:`fedcustomer.analytics.partner`) or a refusal naming its reason. Raw rows and
true aggregates never leave a node. The coordinator combines releases
(:mod:`fedcustomer.analytics.combine`); refusing or silent partners are listed, not
guessed at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcustomer.analytics.combine import QueryResult, combine
from fedcustomer.analytics.partner import LoadFrame, answer_query
from fedcustomer.analytics.spec import QuerySpec, spec_from_json
from fedcustomer.errors import AccessDenied, FedCustomerError, FederationError, error_class
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import WIRE_KEY as ANCHOR_WIRE_KEY
from fedcustomer.privacy.audit.anchors import current_anchor_json, received_anchor

QUERY_ACTION = "analytics"
MESSAGE_TYPE = f"query.{QUERY_ACTION}"
DEFAULT_TIMEOUT_S = 120.0


def register_analytics_handlers(
    app: ClientApp,
    resolve_home: Callable[[Context], PartnerHome],
    load_frame: LoadFrame | None = None,
) -> None:
    """Add the ``query.analytics`` handler to a partner's ClientApp."""

    @app.query(QUERY_ACTION)
    def analytics(msg: Message, context: Context) -> Message:
        name = f"node {context.node_id}"
        home: PartnerHome | None = None
        try:
            home = resolve_home(context)
            name = home.config().name
            query = msg.content["query"]
            spec = spec_from_json(str(query["spec-json"]))
            requests = _requests(query)
            release = answer_query(home, spec, load_frame=load_frame, requests=requests)
        except FedCustomerError as exc:
            refusal = {"partner": name, "error": type(exc).__name__, "reason": str(exc)}
            return Message(
                content=RecordDict({"refusal": ConfigRecord(_anchored(refusal, home))}), reply_to=msg
            )
        answer = _anchored({"release-json": json.dumps(release)}, home)
        return Message(content=RecordDict({"release": ConfigRecord(answer)}), reply_to=msg)


def _anchored(record: dict[str, str], home: PartnerHome | None) -> dict[str, str]:
    """``record`` plus the partner's current audit anchor (the checkpoint covering this query's entry)."""
    if home is None:
        return record
    try:
        anchor = current_anchor_json(home.audit_dir, home.keys_dir, home.config().name)
    except FedCustomerError:
        return record
    return {**record, ANCHOR_WIRE_KEY: anchor} if anchor is not None else record


def _requests(query: Any) -> dict[str, Any] | None:
    """The signed requests sent with a query (one per partner name), or None when none were."""
    if "requests-json" not in query:
        return None
    try:
        requests = json.loads(str(query["requests-json"]))
    except ValueError:
        raise AccessDenied("the query's signed requests are not valid JSON") from None
    if not isinstance(requests, dict):
        raise AccessDenied("the query's signed requests must be one object per partner name")
    return requests


def query_messages(
    grid: Any, spec: QuerySpec, node_ids: Iterable[int], requests: Mapping[str, Any] | None = None
) -> list[Message]:
    """One ``query.analytics`` message per node: the spec and, when given, the person's signed
    requests (one per partner name; each partner verifies its own, see analytics/requester.py)."""
    record = {"spec-json": spec.to_json()}
    if requests is not None:
        record["requests-json"] = json.dumps(dict(requests), sort_keys=True)
    content = lambda: RecordDict({"query": ConfigRecord(dict(record))})
    return [Message(content=content(), dst_node_id=int(n), message_type=MESSAGE_TYPE) for n in node_ids]


def run_query_on_grid(
    grid: Any,
    spec: QuerySpec,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    node_ids: Sequence[int] | None = None,
    requests: Mapping[str, Any] | None = None,
) -> QueryResult:
    """Ask every node, combine the releases; raises when no partner released anything."""
    start = time.perf_counter()
    nodes = list(node_ids) if node_ids is not None else list(grid.get_node_ids())
    if not nodes:
        raise FederationError("no partner node is connected; start the partners' SuperNodes first")
    replies = list(grid.send_and_receive(query_messages(grid, spec, nodes, requests), timeout=timeout))
    releases: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    kinds: dict[str, str] = {}
    answered: set[int] = set()
    anchors: list[dict[str, Any]] = []
    for reply in replies:
        src = int(reply.metadata.src_node_id)
        answered.add(src)
        if reply.has_error():
            refused[f"node {src}"] = f"error {reply.error.code}: {reply.error.reason}"
            kinds[f"node {src}"] = "FederationError"
            continue
        content = reply.content
        if "release" in content:
            releases.append(json.loads(str(content["release"]["release-json"])))
            _keep_anchor(anchors, content["release"], str(releases[-1].get("partner", f"node {src}")), spec)
        elif "refusal" in content:
            r = content["refusal"]
            refused[str(r["partner"])] = f"{r['error']}: {r['reason']}"
            kinds[str(r["partner"])] = str(r["error"])
            _keep_anchor(anchors, r, str(r["partner"]), spec)
        else:
            refused[f"node {src}"] = "reply holds neither a release nor a refusal"
            kinds[f"node {src}"] = "FederationError"
    for n in nodes:
        if n not in answered:
            refused[f"node {n}"] = f"no reply within {timeout:g} s"
            kinds[f"node {n}"] = "FederationError"
    if not releases:
        raise _no_release_error(spec, refused, kinds)
    result = combine(spec, releases, refused)
    result.latency_s = time.perf_counter() - start
    result.anchors = anchors
    return result


def _keep_anchor(anchors: list[dict[str, Any]], record: Any, partner: str, spec: QuerySpec) -> None:
    """Record the audit anchor a partner sent with its answer (see fedcustomer.privacy.audit.anchors)."""
    if ANCHOR_WIRE_KEY in record:
        text = str(record[ANCHOR_WIRE_KEY])
        anchors.append(received_anchor(text, partner=partner, run_id=spec.query_id, kind="query", round=None))


def _no_release_error(spec: QuerySpec, refused: dict[str, str], kinds: dict[str, str]) -> FedCustomerError:
    """All partners refused: raise their common kind (e.g. BudgetExhausted) so the CLI exit code says why."""
    message = f"query {spec.query_id}: no partner released an answer: " + "; ".join(
        f"{k}: {v}" for k, v in sorted(refused.items())
    )
    names = set(kinds.values())
    return (error_class(names.pop()) if len(names) == 1 else FederationError)(message)
