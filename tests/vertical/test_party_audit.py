"""Each party of a split-learning job logs its rounds and the job's end in its own audit log.

One ``vertical_round`` entry per round it opens (paid) or refuses, written once even when a
restarted coordinator asks again, and one ``vertical_finish`` entry; each advances the anchor that
leaves with the party's replies, and neither holds a customer id or value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedcustomer.cli import audit as audit_cli
from fedcustomer.console.audit_index import AuditIndex
from fedcustomer.errors import FederationError
from fedcustomer.partner.home import PartnerHome
from fedcustomer.privacy.audit.export import syslog_line
from fedcustomer.privacy.audit.records import ACTION_VERTICAL_FINISH, ACTION_VERTICAL_ROUND
from fedcustomer.privacy.audit.writer import AuditLog
from fedcustomer.vertical import party as party_module
from fedcustomer.vertical.data import party_frames
from fedcustomer.vertical.deployed import run_two_party
from fedcustomer.vertical.job import VerticalJob
from fedcustomer.vertical.parties import party_app
from fedcustomer.vertical.party import forget_sessions
from fedcustomer.vertical.runner import run_vertical_local, run_vertical_on_grid
from tests.cli.cli_runner import only_group, run
from tests.vertical.conftest import RecordingGrid, grid_for, retail_signal_frames, setup_parties
from tests.vertical.small_jobs import small_vertical_job
from tests.vertical.test_deployed import DIES_IN_ROUND_2, _raw, homes


def _entries(home: PartnerHome, action: str, run_id: str) -> list:
    with AuditLog.open(home.audit_dir, keys_dir=home.keys_dir) as log:
        return [e for e in log.query(action=action) if e.details.get("run_id") == run_id]


def _verify(home: PartnerHome, anchors: Path, monkeypatch, capsys) -> None:
    only_group(monkeypatch, audit_cli.register)
    code, out, err = run(["audit", "verify", "--home", str(home.root), "--anchors", str(anchors)], capsys)
    assert code == 0, err
    assert "ANCHORED" in out


def test_in_process_job_logs_each_round_and_the_end_at_both_parties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    job = small_vertical_job(tmp_path / "run", rounds=2, steps_per_round=2, baseline=False)
    summary = run_vertical_local(job)
    assert summary["status"] == "completed"
    homes = {name: PartnerHome(tmp_path / "run" / "partners" / name) for name in ("bank", "retailer")}
    aligned = summary["aligned_train"] + summary["aligned_test"]
    rounds = {name: _entries(home, ACTION_VERTICAL_ROUND, job.run_id) for name, home in homes.items()}
    for name, role in (("bank", "active"), ("retailer", "passive")):
        got = rounds[name]
        assert [e.details["round"] for e in got] == [1, 2]
        assert all(e.decision == "allowed" and not e.details["refused"] for e in got)
        assert all(e.details["vertical_role"] == role and e.actor == f"node:{name}" for e in got)
        assert all(e.details["epsilon_round"] > 0 and not e.pseudonyms for e in got)
        totals = [e.details["epsilon_total"] for e in got]
        assert totals[0] < totals[1] <= got[0].details["epsilon_target"]
    assert "epsilon_label" in rounds["bank"][0].details and "epsilon_label" not in rounds["bank"][1].details
    batch_customers = {e.details["round"]: e.details["public_batch_customers"] for e in rounds["bank"]}

    for name, home in homes.items():
        (end,) = _entries(home, ACTION_VERTICAL_FINISH, job.run_id)
        assert end.details["rounds_paid"] == [1, 2] and end.details["rounds_refused"] == []
        model = home.root / end.details["model"]["file"]
        assert end.details["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        acc = end.details["accounting"]
        assert acc["epsilon_total"] == pytest.approx(rounds[name][-1].details["epsilon_total"])
        assert "history" not in acc and acc["noise_multiplier"] > 0
        sent = end.details["released_bytes"]
        dim = job.embed_dim * 4  # float32 per embedding coordinate
        if name == "retailer":  # embeddings of the public batches, then of every aligned customer
            expected = {str(r): (n + aligned) * dim for r, n in batch_customers.items()}
            assert sent["by_kind"] == {"embeddings": sum(expected.values())}
        else:  # gradients of those batches, and the batches' positions (int64, plus each batch's size)
            expected = {str(r): n * dim + 8 * (n + job.steps_per_round) for r, n in batch_customers.items()}
            assert set(sent["by_kind"]) == {"gradients", "batch_positions"}
        assert sent["by_round"] == expected and sent["total"] == sum(expected.values())

    # no customer id in any of these entries
    ids = {str(i) for frame in party_frames(job).values() for i in frame["customer_id"]}
    for home in homes.values():
        for line in (home.audit_dir / "audit.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if entry["action"] in (ACTION_VERTICAL_ROUND, ACTION_VERTICAL_FINISH):
                words = set(json.dumps(entry["details"]).replace('"', " ").replace(",", " ").split())
                assert not words & ids

    # each round's anchor (sent with the party's next reply) covers that round's entry
    anchors = tmp_path / "run" / "anchors.jsonl"
    lines = [json.loads(x) for x in anchors.read_text().splitlines()]
    for name in homes:
        for entry in rounds[name]:
            covering = [
                x
                for x in lines
                if x["partner"] == name
                and x["kind"] == "vertical"
                and x["round"] == entry.details["round"]
                and x["anchor"]["checkpoint"]["last_seq"] >= entry.seq
            ]
            assert covering, (name, entry.details["round"])
        numbers = [x["anchor"]["checkpoint"]["number"] for x in lines if x["partner"] == name]
        assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))
    for home in homes.values():
        _verify(home, anchors, monkeypatch, capsys)

    # the compliance officer's ways in read them as any other entry: query, export, the console's index
    bank = homes["bank"]
    code, out, err = run(
        [
            "audit",
            "query",
            "--log",
            str(bank.audit_dir),
            "--action",
            ACTION_VERTICAL_ROUND,
            "--format",
            "json",
        ],
        capsys,
    )
    assert code == 0, err
    assert [
        e["details"]["round"] for e in json.loads(out)["entries"] if e["details"]["run_id"] == job.run_id
    ] == [1, 2]
    line = syslog_line(rounds["bank"][0], "bank")
    assert f" - {ACTION_VERTICAL_ROUND} [" in line and 'action="vertical_round"' in line  # MSGID, SD
    index = AuditIndex(bank.audit_dir, tmp_path / "index.db")
    page = index.page({"action": ACTION_VERTICAL_FINISH})
    assert [e.details["run_id"] for e in page.entries] == [job.run_id]
    assert {ACTION_VERTICAL_ROUND, ACTION_VERTICAL_FINISH} <= set(index.distinct("action"))


def test_a_resumed_job_logs_each_round_once(homes, tmp_path, monkeypatch, capsys):
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False)
    first = grid_for([bank, retail], dead_after={2: DIES_IN_ROUND_2})  # the retailer dies during round 2
    with pytest.raises(FederationError):
        run_two_party(first, raw)
    begun = []  # (node, round) of each begin answered: its own message, or the label owner's fit's follow-up
    for m, replies in first.log:
        cfg = dict(m.content["config"]) if "config" in m.content else {}
        if replies and m.metadata.message_type == "train.vertical_begin":
            begun.append((m.metadata.dst_node_id, cfg["round"]))
        elif replies and cfg.get("then-begin"):
            begun.append((m.metadata.dst_node_id, cfg["round"] + 1))
    assert sorted(begun) == [(1, 1), (1, 2), (2, 1), (2, 2)]  # both paid round 2 before the retailer died
    before = {h.config().name: len(_entries(h, ACTION_VERTICAL_ROUND, raw["run-id"])) for h in homes}
    assert before == {"bank": 2, "retailer": 2}
    assert not _entries(bank, ACTION_VERTICAL_FINISH, raw["run-id"])  # a failed job has no end entry
    forget_sessions()  # the parties restarted too: what they logged is known from disk
    summary = run_two_party(grid_for([bank, retail]), raw | {"resume": True})
    assert summary["status"] == "completed"
    for home in homes:
        got = _entries(home, ACTION_VERTICAL_ROUND, raw["run-id"])
        assert [e.details["round"] for e in got] == [1, 2, 3]
        assert len(_entries(home, ACTION_VERTICAL_FINISH, raw["run-id"])) == 1
        _verify(home, tmp_path / "run" / "anchors.jsonl", monkeypatch, capsys)


class FreshSessionGrid(RecordingGrid):
    """Every message meets a party with no session in memory, as a deployed node's fresh ClientApp process."""

    def send_and_receive(self, messages, *, timeout=None):
        party_module._SESSIONS.clear()
        return super().send_and_receive(messages, timeout=timeout)


