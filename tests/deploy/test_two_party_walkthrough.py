"""docs/TWO-PARTY.md, followed as written: every ``bash`` block runs, in order, in one shell.

Real processes on 127.0.0.1 (coordinator, bank node, retailer node; TLS, node authentication,
pinned link keys). The background processes the walkthrough starts are stopped at the end,
by the process group this test started for the shell.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedcustomer.deploy.flower import bin_dir, free_port
from fedcustomer.partner.home import PartnerHome
from fedcustomer.psi.state import psi_dir

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "TWO-PARTY.md"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_the_doc_has_the_commands_of_both_sides():
    script = "\n".join(bash_blocks(DOC.read_text(encoding="utf-8")))
    for needed in (
        "fedcustomer certs",
        "node keys",
        "node pin-peer",
        "coordinator register",
        "node start",
        "--mode psi --reveal count",
        "--mode vertical",
        "--resume",
        "node link-key --rotate",
    ):
        assert needed in script


@pytest.mark.two_party_long
def test_two_party_walkthrough_runs_as_written(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(bash_blocks(DOC.read_text(encoding="utf-8")))
    env = dict(os.environ)
    env.update(
        WORK=str(tmp_path),
        PORT=str(free_port()),
        BANK_PORT=str(free_port()),
        RETAILER_PORT=str(free_port()),
        PATH=f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
        ),
    )
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "fedcustomer").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedcustomer "$@"\n')
    (shim / "fedcustomer").chmod(0o755)
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the coordinator and nodes the walkthrough started
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-3000:]
    overlap = json.loads((tmp_path / "runs" / "overlap" / "summary.json").read_text())
    assert (
        overlap["status"] == "completed" and overlap["intersection_size"] == 1400 and overlap["kept_by"] == {}
    )
    for party in ("bank", "retailer"):
        assert not list(psi_dir(PartnerHome(tmp_path / party)).glob(f"psi-{overlap['run_id']}*"))
    vertical = json.loads((tmp_path / "runs" / "vertical" / "summary.json").read_text())
    assert vertical["status"] == "completed" and vertical["rounds_completed"] == 2
    rotated = json.loads((tmp_path / "runs" / "overlap-rotated" / "summary.json").read_text())
    said = " ".join(rotated["stop_reason"].split())
    assert rotated["status"] == "failed" and "'retailer' pinned for 'bank'" in said
    assert "fedcustomer node pin-peer --home HOME --peer bank" in said
    repinned = json.loads((tmp_path / "runs" / "overlap-repinned" / "summary.json").read_text())
    assert repinned["status"] == "completed" and repinned["intersection_size"] == 1400
