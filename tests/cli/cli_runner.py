"""Running the real ``fedcustomer`` entry point in tests: exit code and output, no subprocess."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import typer

import fedcustomer.cli as cli


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI's ``main()`` (its error handling included); returns (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def only_group(monkeypatch: pytest.MonkeyPatch, register: Callable[[typer.Typer], None]) -> None:
    """Make ``main()`` serve an app holding just one command group, with wide tables."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "_register", lambda: register(app))
    monkeypatch.setenv("COLUMNS", "250")
