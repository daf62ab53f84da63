"""A real in-process training job: every partner's round reply carries its audit anchor, and the
coordinator records one per partner per round in the run directory's anchors.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.apps.client import make_client_app
from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import IntegrityError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.anchors import Anchor
from fedcustomer.server.inprocess import LocalGrid
from fedcustomer.server.run import run_job_on_grid
from tests.cli.cli_runner import only_group, run
from tests.privacy.audit.log_rewrite import rewrite_and_resign
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC


def test_run_records_one_anchor_per_partner_per_round_and_they_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, partners=2, rounds=2, federated_eval="none")
    homes = _federation(tmp_path, job, n=2, rows=300)
    summary = run_job_on_grid(LocalGrid(make_client_app(homes), 2), job, SPEC, num_partners=2)
    assert summary["status"] == "completed", summary["stop_reason"]

    path = Path(job.out) / "anchors.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted((x["round"], x["partner"]) for x in lines) == [
        (1, "bank_0"),
        (1, "bank_1"),
        (2, "bank_0"),
        (2, "bank_1"),
    ]
    for x in lines:
        assert x["run_id"] == job.run_id and x["kind"] == "round" and "problem" not in x
        anchor = Anchor.from_dict(x["anchor"])
        assert anchor.partner == x["partner"] and anchor.problem() is None
    by_partner = {p: [x for x in lines if x["partner"] == p] for p in ("bank_0", "bank_1")}
    for rows in by_partner.values():  # each round's anchor covers that round's fl_round entry
        assert rows[0]["anchor"]["checkpoint"]["number"] < rows[1]["anchor"]["checkpoint"]["number"]

    only_group(monkeypatch, audit_cli.register)
    for home in homes:
        code, out, err = run(["audit", "verify", "--home", home, "--anchors", str(path)], capsys)
        assert code == 0, err
        assert "ANCHORED" in out and "2 anchors" in out

    def hide_update_sizes(entries: list[dict]) -> None:
        for e in entries:
            if e["action"] == "fl_round":
                e["details"]["update_bytes"] = 0

    rewrite_and_resign(PartnerHome(homes[0]), hide_update_sizes)
    code, _, plain_err = run(["audit", "verify", "--home", homes[0]], capsys)
    assert code == 0, plain_err  # the rewrite, re-signed with the node's own key, passes on its own
    code, out, err = run(["audit", "verify", "--home", homes[0], "--anchors", str(path)], capsys)
    assert code == IntegrityError.exit_code
    assert "REWRITTEN" in out and "round 1" in err and "bank_0" in err
