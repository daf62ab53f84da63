"""SecAgg+ runs (plain and distributed DP): every stage reply carries the partner's audit anchor,
the coordinator records them in anchors.jsonl, and ``audit verify --anchors`` on that file catches
a partner log rewritten with the node's own key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcustomer.apps.secagg import make_secagg_client_app, run_secagg_job
from fedcustomer.cli import audit as audit_cli
from fedcustomer.errors import IntegrityError
from fedcustomer.privacy.audit.anchors import Anchor
from fedcustomer.server.inprocess import SecAggLocalGrid
from tests.apps.test_secagg_distributed import _context, _job, _setup
from tests.cli.cli_runner import only_group, run
from tests.privacy.audit.log_rewrite import rewrite_and_resign


class _Replies(SecAggLocalGrid):
    """The SecAgg+ grid, keeping every reply for inspection."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list = []

    def send_and_receive(self, messages, *, timeout=None):
        got = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += got
        return got


@pytest.mark.parametrize("mode", ["local", "distributed"])
def test_secagg_run_records_every_partners_anchor_per_round(tmp_path: Path, mode: str) -> None:
    job = _job(tmp_path, rounds=2) if mode == "distributed" else _job(tmp_path, rounds=2, dp_mode="local")
    _, homes = _setup(tmp_path, job, trusted=3)
    grid = _Replies(make_secagg_client_app([str(h.root) for h in homes]), 3)
    summary = run_secagg_job(grid, _context(job))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    # what a data scientist needs to use the model, as in a plain job's summary
    assert summary["model"]["file"] == "model.pt" and summary["model"]["arch"] == job.arch
    assert json.loads((Path(job.out) / "feature_spec.json").read_text())["task"] == job.task
    assert summary["budget_requested"] == {"epsilon": job.epsilon, "delta": job.delta}
    # each round's wall time, as a plain job's summary has it
    assert len(summary["round_wall_time_s"]) == 2 and all(w > 0 for w in summary["round_wall_time_s"])
    assert (
        json.loads((Path(job.out) / "summary.json").read_text())["round_wall_time_s"]
        == summary["round_wall_time_s"]
    )

    # setup, share-keys, masked-vector and unmask replies of every partner (and, in distributed mode, the
    # answers to the coordinator's two questions: the accountant, then the plan): each carries an anchor
    ok = [r for r in grid.replies if not r.has_error()]
    asked = 2 * 3 if mode == "distributed" else 0
    assert len(ok) == asked + 2 * 4 * 3 and all("audit-anchor" in r.content["partner"] for r in ok)

    lines = [json.loads(x) for x in (Path(job.out) / "anchors.jsonl").read_text().splitlines()]
    names = sorted(h.config().name for h in homes)
    for name in names:
        mine = [x for x in lines if x["partner"] == name]
        assert all(x["run_id"] == job.run_id and x["kind"] == "round" and "problem" not in x for x in mine)
        assert all(Anchor.from_dict(x["anchor"]).problem() is None for x in mine)
        # each round's masked-vector reply brings the checkpoint covering that round's fl_round entry
        assert {x["round"] for x in mine} == {1, 2}
        numbers = [x["anchor"]["checkpoint"]["number"] for x in mine]
        assert numbers == sorted(set(numbers))


def test_audit_verify_with_a_secagg_runs_anchors_catches_a_rewritten_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, rounds=2, dp_mode="local")
    _, homes = _setup(tmp_path, job, trusted=3)
    run_secagg_job(SecAggLocalGrid(make_secagg_client_app([str(h.root) for h in homes]), 3), _context(job))
    path = Path(job.out) / "anchors.jsonl"

    only_group(monkeypatch, audit_cli.register)
    for home in homes:
        code, out, err = run(["audit", "verify", "--home", str(home.root), "--anchors", str(path)], capsys)
        assert code == 0, err
        assert "ANCHORED" in out

    def hide_update_sizes(entries: list[dict]) -> None:
        for e in entries:
            if e["action"] == "fl_round":
                e["details"]["update_bytes"] = 0

    victim = homes[0]
    rewrite_and_resign(victim, hide_update_sizes)
    code, _, plain_err = run(["audit", "verify", "--home", str(victim.root)], capsys)
    assert code == 0, plain_err  # re-signed with the node's own key: passes on its own
    code, out, err = run(["audit", "verify", "--home", str(victim.root), "--anchors", str(path)], capsys)
    assert code == IntegrityError.exit_code
    assert "REWRITTEN" in out and "round 1" in err and victim.config().name in err