def test_parties_that_keep_nothing_in_memory_log_and_count_the_same(homes, tmp_path):
    bank, retail = homes
    raw = _raw(tmp_path, baseline=False, rounds=2)
    grid = FreshSessionGrid(party_app([str(bank.root), str(retail.root)]), num_nodes=2)
    summary = run_two_party(grid, raw)
    assert summary["status"] == "completed"
    aligned, dim = summary["aligned_train"] + summary["aligned_test"], 8 * 4
    bank_rounds = _entries(bank, ACTION_VERTICAL_ROUND, raw["run-id"])
    assert [e.details["round"] for e in bank_rounds] == [1, 2]
    assert [e.details["round"] for e in _entries(retail, ACTION_VERTICAL_ROUND, raw["run-id"])] == [1, 2]
    n = {str(e.details["round"]): e.details["public_batch_customers"] for e in bank_rounds}
    (bank_end,) = _entries(bank, ACTION_VERTICAL_FINISH, raw["run-id"])
    (retail_end,) = _entries(retail, ACTION_VERTICAL_FINISH, raw["run-id"])
    assert retail_end.details["released_bytes"]["by_round"] == {r: (k + aligned) * dim for r, k in n.items()}
    assert bank_end.details["released_bytes"]["by_kind"]["gradients"] == sum(n.values()) * dim


