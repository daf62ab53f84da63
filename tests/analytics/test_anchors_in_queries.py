"""Analytics replies carry each partner's audit anchor; the runner records them beside result.json."""

from __future__ import annotations

import json
from pathlib import Path

from fedcustomer.analytics.partner import answer_query
from fedcustomer.analytics.report import write_result
from fedcustomer.analytics.runner import run_inprocess
from fedcustomer.analytics.spec import QuerySpec
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchor_check import verify_anchors
from fedcustomer.privacy.audit.anchors import Anchor, read_anchor_file
from fedcustomer.privacy.audit.keys import load_public_key
from fedcustomer.privacy.audit.records import PUBLIC_KEY_NAME


def test_refusals_carry_anchors_too(homes: list[PartnerHome]) -> None:
    answer_query(homes[0], QuerySpec(dataset="retailer", kind="count", epsilon=4.9, query_id="q-drain"))
    result = run_inprocess(homes, QuerySpec(dataset="retailer", kind="count", epsilon=1.0, query_id="q-next"))
    refused = homes[0].config().name
    assert refused in result.refused
    assert sorted(x["partner"] for x in result.anchors) == sorted(h.config().name for h in homes)
    line = next(x for x in result.anchors if x["partner"] == refused)
    assert "problem" not in line and Anchor.from_dict(line["anchor"]).problem() is None


def test_anchors_of_answers_verify_against_each_partners_log(
    homes: list[PartnerHome], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for qid in ("q-1", "q-2"):
        result = run_inprocess(homes, QuerySpec(dataset="retailer", kind="count", epsilon=1.0, query_id=qid))
        write_result(out, result)
    lines = [json.loads(x) for x in (out / "anchors.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(homes)  # one per partner per query, appended
    assert {x["run_id"] for x in lines} == {"q-1", "q-2"} and {x["kind"] for x in lines} == {"query"}
    for home in homes:
        name = home.config().name
        mine = [Anchor.from_dict(x["anchor"]) for x in lines if x["partner"] == name]
        assert len(mine) == 2 and mine[0].number < mine[1].number
        trusted = load_public_key(home.keys_dir / PUBLIC_KEY_NAME)
        report = verify_anchors(home.audit_dir, read_anchor_file(out / "anchors.jsonl"), name, trusted)
        assert report.ok, report.message
