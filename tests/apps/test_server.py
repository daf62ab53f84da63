"""The composed ServerApp: what it does before round 1, run through Flower's own ServerApp call."""

import json
from pathlib import Path

from flwr.app import Context, RecordDict

from fedcustomer.apps.client import make_client_app
from fedcustomer.apps.server import make_server_app
from fedcustomer.server.inprocess import LocalGrid
from tests.server.test_rounds import _federation, _job
from tests.toy import SPEC


class SlowStartGrid(LocalGrid):
    """Nodes that register only after the coordinator has looked a few times (a busy machine)."""

    def __init__(self, *args, hidden_polls: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_polls = hidden_polls
        self.polls = 0

    def get_node_ids(self):
        self.polls += 1
        return [] if self.polls <= self.hidden_polls else super().get_node_ids()


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_simulated_job_waits_for_nodes_that_register_late(tmp_path: Path) -> None:
    job = _job(tmp_path, rounds=1)
    grid = SlowStartGrid(make_client_app(_federation(tmp_path, job)), 3, hidden_polls=3)
    app = make_server_app(job, SPEC, num_partners=3)
    app(grid, _context())
    summary = json.loads((Path(job.out) / "summary.json").read_text())
    assert summary["status"] == "completed", summary["stop_reason"]
    assert summary["rounds_completed"] == 1
    assert grid.polls > 3
