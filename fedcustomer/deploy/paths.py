"""Where deployment state lives by default: outside any source checkout.

Certificates (with the development CA's private key), the coordinator's SuperLink database and
logs are secrets or operational state; writing them into the current directory put them next to
the code, one `git add .` away from being published.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``$XDG_DATA_HOME/fedcustomer``, else ``~/.local/share/fedcustomer``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "fedcustomer"


def default_certs_dir() -> Path:
    return data_home() / "certs"


def default_coordinator_dir() -> Path:
    return data_home() / "coordinator"
