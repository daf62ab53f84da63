"""A deployed two-party vertical job (on the in-process grid): every PSI and split-learning reply
carries the party's audit anchor, the coordinator records them in anchors.jsonl, and
``audit verify --anchors`` on that file catches a party log rewritten with the node's own key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.anchors import Anchor
from fedcustomer.vertical.deployed import run_two_party
from tests.cli.cli_runner import only_group, run
from tests.privacy.audit.log_rewrite import rewrite_and_resign
from tests.vertical.conftest import grid_for
from tests.vertical.test_deployed import _raw, homes


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_deployed_vertical_run_records_each_partys_anchors_and_they_catch_a_rewrite(
    homes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False, rounds=2)
    grid = grid_for([bank, retail])
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed"

    # every content reply of both parties left with an anchor (PSI steps, hello, split-learning steps)
    replies = [r for _, rs in grid.log for r in rs if not r.has_error()]
    assert replies and all("audit-anchor" in r.content["partner"] for r in replies)
    kinds = {r.metadata.message_type.partition(".")[2].split("_")[0] for r in replies}
    assert kinds == {"psi", "vertical"}

    path = tmp_path / "run" / "anchors.jsonl"
    lines = _lines(path)
    assert {x["partner"] for x in lines} == {"bank", "retailer"}
    assert {x["kind"] for x in lines} <= {"psi", "vertical"} and "vertical" in {x["kind"] for x in lines}
    for x in lines:
        assert x["run_id"] == raw["run-id"] and "problem" not in x
        anchor = Anchor.from_dict(x["anchor"])
        assert anchor.partner == x["partner"] and anchor.problem() is None
    for name in ("bank", "retailer"):  # one line each time the party's anchor changed, never a repeat
        texts = [json.dumps(x["anchor"], sort_keys=True) for x in lines if x["partner"] == name]
        assert len(texts) == len(set(texts))
        numbers = [x["anchor"]["checkpoint"]["number"] for x in lines if x["partner"] == name]
        assert numbers == sorted(numbers)
    # the party's newest anchor covers its log as it stands after the job
    newest = max(
        (x for x in lines if x["partner"] == "bank"), key=lambda x: x["anchor"]["checkpoint"]["number"]
    )
    last_cp = json.loads((bank.audit_dir / "checkpoints.jsonl").read_text().splitlines()[-1])
    assert newest["anchor"]["checkpoint"] == last_cp

    only_group(monkeypatch, audit_cli.register)
    for home in (bank, retail):
        code, out, err = run(["audit", "verify", "--home", str(home.root), "--anchors", str(path)], capsys)
        assert code == 0, err
        assert "ANCHORED" in out

    def hide_training_reads(entries: list[dict]) -> None:
        for e in entries:
            if e["action"] == "read":
                e["row_count"] = 0

    rewrite_and_resign(bank, hide_training_reads)
    code, _, plain_err = run(["audit", "verify", "--home", str(bank.root)], capsys)
    assert code == 0, plain_err  # re-signed with the node's own key: passes on its own
    code, out, err = run(["audit", "verify", "--home", str(bank.root), "--anchors", str(path)], capsys)
    assert code == IntegrityError.exit_code
    assert "REWRITTEN" in out and "bank" in err and raw["run-id"] in err
    code, _, err = run(["audit", "verify", "--home", str(retail.root), "--anchors", str(path)], capsys)
    assert code == 0, err  # the other party's log is untouched


def test_in_process_vertical_job_writes_anchors_of_its_psi_and_rounds(tmp_path: Path) -> None:
    from fedcustomer.vertical.runner import run_vertical_local
    from tests.vertical.small_jobs import small_vertical_job

    job = small_vertical_job(tmp_path / "run", rounds=1, steps_per_round=1, baseline=True)
    summary = run_vertical_local(job)
    assert summary["status"] == "completed"
    lines = _lines(tmp_path / "run" / "anchors.jsonl")
    assert {x["kind"] for x in lines} == {"psi", "vertical"}  # the PSI of the set-up, then the job
    assert {x["partner"] for x in lines} == {"bank", "retailer"}
    assert all("problem" not in x and Anchor.from_dict(x["anchor"]).problem() is None for x in lines)
