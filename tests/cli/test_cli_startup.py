"""`fedcustomer --help` must not pay for torch, Flower or pandas: commands import them when they run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "flwr", "pandas", "opacus", "sklearn", "matplotlib")

PROBE = """
import json, sys
from fedcustomer.cli import _register, main
_register()
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["coordinator", "run", "--help"], ["budget", "--help"]]
)
def test_cli_help_imports_no_heavy_library(argv: list[str]) -> None:
    # a fresh interpreter: this test process has imported torch already
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
