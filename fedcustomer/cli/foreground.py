"""Flower's servers (or their supervisors) run in the foreground of a ``start`` command.

What a service manager or container expects: the command lasts as long as the server, Ctrl-C or
SIGTERM stop it cleanly, and any other end is an error naming what stopped.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedcustomer.errors import FederationError

# how a server stopped by Ctrl-C / SIGTERM ends: by the signal, or (a supervisor) with the shell's 128 + signal
STOPPED = (0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)


def foreground(cmd: list[str], env: dict[str, str], cwd: Path | None = None, name: str | None = None) -> None:
    """Run a Flower server (or its supervisor) in the foreground; Ctrl-C / SIGTERM stop it cleanly."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd) if cwd else None)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code not in STOPPED:
        raise FederationError(f"{name or Path(cmd[0]).name} exited with code {code}; see its log above")


def warn_insecure(err: Console) -> None:
    """What both ``start`` commands print before running a server with ``--insecure``."""
    from fedcustomer.deploy.coordinator import INSECURE_WARNING

    err.print(f"[bold yellow]{escape(INSECURE_WARNING)}[/]")
