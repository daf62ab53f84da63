"""docs/GOVERNANCE.md, followed verbatim: every command block marked ``<!-- walkthrough -->`` runs,
in order, in one shell, in an empty directory holding only the partner's ``customers.csv``.

If the walkthrough names an option that no longer exists, or a step that no longer works,
this test fails, so the document cannot drift from the commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedcustomer.privacy.access.person_keys import PASSPHRASE_ENV
from tests.data.test_ingest import bank_frame
from tests.people import PASSPHRASE

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "GOVERNANCE.md"
BLOCK = re.compile(r"<!-- walkthrough -->\n```bash\n(.*?)```", re.S)


def walkthrough() -> list[str]:
    """The marked ``bash`` blocks of the document, in order."""
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_walkthrough_covers_the_whole_governed_life_of_a_home() -> None:
    """The marked blocks are the walkthrough: a marker lost in an edit must not shrink it silently."""
    text = "\n".join(walkthrough())
    for step in (
        "people keygen --out alice.key",
        "init --home bank_home --name bank --identity alice.key --admin alice",
        "people add --home bank_home --identity alice.key --name rick --role risk_officer --public-key rick.key.pub",
        "budget set --home bank_home",
        "ingest --schema",
        "keys rotate",
        "erase --customer",
        "read --home bank_home --identity mia.key",
        "approvals request",
        'approvals approve "$ID" --home bank_home --identity alice.key',
        'approvals approve "$ID" --home bank_home --identity carol.key',
        "audit verify --home bank_home",
        "audit query  --home bank_home --identity carol.key",
        "people revoke --home bank_home --identity alice.key --name mia",
    ):
        assert step in text, step
    assert "--actor" not in text.replace("--actor/--role", "") and "--as-role" not in text
    whole = DOC.read_text(encoding="utf-8")
    assert "--as-actor" not in whole and "--role partner_admin" not in whole


def _shell_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDCUSTOMER_IDENTITY"}
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
            PASSPHRASE_ENV: PASSPHRASE,  # each person's passphrase; the commands would otherwise ask for it
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        }
    )
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    work = tmp_path / "partner"
    work.mkdir()
    bank_frame(40).to_csv(work / "customers.csv", index=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fedcustomer"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedcustomer "$@"\n')
    shim.chmod(0o755)
    env = _shell_env(bin_dir)
    script = "set -euo pipefail\nset -x\n" + "\n".join(walkthrough())
    done = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    home = work / "bank_home"
    north = (work / "north.csv").read_text().splitlines()
    assert north[0] == "pseudonym,region,income" and len(north) > 1
    decrypts = (work / "decrypts.csv").read_text()
    assert "rick" in decrypts and "decrypt" in decrypts  # rick's approved core read, found by carol
    assert json.loads((work / "quality.json").read_text())["rows"]["read"] == 40

    def fedcustomer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["fedcustomer", *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )

    refused = fedcustomer("read", "--home", "bank_home", "--identity", "mia.key", "--purpose", "marketing")
    assert refused.returncode == 5 and "revoked" in refused.stderr  # the walkthrough ends with her revocation
    listed = fedcustomer(
        "audit", "query", "--home", "bank_home", "--identity", "carol.key", "--format", "json"
    )
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["entries"]
    approvals = [e for e in entries if e["action"] == "approve" and e["decision"] == "allowed"]
    assert [e["actor"] for e in approvals] == ["alice", "carol"]
    assert all(e["details"]["auth"] for e in approvals)  # each approval carries its signed request
    assert entries[-1]["actor"] == "mia" and entries[-1]["decision"] == "denied"
    assert fedcustomer("audit", "verify", "--home", "bank_home").returncode == 0
    assert home.is_dir() and not any(p.suffix == ".key" for p in home.iterdir())  # people keep their own keys
