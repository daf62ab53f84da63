"""`fedcustomer --help` must not pay for torch, Flower or pandas: commands import them when they run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "flwr", "pandas", "opacus", "sklearn", "matplotlib")
HELP_CALLS = (["--help"], ["run", "--help"], ["coordinator", "run", "--help"], ["budget", "--help"])

# One fresh interpreter asks for each help in turn and notes, after each, which heavy libraries are
# loaded so far: a help that imports one shows it on its own line (and on every later one).
PROBE = """
import json, sys
from fedcustomer.cli import _register, main
_register()
for argv in {calls!r}:
    try:
        main(argv)
    except SystemExit:
        pass
    print(json.dumps({{"argv": argv, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


@pytest.fixture(scope="module")
def heavy_after_each_help() -> dict[str, list[str]]:
    # a fresh interpreter: this test process has imported torch already
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(calls=HELP_CALLS, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"argv"')]
    assert [line["argv"] for line in lines] == [list(argv) for argv in HELP_CALLS], res.stdout
    return {" ".join(line["argv"]): line["heavy"] for line in lines}


@pytest.mark.parametrize("argv", HELP_CALLS, ids=" ".join)
def test_cli_help_imports_no_heavy_library(
    heavy_after_each_help: dict[str, list[str]], argv: list[str]
) -> None:
    assert heavy_after_each_help[" ".join(argv)] == []