def test_a_refused_round_is_logged_as_denied_once_with_its_reason(tmp_path: Path) -> None:
    base = dict(rounds=2, batch_size=64, lr=0.01, baseline=False, seed=0, epsilon=2.0)
    spend = VerticalJob(out=str(tmp_path / "run"), **base)
    bank, retail, _ = setup_parties(tmp_path / "homes", spend, retail_signal_frames(n=600))
    assert run_vertical_on_grid(grid_for([bank, retail]), spend)["status"] == "completed"
    job = VerticalJob(out=str(tmp_path / "run2"), run_id="after-the-budget", **base)
    summary = run_vertical_on_grid(grid_for([bank, retail]), job)
    assert summary["status"] == "stopped"
    # both spent their budget on the first job; the round check asks both in one exchange, so each
    # refuses on its own record, and the summary names every party that refused, with its reason
    refusers = [p for p in summary["partners"] if p["rounds_refused"]]
    assert sorted(p["name"] for p in refusers) == ["bank", "retailer"]
    by_name = {"bank": bank, "retailer": retail}
    for refuser in refusers:
        (denied,) = _entries(by_name[refuser["name"]], ACTION_VERTICAL_ROUND, job.run_id)
        assert denied.decision == "denied" and denied.details["refused"] and denied.details["round"] == 1
        assert denied.reason == refuser["refusals"][0]["reason"]
        assert "past this partner's target" in denied.reason
        assert denied.details["epsilon_projected"] > denied.details["epsilon_target"]
    assert "refused too" in summary["stop_reason"]
    ends = {n: _entries(h, ACTION_VERTICAL_FINISH, job.run_id) for n, h in by_name.items()}
    refuser = refusers[0]
    assert ends[refuser["name"]][0].details["rounds_refused"] == [1]

    forget_sessions()
    rerun = VerticalJob.from_dict(job.to_dict() | {"out": str(tmp_path / "run3")})
    again = run_vertical_on_grid(grid_for([bank, retail]), rerun)
    assert again["status"] == "stopped"  # asked again: refused again, logged once
    assert len(_entries(by_name[refuser["name"]], ACTION_VERTICAL_ROUND, job.run_id)) == 1
    for name, home in by_name.items():
        assert len(_entries(home, ACTION_VERTICAL_FINISH, job.run_id)) == len(ends[name]) == 1
